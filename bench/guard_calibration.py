"""Is the planner's fidelity guard (``--max-logit-error``, default 1%) safe on real weights and real photos?

    PYTHONPATH=. .venv/bin/python bench/guard_calibration.py             # Lite0, every cut (~15 min on 2 cores)
    PYTHONPATH=. .venv/bin/python bench/guard_calibration.py --quick     # three cuts, a smoke run
    PYTHONPATH=. .venv/bin/python bench/guard_calibration.py --report    # the docs section from the saved results

``splitinfer profile`` measures each codec's relative L2 logit error at every cut on the profile's
images (by default 4 generated 640x480 pictures, ``--images`` for your own) and the planner keeps a
lossy (cut, codec) only where the largest of those errors is within the guard. This script measures,
for EfficientNet-Lite0 with its real ImageNet weights, every single-tensor cut and every profiled codec,
both that error on the default profile images and the top-1 agreement with the unsplit model on 117
real photos and crops (``bench/photos.py``, as ``bench/compression.py`` uses: one flip in 117 is
99.1%), one image per payload. It reports which routes the guard
admits from each set of images and how many of them keep top-1 on >= 99% of the photos, and what it admits
when the errors on the generated images count ``GENERATED_ERROR_FACTOR`` times, as the planner counts them. Writes
bench/results/guard_calibration.json and the "Fidelity guard" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from bench.doc_section import write_section
from bench.photos import real_photos
from bench.pretrained import load_pretrained_lite
from shared.models import LoadedModel
from shared.planning import GENERATED_ERROR_FACTOR, PROFILE_CODECS
from shared.preprocessing import decode_image
from shared.protocol import encode_activations, expected_for_cut
from shared.splitting import Cut
from shared.wire import WireLimits, decode_payload
from splitinfer.bench import bench_images

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results" / "guard_calibration.json"
GUARD = 0.01
AGREEMENT_TARGET = 0.99
LOSSY = tuple(codec for codec in PROFILE_CODECS if codec not in ("fp32", "fp16"))
_CHUNK = 16


def _relative_errors(logits: torch.Tensor, references: torch.Tensor) -> list[float]:
    return ((logits - references).norm(dim=1) / references.norm(dim=1).clamp_min(1e-12)).tolist()


def _tail_logits(tail: Any, tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([tail(torch.cat(tensors[i : i + _CHUNK])).float() for i in range(0, len(tensors), _CHUNK)])


def measure_cut(
    loaded: LoadedModel, cut: Cut, batches: dict[str, torch.Tensor], references: dict[str, torch.Tensor]
) -> list[dict[str, Any]]:
    """Every lossy profiled codec at ``cut``: its largest logit error on each image set, and top-1
    agreement on the photos."""
    head, tail = loaded.graph().split(cut)
    common = {"model": loaded.name, "weights": loaded.digest}
    expected, limits = expected_for_cut(cut), WireLimits.for_batch(1, mib_per_item=64)
    with torch.inference_mode():
        shipped = {name: [head(batch[i : i + 1])[0] for i in range(len(batch))] for name, batch in batches.items()}
        rows = []
        for codec in LOSSY:
            row: dict[str, Any] = {"cut": cut.name, "head_flops_share": cut.head_flops_share, "codec": codec}
            for name, tensors in shipped.items():
                decoded = []
                for tensor in tensors:
                    data = encode_activations([tensor], cut, codec=codec, **common)
                    payload = decode_payload(data, kind="activations", expected=expected, limits=limits, **common)
                    decoded.append(payload.tensors[0])
                logits = _tail_logits(tail, decoded)
                row[f"{name}_max_error"] = max(_relative_errors(logits, references[name]))
                if name == "photos":
                    agree = (logits.argmax(dim=1) == references[name].argmax(dim=1)).float().mean()
                    row["photos_top1_agreement"] = float(agree)
            rows.append(row)
    return rows


_ADMITTING = {
    "profile": ("profile", 1.0),
    "profile_counted": ("profile", GENERATED_ERROR_FACTOR),
    "photos": ("photos", 1.0),
}
"""Each way the guard is applied: whose errors, counted how many times."""


def summarize(rows: list[dict[str, Any]], guard: float = GUARD) -> dict[str, Any]:
    """What the guard admits from each image set, and how many of those keep top-1 on the photos."""
    summary: dict[str, Any] = {"guard": guard, "routes": len(rows), "generated_error_factor": GENERATED_ERROR_FACTOR}
    for name, (images, factor) in _ADMITTING.items():
        admitted = [r for r in rows if r[f"{images}_max_error"] * factor <= guard]
        failing = [r for r in admitted if r["photos_top1_agreement"] < AGREEMENT_TARGET]
        summary[name] = {
            "admitted": len(admitted),
            "admitted_below_target": [
                {k: r[k] for k in ("cut", "codec", "profile_max_error", "photos_max_error", "photos_top1_agreement")}
                for r in failing
            ],
            "lowest_agreement_admitted": min((r["photos_top1_agreement"] for r in admitted), default=None),
        }
    below = [r["photos_max_error"] for r in rows if r["photos_top1_agreement"] < AGREEMENT_TARGET]
    summary["smallest_photo_error_below_target"] = min(below, default=None)
    ratios = sorted(r["photos_max_error"] / r["profile_max_error"] for r in rows if r["profile_max_error"] > 0)
    summary["photo_to_profile_error_ratio"] = {
        "p10": ratios[len(ratios) // 10],
        "median": ratios[len(ratios) // 2],
        "p90": ratios[len(ratios) * 9 // 10],
    }
    return summary


def report(results: dict[str, Any]) -> str:
    s = results["summary"]
    profile, photos, ratio = s["profile"], s["photos"], s["photo_to_profile_error_ratio"]
    codecs = ", ".join(f"`{c}`" for c in LOSSY)
    lines = [
        f"Command: `PYTHONPATH=. .venv/bin/python bench/guard_calibration.py`. {results['date']}, "
        f"{results['seconds']} s. Raw numbers: `bench/results/guard_calibration.json`.",
        "",
        f"{results['model']} (real ImageNet weights), {s['routes']} routes: {results['cuts']} single-tensor cuts x "
        f"{len(LOSSY)} lossy profiled codecs ({codecs}). Largest relative L2 logit error on the profile's default "
        f"images ({results['profile_images']} generated 640x480 JPEGs) and on {results['photos']} real photos and "
        "crops; top-1 agreement with the unsplit model on the photos, one image per payload.",
        "",
        f"| guard {s['guard']:.0%} measured on | routes admitted | of them top-1 < 99% on the photos "
        "| lowest top-1 admitted |",
        "|---|---:|---:|---:|",
    ]
    factor = s["generated_error_factor"]
    labels = (
        ("the profile's default images", profile),
        (f"the profile's default images, counted {factor:g}x (as the planner counts them)", s["profile_counted"]),
        ("the real photos", photos),
    )
    for label, admitted in labels:
        lowest = admitted["lowest_agreement_admitted"]
        lines.append(
            f"| {label} | {admitted['admitted']} | {len(admitted['admitted_below_target'])} | "
            f"{'-' if lowest is None else f'{lowest:.1%}'} |"
        )
    smallest = s["smallest_photo_error_below_target"]
    smallest_text = "none" if smallest is None else f"{smallest:.4f}"
    lines += [
        "",
        f"Smallest error on the photos of a route below 99% top-1: {smallest_text}. "
        f"Error on the photos / error on the profile images, per route: 10th percentile {ratio['p10']:.2f}, "
        f"median {ratio['median']:.2f}, 90th percentile {ratio['p90']:.2f}.",
    ]
    failing = profile["admitted_below_target"]
    if failing:
        lines += ["", "Admitted from the profile's images but below 99% top-1 on the photos:", ""]
        lines += [
            f"| cut | codec | error, profile images | error, photos | top-1 on photos | admitted counted {factor:g}x |",
            "|---|---|---:|---:|---:|---|",
        ]
        lines += [
            f"| `{r['cut']}` | `{r['codec']}` | {r['profile_max_error']:.4f} | {r['photos_max_error']:.4f} | "
            f"{r['photos_top1_agreement']:.1%} | {'yes' if r['profile_max_error'] * factor <= s['guard'] else 'no'} |"
            for r in failing
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three cuts, no docs")
    parser.add_argument("--report", action="store_true", help="rewrite the docs section from the saved results")
    args = parser.parse_args()
    if args.report:
        saved = json.loads(RESULTS.read_text())
        saved["summary"] = summarize(saved["rows"])
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
        write_section("guard-calibration", "guard_calibration.py", report(saved))
        return
    started = time.monotonic()
    loaded = load_pretrained_lite("efficientnet-lite0")
    prep = loaded.preprocessor
    batches = {
        "profile": prep.batch([decode_image(blob) for blob in bench_images(None, 4)]),
        "photos": prep.batch([image for _, image in real_photos(crops_per_photo=8)]),
    }
    with torch.inference_mode():
        references = {name: _tail_logits(loaded.module, list(batch.split(1))) for name, batch in batches.items()}
    cuts = [c for c in loaded.graph().single_tensor_cuts() if c.name not in ("input", "output")]
    if args.quick:
        cuts = cuts[:: max(1, len(cuts) // 3)][:3]
    rows = []
    for index, cut in enumerate(cuts):
        print(f"[{index + 1}/{len(cuts)}] {cut.name}", flush=True)
        rows += measure_cut(loaded, cut, batches, references)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "seconds": round(time.monotonic() - started),
        "model": loaded.name,
        "cuts": len(cuts),
        "profile_images": len(batches["profile"]),
        "photos": len(batches["photos"]),
        "rows": rows,
        "summary": summarize(rows),
    }
    text = report(results)
    print(text)
    if not args.quick:
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        write_section("guard-calibration", "guard_calibration.py", text)


if __name__ == "__main__":
    main()
