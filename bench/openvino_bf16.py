"""How far engine openvino's bf16 precision moves a real model's answers, and what it saves, at 1 thread.

    PYTHONPATH=. .venv/bin/python bench/openvino_bf16.py [--out bench/results/openvino_bf16.json]

EfficientNet-Lite0 with its real ImageNet weights (the ``lite0`` extra), the whole graph exported to ONNX
(an edge and a cloud both at bf16 run the whole graph in bf16, whatever the cut: the worst case for the
answers, and one number for every cut); 117 real photos and crops (bench/photos.py: 13 scikit-image
photos, 8 seeded crops each). OpenVINO at f32 and at bf16 is compared with the torch float32 model: top-1
agreement, whether torch's top-1 is in the top 5, and the largest absolute and relative-L2 logit error.
Times are medians of one image, one thread per engine. Needs a CPU with bfloat16 instructions for the bf16
row (refused elsewhere).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.doc_section import write_section
from bench.photos import real_photos
from shared.engines import OrtHalf, OrtOptions
from shared.models import load_model
from shared.onnx_export import export_half
from shared.ov_engine import OvHalf, OvOptions, cpu_capabilities

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 2)


def agreement(name: str, logits: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Top-1 / top-5 agreement and logit errors of ``logits`` against the torch float32 ``reference``."""
    top1, want = logits.argmax(1), reference.argmax(1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    relative = np.linalg.norm(logits - reference, axis=1) / np.linalg.norm(reference, axis=1)
    return {
        "engine": name,
        "images": int(logits.shape[0]),
        "top1_agreement": int((top1 == want).sum()),
        "torch_top1_in_top5": int((top5 == want[:, None]).any(1).sum()),
        "max_abs_logit_error": float(np.abs(logits - reference).max()),
        "max_relative_l2_error": float(relative.max()),
        "median_relative_l2_error": float(np.median(relative)),
    }


def markdown(report: dict[str, Any]) -> str:
    """The table of docs/benchmarks.md for one run."""
    m = report["machine"]
    lines = [
        f"`{report['command']}`, {report['when']}, {m['cpu']} ({m['cores']} cores, load average "
        f"{', '.join(str(v) for v in m['load_average'])}), OpenVINO {m['openvino']}. {report['model']} (real "
        f"ImageNet weights), {report['graph']}, {report['photos']} real photos and crops; raw numbers: "
        "`bench/results/openvino_bf16.json`.",
        "",
        "| engine | top-1 = torch fp32 | torch's top-1 in top-5 | max abs logit error | relative L2 error, "
        "median / max | ms per image, 1 thread |",
        "|---|---|---|---|---|---|",
    ]
    timings = report["whole_model_one_image_one_thread_ms"]
    lines.append(f"| torch fp32 (reference) | - | - | - | - | {timings['torch']:.1f} |")
    for row in report["agreement_with_torch_fp32"]:
        n = row["images"]
        lines.append(
            f"| {row['engine']} | {row['top1_agreement']}/{n} | {row['torch_top1_in_top5']}/{n} "
            f"| {row['max_abs_logit_error']:.2g} | {row['median_relative_l2_error']:.2g} / "
            f"{row['max_relative_l2_error']:.2g} | {timings[row['engine']]:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timing repeats per engine")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "openvino_bf16.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model("efficientnet_lite0", "DEFAULT")
    photos = real_photos(crops_per_photo=8)
    batches = [loaded.preprocessor.batch([image.convert("RGB")]) for _, image in photos]
    with torch.inference_mode():
        reference = np.concatenate([loaded.module(b).numpy() for b in batches])
    inputs = [b.numpy() for b in batches]
    graph_bytes = export_half(loaded.module, [torch.cat(batches[:2])], ["input"], ["logits"])
    precisions = ("f32", "bf16") if "BF16" in cpu_capabilities() else ("f32",)
    engines: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {"onnxruntime": OrtHalf(graph_bytes, OrtOptions())}
    for precision in precisions:
        engines[f"openvino {precision}"] = OvHalf(graph_bytes, OvOptions(precision=precision))  # type: ignore[arg-type]
    rows = [agreement(name, np.concatenate([run(x)[0] for x in inputs]), reference) for name, run in engines.items()]
    with torch.inference_mode():
        timings = {"torch": _median_ms(lambda: loaded.module(batches[0]), args.repeats)}
    for name, run in engines.items():
        timings[name] = _median_ms(lambda run=run: run(inputs[0]), args.repeats)  # type: ignore[misc]
    import openvino

    report = {
        "command": "PYTHONPATH=. python bench/openvino_bf16.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "openvino": openvino.__version__,
            "capabilities": list(cpu_capabilities()),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "model": loaded.name,
        "weights": loaded.digest,
        "graph": "whole model (a bf16 head and a bf16 tail)",
        "photos": len(photos),
        "agreement_with_torch_fp32": rows,
        "whole_model_one_image_one_thread_ms": timings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    write_section("openvino-bf16", "openvino_bf16.py", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
