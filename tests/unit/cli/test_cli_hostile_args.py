"""Counts, times and paths that cannot work are one line on stderr and exit status 2, before any work."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service_core.batch_limit import MAX_BATCH_SIZE_LIMIT
from splitinfer.cli import main
from splitinfer.failures import explain


def _failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("splitinfer: error: ")
    return lines[0]


# Before: `--requests -5`, `--duration -1` and `--concurrency 0` measured nothing and exited 0 with a table of
# nan; `--count 0` and `--per-request 0` were tracebacks (ZeroDivisionError, an empty torch.stack);
# `--per-request 100000` preprocessed 800,000 images client-side.
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--requests", "-5"], "--requests"),
        (["--requests", "0"], "--requests"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "nan"], "--duration"),
        (["--duration", "inf"], "--duration"),
        (["--warmup", "-1"], "--warmup"),
        (["--concurrency", "0"], "--concurrency"),
        (["--target", "local", "--count", "0", "--requests", "2"], "--count"),
        (["--target", "cloud", "--per-request", "0", "--requests", "2"], "--per-request"),
        (["--target", "cloud", "--per-request", "100000", "--requests", "2"], "--per-request"),
    ],
)
def test_bench_refuses_counts_that_cannot_work(capsys: pytest.CaptureFixture[str], args: list[str], named: str) -> None:
    line = _failure(capsys, ["bench", "--url", "http://127.0.0.1:1", *args])
    assert named in line


class _SmallBatchCloud(BaseHTTPRequestHandler):
    """A cloud whose MAX_BATCH_SIZE is 4 (its /v1/info); every payload it is sent is counted, and refused."""

    posts = 0

    def do_GET(self) -> None:
        body = json.dumps({"service": "cloud", "batching": {"max_batch_size": 4}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        type(self).posts += 1
        self.send_response(413)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_bench_refuses_more_images_per_payload_than_the_cloud_takes(capsys: pytest.CaptureFixture[str]) -> None:
    """The cloud takes at most its MAX_BATCH_SIZE images in one payload; the CLI's own bound was a 1024 of its
    own, so `--per-request 8` against a cloud of MAX_BATCH_SIZE 4 built its payloads and sent them, each
    refused (413: exit status 1, a table of errors). Now one line naming the cloud's limit, before any is built."""
    handler = type("Cloud", (_SmallBatchCloud,), {"posts": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        tiny = ["--model", "tests.fixture_models:tiny_cnn", "--weights", "none", "--cut", "block", "--codec", "fp32"]
        argv = ["bench", "--target", "cloud", "--url", url, *tiny, "--requests", "1", "--warmup", "0"]
        line = _failure(capsys, [*argv, "--per-request", "8"])
        assert "MAX_BATCH_SIZE is 4" in line and "--per-request 8" in line, line
        assert handler.posts == 0
        assert main([*argv, "--per-request", "4", "--count", "4"]) == 1  # NOTE: sent (and refused by this fake)
        assert handler.posts == 1
    finally:
        server.shutdown()
        server.server_close()


def test_bench_per_request_bound_is_the_services_max_batch_size_bound(capsys: pytest.CaptureFixture[str]) -> None:
    """One constant bounds MAX_BATCH_SIZE and --per-request (they were two 1024s, in two files)."""
    from service_core.settings import ServiceSettings

    assert ServiceSettings.model_fields["max_batch_size"].metadata[-1].le == MAX_BATCH_SIZE_LIMIT
    line = _failure(capsys, ["bench", "--url", "http://127.0.0.1:1", "--target", "cloud", "--per-request",
                             str(MAX_BATCH_SIZE_LIMIT + 1)])  # fmt: skip
    assert f"between 1 and {MAX_BATCH_SIZE_LIMIT}" in line and "MAX_BATCH_SIZE" in line


def test_bench_names_an_images_folder_that_holds_none(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "holds no" in _failure(capsys, ["bench", "--url", "http://127.0.0.1:1", "--images", str(tmp_path)])
    missing = tmp_path / "missing"
    assert "does not exist" in _failure(capsys, ["bench", "--url", "http://127.0.0.1:1", "--images", str(missing)])


def test_export_into_a_file_is_refused_before_the_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Before: the export ran, then mkdir raised FileExistsError with a traceback.
    out = tmp_path / "a-file"
    out.write_text("x")
    line = _failure(capsys, ["export", "resnet18", "--weights", "none", "--cut", "layer1", "--out", str(out)])
    assert "is a file" in line


def test_a_folder_to_make_where_a_file_is_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError) as caught:
        (tmp_path / "f").mkdir(parents=True, exist_ok=True)
    assert explain(caught.value) == f"{tmp_path / 'f'} exists and is not a folder"


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shared.models import load_model
    from shared.planning import CodecProfile, CutProfile, Profile

    loaded = load_model("tests.fixture_models:tiny_cnn", "none")
    codecs = (CodecProfile("fp32", 4000, 0.1, 0.1, 0.0), CodecProfile("int2+ans", 300, 0.1, 0.1, 0.5))
    cuts = [CutProfile("relu", 2, 1.0, 1.0, codecs), CutProfile("output", 7, 3.0, 0.0, ())]
    path = tmp_path_factory.mktemp("plan") / "p.json"
    Profile(loaded.name, loaded.digest, "cpu", 1, 64, {}, cuts).save(path)
    return path


def _plan(profile: Path, *args: str) -> list[str]:
    profiles = ["--edge-profile", str(profile), "--cloud-profile", str(profile)]
    return ["plan", *profiles, "--bandwidth", "5mbit", "--rtt", "1ms", *args]


@pytest.mark.parametrize(("args", "named"), [(["--max-logit-error", "nan"], "--max-logit-error"),
                                             (["--max-logit-error", "-1"], "--max-logit-error"),
                                             (["--top", "0"], "--top"), (["--top", "-1"], "--top")])  # fmt: skip
def test_plan_refuses_a_bound_or_count_that_cannot_work(
    capsys: pytest.CaptureFixture[str], profile: Path, args: list[str], named: str
) -> None:
    # Before: NaN admitted every lossy codec (a codec with a 50% error was planned), -1 none, not even fp32;
    # --top -1 printed every row but the last.
    assert named in _failure(capsys, _plan(profile, *args))


def test_plan_says_which_file_its_plot_went_to(
    capsys: pytest.CaptureFixture[str], profile: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    assert main(_plan(profile, "--plot", str(tmp_path / "latency"))) == 0
    assert f"wrote {tmp_path / 'latency.png'}" in capsys.readouterr().out  # before: `wrote .../latency`
    assert (tmp_path / "latency.png").is_file()
