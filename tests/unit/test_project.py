"""Project-wide promises: exported names, no unpickling of received bytes, a valid compose file."""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["shared", "service_core", "edge_service", "cloud_service", "splitinfer", "edge_lite"]


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        found = pkgutil.walk_packages(module.__path__, prefix=f"{package}.")  # NOTE: subpackages' modules too
        names += [m.name for m in found if not m.name.endswith(".__main__")]
    return names


OPTIONAL = {"cloud_service.serve": "ray.serve"}
"""Modules that need an optional extra, and the module that extra provides."""


@pytest.mark.parametrize("name", _modules())
def test_every_module_declares_its_public_names(name: str) -> None:
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name], reason=f"{name} needs an optional extra")
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol!r}"


def test_shared_never_imports_the_services() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "shared").rglob("*.py")
        if re.search(
            r"^\s*(from|import)\s+(edge_service|cloud_service|service_core|splitinfer)\b", path.read_text(), re.M
        )
    ]
    assert offenders == []


def test_the_library_imports_no_web_framework() -> None:
    """``shared`` is the library: importing all of it pulls in neither FastAPI nor starlette."""
    modules = " ".join(f"shared.{m.name}" for m in pkgutil.iter_modules(importlib.import_module("shared").__path__))
    code = f"import importlib, sys\nfor m in {modules.split()!r}: importlib.import_module(m)\n"
    code += "print(sorted(n for n in sys.modules if n.split('.')[0] in ('fastapi', 'starlette', 'uvicorn')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_import_cycles_between_modules() -> None:
    """No module imports (directly or through others) one that imports it back, TYPE_CHECKING blocks included."""
    graph: dict[str, set[str]] = {}
    IMPORTED = r"^\s*(?:from|import)\s+((?:" + "|".join(PACKAGES) + r")(?:\.\w+)*)"
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found = re.findall(IMPORTED, path.read_text(), re.M)
            graph[module] = {name for name in found if name != module and name not in PACKAGES}
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*trail, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert cycles == []


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
    # Liveness on /healthz: a cloud outage makes the edge unready, not unhealthy (no restart of a good edge).
    assert result.stdout.count("/healthz") == 2
    assert "/readyz" not in result.stdout


@pytest.mark.parametrize(
    "command", ["cuts", "codecs", "cloud", "edge", "up", "demo", "bench", "profile", "plan", "export"]
)
def test_every_command_prints_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from splitinfer.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser(command).parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: splitinfer" in capsys.readouterr().out


_NEVER_IMPORTS = {
    "FastAPI/starlette": ("fastapi", "starlette"),
    "the services": ("edge_service", "cloud_service"),
    "the CLI": ("splitinfer",),
}


def _architecture_import_rules() -> list[tuple[str, tuple[str, ...]]]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    rules = []
    for package, never in re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]*) \|$", text, re.M):
        forbidden: tuple[str, ...] = ()
        for phrase in (p.strip() for p in never.split(",") if p.strip()):
            forbidden += _NEVER_IMPORTS.get(phrase) or (phrase.strip("`"),)
        if forbidden:
            rules.append((package, forbidden))
    return rules


@pytest.mark.parametrize(("package", "forbidden"), _architecture_import_rules())
def test_a_package_never_imports_what_the_architecture_says(package: str, forbidden: tuple[str, ...]) -> None:
    pattern = re.compile(rf"^\s*(from|import)\s+({'|'.join(forbidden)})\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_the_architecture_table_is_read() -> None:
    assert dict(_architecture_import_rules()).keys() == {"shared", "service_core", "edge_service", "cloud_service"}
