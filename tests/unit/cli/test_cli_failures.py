"""Every expected failure of the CLI is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from splitinfer.cli import main
from splitinfer.processes import free_port
from splitinfer.samples import encode_image, synthetic_image

ROOT = Path(__file__).resolve().parents[3]


def _failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI in-process; assert exit 2 and one traceback-free line on stderr; return that line."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("splitinfer: error: ")
    return lines[0]


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, *args], capture_output="stdout" not in kwargs, text=True, env=env, timeout=120, **kwargs
    )


@pytest.fixture
def jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode_image(synthetic_image(seed=1)))
    return path


class _FakeEdge(BaseHTTPRequestHandler):
    """Answers every classify with the same large body (enough to fill a pipe)."""

    body = json.dumps([{"index": i, "label": f"class {i}", "probability": 0.001} for i in range(5000)]).encode()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_edge() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEdge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_classify_without_an_edge_says_how_to_start_one(capsys: pytest.CaptureFixture[str], jpeg: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = _failure(capsys, ["classify", str(jpeg), "--edge-url", url])
    assert f"cannot connect to an edge at {url}" in line
    assert "splitinfer up" in line


def test_classify_a_missing_file_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = _failure(capsys, ["classify", str(tmp_path / "nope.jpg")])
    assert f"no such image file: {tmp_path / 'nope.jpg'}" in line


def test_classify_json_into_a_closed_pipe_is_one_line(fake_edge: str, jpeg: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already gone: every write fails with EPIPE
    try:
        result = _run(
            ["-m", "splitinfer", "classify", str(jpeg), "--json", "--edge-url", fake_edge],
            stdout=write_end,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "splitinfer: error: standard output was closed before everything was written (piped into head?); "
        "the rest was dropped"
    ]


def test_edge_with_an_unknown_model_suggests_names(capsys: pytest.CaptureFixture[str]) -> None:
    line = _failure(capsys, ["edge", "--model", "resnet19", "--weights", "none"])
    assert "unknown model 'resnet19': did you mean resnet18" in line


def test_edge_with_an_unknown_cut_fails_to_start_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["edge", "--cut", "layer9", "--weights", "none", "--port", str(free_port()), "--drain-s", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(
        "splitinfer: error: the service did not start: ValueError: unknown cut 'layer9' for ResNet. "
        "Did you mean 'layer4'"
    )


def test_cloud_with_an_unknown_model_suggests_names(capsys: pytest.CaptureFixture[str]) -> None:
    line = _failure(capsys, ["cloud", "--model", "mobilenet_v3_larg", "--weights", "none"])
    assert "did you mean mobilenet_v3_large" in line


@pytest.mark.parametrize("argv", [["edge", "--weights", "none"], ["profile", "-o", "unused.json"]])
def test_cuda_without_a_gpu_says_use_cpu(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _failure(capsys, [*argv, "--device", "cuda"])
    assert "device 'cuda' asked for, but torch sees no CUDA GPU here; use --device cpu" in line


def test_cut_auto_without_profiles_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    line = _failure(capsys, ["edge", "--cut", "auto", "--weights", "none"])
    assert "invalid settings: cut 'auto' needs EDGE_PROFILE" in line
    assert "(not given)" in line
    assert "pydantic" not in line
    assert "type=value_error" not in line


def test_plan_with_a_missing_profile_says_how_to_write_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "edge.json")
    argv = ["plan", "--edge-profile", missing, "--cloud-profile", missing, "--bandwidth", "20mbit", "--rtt", "30ms"]
    line = _failure(capsys, argv)
    assert f"edge profile {missing!r} does not exist: write one with `splitinfer profile -o {missing}`" in line


def test_plan_with_a_directory_for_a_profile_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = str(tmp_path)
    argv = ["plan", "--edge-profile", folder, "--cloud-profile", folder, "--bandwidth", "20mbit", "--rtt", "30ms"]
    line = _failure(capsys, argv)
    assert f"edge profile {folder!r} is a directory, not a file" in line


def test_plan_with_a_corrupt_profile_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "edge.json"
    bad.write_text("{not json")
    argv = ["plan", "--edge-profile", str(bad), "--cloud-profile", str(bad), "--bandwidth", "20mbit", "--rtt", "30ms"]
    assert f"edge profile {str(bad)!r} is not a `splitinfer profile` output" in _failure(capsys, argv)


def test_plan_refuses_a_unitless_bandwidth(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["plan", "--edge-profile", "e.json", "--cloud-profile", "c.json", "--bandwidth", "20", "--rtt", "30ms"]
    line = _failure(capsys, argv)
    assert "cannot read bandwidth '20': a number and a unit are needed" in line


def test_codecs_with_a_missing_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = _failure(capsys, ["codecs", "resnet18", "--cut", "layer3", "--images", str(tmp_path / "none")])
    assert "does not exist: pass a folder of JPEG, PNG or WebP images" in line


def test_codecs_with_a_file_instead_of_a_folder(capsys: pytest.CaptureFixture[str], jpeg: Path) -> None:
    line = _failure(capsys, ["codecs", "resnet18", "--cut", "layer3", "--images", str(jpeg)])
    assert "is a file, not a folder" in line


def test_codecs_with_a_bad_image_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(encode_image(synthetic_image(seed=2)))
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg at all")
    line = _failure(capsys, ["codecs", "resnet18", "--cut", "layer3", "--images", str(tmp_path)])
    assert f"{tmp_path / 'b.jpg'}: not an image" in line


def test_an_unknown_cut_suggests_names(capsys: pytest.CaptureFixture[str]) -> None:
    line = _failure(capsys, ["codecs", "resnet18", "--weights", "none", "--cut", "layer5", "--count", "1"])
    assert "unknown cut 'layer5'" in line
    assert "Did you mean" in line


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no such image file"):
        main(["classify", str(tmp_path / "nope.jpg"), "--debug"])


def test_every_command_takes_debug_and_width_after_its_name() -> None:
    from splitinfer.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        flags = {flag for action in command._actions for flag in action.option_strings}
        assert {"--debug", "--width"} <= flags, name


def test_a_second_up_on_busy_ports_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _failure(capsys, ["up", "--weights", "none", "--edge-port", str(port), "--cloud-port", str(free_port())])
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "--edge-port" in line


def test_help_does_not_import_torch() -> None:
    probe = (
        "import sys\n"
        "from splitinfer.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'torchvision', 'fastapi', 'rich', 'httpx', 'pydantic')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = _run(["-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="


def _not_a_checkpoint(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        path.write_text("these are not weights\nbut a text file\n")
    else:  # a pickle torch.load refuses with weights_only=True: its error message spans a dozen lines
        torch.save(argparse.Namespace(weights=1), path)
    return path


@pytest.mark.parametrize("service", ["edge", "cloud"])
@pytest.mark.parametrize("kind", ["random", "text", "pickle"])
def test_a_weights_file_that_is_not_a_checkpoint_fails_to_start_in_one_line(
    service: str, kind: str, tmp_path: Path
) -> None:
    weights = _not_a_checkpoint(tmp_path, kind)
    args = ["-m", "splitinfer", service, "--weights", str(weights), "--port", str(free_port()), "--drain-s", "0"]
    result = _run(args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "\tWeightsUnpickler" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(
        f"splitinfer: error: the service did not start: ValueError: cannot load weights file '{weights}': "
        "it is not a state_dict that torch.load reads with weights_only=True ("
    ), result.stderr
    assert last.endswith(") (--debug shows the traceback)")
    assert "\x1b" not in last
    if kind == "pickle":
        assert "(UnpicklingError: Weights only load failed." in last


def test_a_startup_failure_with_debug_keeps_its_traceback(tmp_path: Path) -> None:
    weights = _not_a_checkpoint(tmp_path, "pickle")
    args = ["-m", "splitinfer", "cloud", "--weights", str(weights), "--port", str(free_port()), "--debug"]
    result = _run(args)
    assert result.returncode != 0 and result.returncode != 2
    assert "Traceback" in result.stderr and "WeightsUnpickler error" in result.stderr


def test_a_certificate_that_cannot_be_loaded_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A TLS file that exists but is not a PEM certificate and key (or a key of another certificate) is a
    mistake in the settings, refused before the service starts, not the ssl module's traceback."""
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    tiny = ["--model", "tests.fixture_models:tiny_cnn", "--weights", "none", "--port", "0"]
    line = _failure(capsys, ["cloud", *tiny, "--ssl-certfile", str(bad), "--ssl-keyfile", str(bad)])
    assert "invalid settings" in line and f"cannot load the TLS certificate {str(bad)!r}" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["cuts", "resnet19"],
        ["codecs", "resnet19", "--weights", "none"],
        ["profile", "--model", "resnet19", "--weights", "none", "-o", "/nonexistent/p.json"],
        ["export", "resnet19", "--cut", "layer3", "--out", "/nonexistent/export"],
        ["bench", "--target", "local", "--model", "resnet19", "--requests", "1"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_unknown_model_gets_suggestions_in_every_command(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    # Before: only cloud, edge, up and demo suggested names; `cuts resnet19` (the README: "unknown models and
    # cuts get 'did you mean' suggestions") said only that the name was unknown.
    assert "did you mean resnet18" in _failure(capsys, argv)
