"""The demo page in a real headless browser (Debian's chromium through Playwright), against a real
edge and cloud on loopback: it loads offline, a dropped photo is classified, another cut re-classifies
with that cut's bytes, the console stays clean, and /docs renders from the package.

Set SPLITINFER_DEMO_SCREENSHOT=docs/demo.png to (re)write the screenshot committed in docs/ (with
SPLITINFER_DEMO_PROFILE=a resnet18 `--weights none` profile, instead of the made-up one, for its chart).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.models import load_model
from shared.planning import CodecProfile, CutProfile, Profile
from shared.splitting import ModelGraph
from splitinfer.processes import Service, start_service, wait_until
from splitinfer.samples import encode_image, synthetic_image

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _photo() -> bytes:
    """A real photo (scikit-image's cat) when scikit-image is installed, else a generated image."""
    try:
        from PIL import Image
        from skimage import data
    except ImportError:
        return encode_image(synthetic_image(seed=5))
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _profile(path: Path) -> Path:
    """A made-up but consistent profile of resnet18 (weights none) on every single-tensor cut."""
    loaded = load_model("resnet18", "none")
    graph = ModelGraph(loaded.module, loaded.input_shape)
    cuts = []
    for cut in graph.single_tensor_cuts():
        if cut.name == "output":
            codecs: tuple[CodecProfile, ...] = ()
        elif cut.name == "input":
            codecs = (CodecProfile("image", 60_000, 0.0, 2.0, 0.0),)
        else:
            codecs = (CodecProfile("fp16", cut.bytes_fp32 / 2, 0.2, 0.2, 1e-4),)
        share = cut.head_flops_share
        cuts.append(CutProfile(cut.name, cut.index, 40 * share, 4 * (1 - share), codecs))
    Profile("resnet18", loaded.digest, "cpu", 1, 224, {}, cuts, 2.0, 3.0, 4000).save(path)
    return path


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    logs = tmp_path_factory.mktemp("demo")
    given = os.environ.get("SPLITINFER_DEMO_PROFILE")  # a real `splitinfer profile` output, for the screenshot
    profile = Path(given) if given else _profile(logs / "profile.json")
    common = ["--model", "resnet18", "--weights", "none"]
    cloud = start_service("cloud", common, logs)
    services = [cloud]
    try:
        wait_until(cloud, timeout_s=180)
        profiles = ["--edge-profile", str(profile), "--cloud-profile", str(profile)]
        edge = start_service("edge", [*common, "--cut", "layer3", "--cloud-url", cloud.url, *profiles], logs)
        services.append(edge)
        wait_until(edge, timeout_s=180)
        yield edge
    finally:
        for service in reversed(services):
            service.stop()


def test_the_demo_page_classifies_a_dropped_photo_and_follows_the_cut(edge: Service) -> None:
    from playwright.sync_api import sync_playwright

    photo = _photo()
    outside: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Any) -> None:
        if route.request.url.startswith(edge.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.route("**/*", only_loopback)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(edge.url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            assert page.is_visible("#random-banner")

            page.evaluate(
                """(b64) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([bytes], "chelsea.jpg", { type: "image/jpeg" }));
                    const drop = document.getElementById("drop");
                    const options = { dataTransfer: transfer, bubbles: true, cancelable: true };
                    drop.dispatchEvent(new DragEvent("drop", options));
                }""",
                base64.b64encode(photo).decode(),
            )
            page.wait_for_selector("#result[data-count='1'][data-state=done]", timeout=60_000)
            first = page.eval_on_selector("#result", "(r) => ({...r.dataset})")
            assert (first["cut"], first["codec"]) == ("layer3", "fp16")
            assert page.locator("#top5 li").count() == 5
            # NOTE: the bars' widths are set under the page's Content-Security-Policy (no style attributes)
            widths = page.eval_on_selector_all(
                "#top5 .bar", "(bars) => bars.map((b) => b.getBoundingClientRect().width)"
            )
            assert len(widths) == 5 and all(w >= 2 for w in widths) and widths == sorted(widths, reverse=True)
            segments = page.eval_on_selector_all(
                "#waterfall .seg", "(s) => s.map((e) => e.getBoundingClientRect().width)"
            )
            assert len(segments) >= 6 and sum(segments) > 0
            stages = page.eval_on_selector_all("#waterfall .stage", "(rows) => rows.map((r) => r.dataset.stage)")
            assert {"decode", "preprocess", "head", "encode", "network", "tail"} <= set(stages)

            page.select_option("#cut", "layer1")
            page.wait_for_selector("#result[data-count='2'][data-state=done]", timeout=60_000)
            second = page.eval_on_selector("#result", "(r) => ({...r.dataset})")
            direct = httpx.post(
                edge.url + "/v1/classify", params={"cut": "layer1"}, files={"image": ("c.jpg", photo)}, timeout=60
            ).json()
            assert second["cut"] == "layer1"
            assert int(second["bytes"]) == direct["payload_bytes"] != int(first["bytes"])
            assert second["top"] == direct["predictions"][0]["label"]

            points = page.locator("#plan-chart circle").count()
            cuts = httpx.get(edge.url + "/v1/cuts", timeout=10).json()["cuts"]
            assert points == len(cuts) > 10
            if target := os.environ.get("SPLITINFER_DEMO_SCREENSHOT"):
                page.screenshot(path=target, full_page=True)

            page.goto(edge.url + "/docs")  # Swagger UI from the package, offline too
            page.wait_for_selector(".swagger-ui .info .title", timeout=60_000)
            assert "split-inference edge" in page.inner_text(".swagger-ui .info .title")
            assert page.locator(".opblock").count() >= 6
        finally:
            browser.close()
    assert outside == []
    assert errors == []
