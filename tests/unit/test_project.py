"""Project-wide promises: exported names, no unpickling of received bytes, a valid compose file."""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["shared", "edge_service", "cloud_service", "splitinfer", "edge_lite"]


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(module.__path__) if m.name != "__main__"]
    return names


@pytest.mark.parametrize("name", _modules())
def test_every_module_declares_its_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol!r}"


def test_shared_never_imports_the_services() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "shared").rglob("*.py")
        if re.search(r"^\s*(from|import)\s+(edge_service|cloud_service|splitinfer)\b", path.read_text(), re.M)
    ]
    assert offenders == []


def test_nothing_received_is_ever_unpickled() -> None:
    """pickle and torch.load appear only where a local weights file is loaded (weights_only=True)."""
    hits = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                if re.search(r"\b(pickle|cloudpickle|dill|marshal)\b|(?<!safetensors\.)torch\.load\(", line):
                    hits.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert hits == ['shared/models.py: state = torch.load(path, map_location="cpu", weights_only=True)']


def test_no_asserts_validate_input_in_the_services() -> None:
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                if line.strip().startswith("assert "):
                    assert "noqa: S101" in line, f"{path}: {line.strip()}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_file_is_valid() -> None:
    result = subprocess.run(["docker-compose", "config"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "condition: service_healthy" in result.stdout
    assert result.stdout.count("/readyz") == 2


@pytest.mark.parametrize(
    "command", ["cuts", "codecs", "cloud", "edge", "up", "demo", "bench", "profile", "plan", "export"]
)
def test_every_command_prints_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from splitinfer.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: splitinfer" in capsys.readouterr().out
