"""Conv+BN folding and eval-mode freezing of the torch halves: resnet18 split at ``layer3``, one thread.

    PYTHONPATH=. .venv/bin/python bench/fold_bn.py [--repeats 40] [--out bench/results/fold_bn.json]

Variants of each half, against the halves the services run today (FX eager, ``torch.inference_mode``):

* ``fold``: ``torch.fx.experimental.optimization.fuse`` folds every BatchNorm into the convolution before it
  (a copy of the half; the model's parameters are untouched);
* ``freeze``: the half traced with TorchScript and ``torch.jit.freeze``d (constants folded, conv+BN
  folded, eval-mode ops);
* ``freeze+ofi``: the frozen half through ``torch.jit.optimize_for_inference`` (oneDNN layouts on CPU).

The weights are torchvision's resnet18 with seeded random weights and seeded random BatchNorm statistics
(so that folding changes the arithmetic as it would with real weights). Times are medians of one
224x224 image (head) or its activations (tail); rounds alternate the variants so drift hits each alike.
The error is the largest absolute logit difference from the unfolded halves over 8 seeded images.
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

import torch
import torchvision
from torch import nn
from torch.fx.experimental.optimization import fuse

from bench.doc_section import write_section
from shared.splitting import ModelGraph

ROOT = Path(__file__).resolve().parents[1]


def _model(generator: torch.Generator) -> nn.Module:
    torch.manual_seed(0)  # NOTE: torchvision initialises with the global RNG; this process only benchmarks
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    return model.eval()


def _frozen(half: nn.Module, example: tuple[torch.Tensor, ...], optimize: bool) -> Callable[..., Any]:
    with torch.no_grad():
        traced = torch.jit.trace(half, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        return torch.jit.optimize_for_inference(frozen) if optimize else frozen


def markdown(report: dict[str, Any]) -> str:
    """The table of docs/benchmarks.md for one run."""
    m, rows = report["machine"], report["results"]
    eager = rows["eager"]
    lines = [
        f"`{report['command']}`, {report['when']}, {m['cpu']} ({m['cores']} cores, load average "
        f"{', '.join(str(v) for v in m['load_average'])}), torch {m['torch']}, 1 thread, median of "
        f"{report['repeats']} alternating rounds. Raw numbers: `bench/results/fold_bn.json`.",
        "",
        "| torch halves | head ms | tail ms | head / eager | max abs error: head output, logits |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['head_ms']:.1f} | {row['tail_ms']:.1f} | {row['head_ms'] / eager['head_ms']:.2f}x "
            f"| {row['head_max_abs_error']:.1e}, {row['logits_max_abs_error']:.1e} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fold_bn.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(20)
    model = _model(generator)
    graph = ModelGraph(model, (1, 3, 224, 224))
    head, tail = graph.split("layer3")
    image = torch.randn(1, 3, 224, 224, generator=generator)
    with torch.inference_mode():
        shipped = tuple(head(image))
    variants: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "eager": (head, tail),
        "fold": (fuse(head), fuse(tail)),
        "freeze": (_frozen(head, (image,), False), _frozen(tail, shipped, False)),
        "freeze+ofi": (_frozen(head, (image,), True), _frozen(tail, shipped, True)),
    }
    images = torch.randn(8, 3, 224, 224, generator=generator)
    errors: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        want = tail(*head(images))
        want_head = head(images)[0]
        for name, (h, t) in variants.items():
            got_head = h(images)
            got_head = got_head[0] if isinstance(got_head, (tuple, list)) else got_head
            out = t(*(h(images) if isinstance(h(images), (tuple, list)) else (h(images),)))
            errors[name] = {
                "head_max_abs_error": float((got_head - want_head).abs().max()),
                "logits_max_abs_error": float((out - want).abs().max()),
            }
        samples: dict[str, dict[str, list[float]]] = {n: {"head": [], "tail": []} for n in variants}
        for _ in range(3):  # warm-up (TorchScript profiles its first runs)
            for h, t in variants.values():
                h(image)
                t(*shipped)
        for round_index in range(args.repeats):
            order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
            for name in order:
                h, t = variants[name]
                start = time.perf_counter()
                h(image)
                middle = time.perf_counter()
                t(*shipped)
                end = time.perf_counter()
                samples[name]["head"].append((middle - start) * 1000)
                samples[name]["tail"].append((end - middle) * 1000)
    results = {
        name: {
            "head_ms": round(statistics.median(s["head"]), 2),
            "tail_ms": round(statistics.median(s["tail"]), 2),
            **errors[name],
        }
        for name, s in samples.items()
    }
    report = {
        "command": "PYTHONPATH=. python bench/fold_bn.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "model": "resnet18 (seeded random weights and BatchNorm statistics)",
        "cut": "layer3",
        "threads": 1,
        "repeats": args.repeats,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    write_section("fold-bn", "fold_bn.py", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
