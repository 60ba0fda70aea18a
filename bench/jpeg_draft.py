"""Large JPEGs decoded at a reduced scale (``shared.images``, Pillow's ``draft``): what the model sees, what it costs.

    PYTHONPATH=. .venv/bin/python bench/jpeg_draft.py      # ~3 min on 2 cores; rewrites the docs section

EfficientNet-Lite0 with its real ImageNet weights (its own preprocessing: a 224 crop of a 256 resize) classifies
each image twice, decoded in full and decoded as the services decode it (libjpeg's scaled IDCT down to at least
``DRAFT_MARGIN`` (4) times the resize size on the short side, then the same resize, crop and normalization), and
compares the two:
top-1 agreement, top-5 overlap and the relative L2 difference of the logits. As a yardstick, the same comparison
between two encodings of the same picture that a user might just as well have sent (JPEG quality 90 and 95, both
decoded in full). Also timed (one thread, median of 3): decode + preprocess per image, and the decoded pixels.

Images, JPEG q90: the 13 packaged sample photos and 8 crops of each (``bench/photos.py``) upscaled to a 2304-pixel
short side (smooth: they lack a camera's fine detail), and 16 generated 4032x3024 scenes with fine texture
(``bench/scenes.py``).
Writes bench/results/jpeg_draft.json and the "Decoding large JPEGs" section of docs/benchmarks.md.
"""

from __future__ import annotations

import io
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.doc_section import write_section
from bench.photos import real_photos
from bench.pretrained import load_pretrained_lite
from bench.scenes import dead_leaves
from shared.images import DRAFT_MARGIN, decode_image
from shared.models import LoadedModel

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results" / "jpeg_draft.json"
SHORT_SIDE = 2304
"""The sample photos are upscaled to this short side: at least 8x the resize size, so each is decoded at half scale."""
SCENES = 16


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _upscaled(picture: Image.Image, short_side: int) -> Image.Image:
    scale = short_side / min(picture.size)
    size = (round(picture.width * scale), round(picture.height * scale))
    return picture.resize(size, Image.Resampling.LANCZOS)


def _median_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    top5 = [
        len(set(x.topk(5).indices.tolist()) & set(y.topk(5).indices.tolist())) / 5 for x, y in zip(a, b, strict=True)
    ]
    relative = ((a - b).norm(dim=1) / b.norm(dim=1)).tolist()
    return {
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "top5_overlap": statistics.fmean(top5),
        "relative_l2_median": statistics.median(relative),
        "relative_l2_max": max(relative),
    }


def measure(loaded: LoadedModel, name: str, pictures: Iterable[Image.Image]) -> dict[str, Any]:
    """Every picture in turn (one at a time: upscaled photos are up to 32 megapixels each)."""
    prep = loaded.preprocessor
    resize = prep.resize_size
    logits: dict[str, list[torch.Tensor]] = {"full": [], "scaled": [], "q95": []}
    pixels: dict[str, list[int]] = {"full": [], "scaled": []}
    times: dict[str, list[float]] = {"full": [], "scaled": []}
    size, sizes = "", []
    for index, picture in enumerate(pictures):
        size = size or f"{picture.width}x{picture.height}"
        sizes.append(picture.size)
        q90, q95 = _jpeg(picture, 90), _jpeg(picture, 95)
        decoded = {
            "full": decode_image(q90),
            "scaled": decode_image(q90, resize_size=resize),
            "q95": decode_image(q95),
        }
        with torch.inference_mode():
            for key, image in decoded.items():
                logits[key].append(loaded.module(prep.batch([image])).float())
        for key in ("full", "scaled"):
            pixels[key].append(decoded[key].width * decoded[key].height)
        if index % 4 == 0:  # NOTE: timing every fourth image keeps the run short
            times["full"].append(_median_ms(lambda blob=q90: prep(decode_image(blob))))
            times["scaled"].append(_median_ms(lambda blob=q90: prep(decode_image(blob, resize_size=resize))))
    stacked = {key: torch.cat(values) for key, values in logits.items()}
    return {
        "images": name,
        "count": len(pixels["full"]),
        "size": size if len(set(sizes)) == 1 else "various",
        "decoded_pixels_full": statistics.median(pixels["full"]),
        "decoded_pixels_scaled": statistics.median(pixels["scaled"]),
        "scaled_vs_full": _compare(stacked["scaled"], stacked["full"]),
        "q95_vs_q90": _compare(stacked["q95"], stacked["full"]),
        "full_ms": statistics.median(times["full"]),
        "scaled_ms": statistics.median(times["scaled"]),
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        f"Command: `PYTHONPATH=. .venv/bin/python bench/jpeg_draft.py`. {results['date']}, {results['seconds']} s, "
        f"torch {results['torch']}, one thread. Raw numbers: `bench/results/jpeg_draft.json`.",
        "",
        f"{results['model']} (real ImageNet weights, resize {results['resize_size']}, crop {results['crop_size']}); "
        f"a JPEG is decoded at a reduced scale down to {results['draft_margin']}x the resize size on its short side.",
        "",
        "| images (JPEG q90) | decoded pixels, full -> scaled | decode + preprocess ms, full -> scaled "
        "| scaled vs full: top-1 | top-5 | logits rel. L2 median / max "
        "| q95 vs q90 (yardstick): top-1 | rel. L2 median / max |",
        "|---|---|---|---:|---:|---|---:|---|",
    ]
    for row in results["rows"]:
        d, q = row["scaled_vs_full"], row["q95_vs_q90"]
        lines.append(
            f"| {row['count']} {row['images']} ({row['size']}) | {row['decoded_pixels_full'] / 1e6:.1f} -> "
            f"{row['decoded_pixels_scaled'] / 1e6:.2f} MP | {row['full_ms']:.0f} -> {row['scaled_ms']:.0f} | "
            f"{d['top1_agreement']:.1%} | {d['top5_overlap']:.1%} | {d['relative_l2_median']:.4f} / "
            f"{d['relative_l2_max']:.4f} | {q['top1_agreement']:.1%} | {q['relative_l2_median']:.4f} / "
            f"{q['relative_l2_max']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    started = time.monotonic()
    loaded = load_pretrained_lite("efficientnet-lite0")
    photos = [image for _, image in real_photos(crops_per_photo=8)]
    upscaled = (_upscaled(p, SHORT_SIDE) for p in photos)
    scenes = (dead_leaves(4032, 3024, seed=seed) for seed in range(SCENES))
    rows = [
        measure(loaded, f"sample photos and crops upscaled to a {SHORT_SIDE}-pixel short side", upscaled),
        measure(loaded, "generated textured scenes", scenes),
    ]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.monotonic() - started),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "model": loaded.name,
        "resize_size": loaded.preprocessor.resize_size,
        "crop_size": loaded.preprocessor.crop_size,
        "draft_margin": DRAFT_MARGIN,
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    text = report(results)
    print(text)
    write_section("jpeg-draft", "jpeg_draft.py", text)


if __name__ == "__main__":
    main()
