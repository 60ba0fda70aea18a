"""The torch-free edge's startup failures: a missing file, a permission error, a damaged ONNX file and a
wrong model are each one line saying which (exit status 2); a bug in our own code keeps its traceback."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_lite.__main__ import main
from shared.onnx_manifest import file_digest
from splitinfer.processes import free_port

ROOT = Path(__file__).resolve().parents[3]


def _copy(export_dir: Path, into: Path) -> Path:
    shutil.copytree(export_dir / "layer3", into, dirs_exist_ok=True)
    return into


def _replace_head(folder: Path, data: bytes) -> None:
    """``head.onnx`` becomes ``data``, and the manifest its digest (it passes the digest check)."""
    (folder / "head.onnx").write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["head"]["sha256"] = file_digest(folder / "head.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _start(folder: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """The error line of an edge_lite that did not start (exit status 2), with no traceback."""
    argv = ["--onnx-dir", str(folder), "--port", str(free_port()), "--drain-s", "0", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("python -m edge_lite: error: the service did not start: "), line
    return line


def test_a_missing_head_says_it_is_missing(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(export_dir, tmp_path / "export")
    (folder / "head.onnx").unlink()
    line = _start(folder, capsys)
    assert f"the ONNX export lacks '{folder / 'head.onnx'}'" in line


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_a_damaged_onnx_file_says_the_engine_cannot_load_it(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str
) -> None:
    if engine == "openvino":
        pytest.importorskip("openvino")
    folder = _copy(export_dir, tmp_path / "export")
    _replace_head(folder, (folder / "head.onnx").read_bytes()[:4096])
    line = _start(folder, capsys, "--engine", engine)
    named = "ONNX Runtime" if engine == "onnxruntime" else "OpenVINO"
    assert f"UnloadableModel: '{folder / 'head.onnx'}' is not an ONNX model {named} can load" in line


def test_another_model_says_it_is_not_the_manifests_head(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(export_dir, tmp_path / "export")
    _replace_head(folder, (folder / "tail.onnx").read_bytes())  # NOTE: a valid ONNX model, but not this head
    line = _start(folder, capsys)
    assert f"ModelMismatch: '{folder / 'head.onnx'}' is not the head its manifest describes" in line


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _without_root_file_access() -> None:
    """In the child before exec: drop root's power to read any file (its bounding set limits what the exec'd
    program gets), so a mode 000 file is unreadable to it as to anyone else."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_an_unreadable_head_says_permission_denied(export_dir: Path, tmp_path: Path) -> None:
    """A real process that may not read head.onnx (run as root, without root's override of file modes)."""
    folder = _copy(export_dir, tmp_path / "export")
    (folder / "head.onnx").chmod(0)
    command = [sys.executable, "-m", "edge_lite", "--onnx-dir", str(folder), "--port", str(free_port())]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    as_root = os.geteuid() == 0
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            preexec_fn=_without_root_file_access if as_root else None,
            timeout=120,
        )
    except subprocess.SubprocessError as exc:  # NOTE: a container without CAP_SETPCAP cannot drop it
        pytest.skip(f"cannot run without root's file access here: {exc}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith("python -m edge_lite: error: the service did not start: PermissionError:"), lines
    assert f"Permission denied: '{folder / 'head.onnx'}'" in lines[-1]
    assert "Traceback" not in done.stderr


def test_a_bug_while_loading_is_not_blamed_on_the_file(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug in how we call the engine")

    monkeypatch.setattr(onnxruntime, "InferenceSession", broken)
    folder = _copy(export_dir, tmp_path / "export")
    argv = ["--onnx-dir", str(folder), "--port", str(free_port()), "--drain-s", "0"]
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "TypeError: a bug in how we call the engine" in err
    assert "error: the service did not start" not in err
