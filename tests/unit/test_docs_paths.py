"""The docs name files that exist, and the README's layout names every module."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "ARCHITECTURE.md", "docs/hardening.md", "docs/benchmarks.md"]
TOP = ("shared", "service_core", "edge_service", "cloud_service", "edge_lite", "splitinfer", "tests", "bench", "docs")
PACKAGES = ["shared", "service_core", "edge_service", "cloud_service", "edge_lite", "splitinfer"]
_PATH = re.compile(rf"`((?:{'|'.join(TOP)}|deploy)/[\w./*-]+?)(?:::[\w*\[\]-]+)?`")


def _named_paths(doc: str) -> list[str]:
    return sorted(set(_PATH.findall((ROOT / doc).read_text())))


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_doc_names_exists(doc: str) -> None:
    missing = [p for p in _named_paths(doc) if not (list(ROOT.glob(p)) if "*" in p else (ROOT / p).exists())]
    assert not missing


def test_the_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Containers")]
    named = set(re.findall(r"\b(\w+\.py)\b", layout))
    modules = {p.name for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    assert modules - named - {"__init__.py"} == set()


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_a_doc_names_exists(doc: str) -> None:
    """``file.py::test_name`` (``*`` allowed; a bare file name is looked up under tests/) names a test."""
    missing = []
    for path, name in re.findall(r"`((?:tests/)?[\w/]*test_\w+\.py)::([\w*-]+)", (ROOT / doc).read_text()):
        files = [ROOT / path] if (ROOT / path).exists() else list((ROOT / "tests").rglob(Path(path).name))
        tests = {n for f in files for n in re.findall(r"def (test_\w+)", f.read_text())}
        if not any(fnmatch.fnmatch(test, name) for test in tests):
            missing.append(f"{path}::{name}")
    assert not missing
