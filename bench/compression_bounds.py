"""How much a training-free activation codec can save at the middle cuts: redundancy and a rate bound.

    PYTHONPATH=. .venv/bin/python bench/compression_bounds.py    # ~2 min on 2 cores

For the cuts of bench/compression.py, over the same 117 photos: the correlation of horizontally
adjacent values (what spatial prediction could remove), the coding gain of a per-cut KLT across
channels (``0.5 * log2(arithmetic / geometric mean of the channel covariance's eigenvalues)``, bits per
value), the spread of the tail's sensitivity per channel (mean squared gradient of the top-1 minus
top-2 logit margin), and the Gaussian rate-distortion bound ``log2(1 / relative error)`` bits per value,
less the KLT gain, against the 10%-of-fp32 target (3.2 bits per value). Writes
bench/results/compression_bounds.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from bench.compression import MODELS, middle_cuts
from bench.photos import real_photos
from bench.pretrained import load_pretrained_lite
from shared.splitting import ModelGraph

__all__ = ["main"]


def _bounds(activations: torch.Tensor, tail: torch.nn.Module) -> dict[str, Any]:
    channels = activations.shape[1]
    centered = activations - activations.mean(dim=(0, 2, 3), keepdim=True)
    left, right = centered[..., :-1].flatten(), centered[..., 1:].flatten()
    per_channel = centered.transpose(0, 1).reshape(channels, -1)
    covariance = per_channel @ per_channel.T / per_channel.shape[1]
    eigen = torch.linalg.eigvalsh(covariance.double()).clamp_min(1e-12)
    klt_gain = 0.5 * math.log2(float(eigen.mean() / eigen.log().mean().exp()))
    probe = activations.clone().requires_grad_(True)
    logits = tail(probe)
    top2 = logits.topk(2, dim=1).indices
    margin = (logits.gather(1, top2[:, :1]) - logits.gather(1, top2[:, 1:])).sum()
    (gradient,) = torch.autograd.grad(margin, probe)
    sensitivity = gradient.pow(2).transpose(0, 1).reshape(channels, -1).mean(dim=1)
    rate = {f"{e:.0%}": max(0.0, math.log2(1 / e) - klt_gain) for e in (0.01, 0.02, 0.03, 0.05, 0.1)}
    return {
        "neighbour_correlation": float(torch.dot(left, right) / (left.norm() * right.norm())),
        "klt_coding_gain_bits": klt_gain,
        "channel_sensitivity_max_over_min": float(sensitivity.max() / sensitivity.min()),
        "gaussian_bound_bits_per_value_after_klt": rate,
        "ten_percent_of_fp32_bits_per_value": 3.2,
    }


def main() -> None:
    torch.set_num_threads(1)
    photos = real_photos(crops_per_photo=8)
    results = []
    for name in MODELS:
        loaded = load_pretrained_lite(name)
        graph = ModelGraph(loaded.module, loaded.input_shape)
        batch = loaded.preprocessor.batch([image for _, image in photos])
        for cut in middle_cuts(graph):
            head, tail = graph.split(cut)
            with torch.no_grad():
                activations = torch.cat([head(chunk)[0] for chunk in batch.split(16)])
            result = {"model": name, "cut": cut.name, "images": len(photos), **_bounds(activations, tail)}
            results.append(result)
            print(json.dumps(result))
    Path("bench/results/compression_bounds.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
