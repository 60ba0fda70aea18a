"""Encode time of the activation codecs at EfficientNet-Lite0 ``_blocks.6`` (real weights), one thread.

    PYTHONPATH=. .venv/bin/python bench/encode_cost.py [--runs 41] [--json OUT]

Three real photos (scikit-image ``chelsea``, ``coffee``, ``astronaut``, JPEG q90) through the head; each codec
encodes the three activations in turn (``shared.protocol.encode_activations``, what the edge runs), after
one warm-up round: min and median wall ms, median CPU ms, payload bytes and a digest of the payloads (equal
digests: the same bytes). Run it with ``PYTHONPATH`` at another checkout to time that one's encoders on
the same footing (this script only uses public functions).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

CODECS = ("int8+zstd", "int6+ans", "budget10+ans", "budget20+ans", "dct10+ans", "dct20+ans")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=41, help="timed encodes per codec (cycling over 3 photos)")
    parser.add_argument("--codecs", nargs="+", default=list(CODECS))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    import torch
    from PIL import Image
    from skimage import data

    from shared.models import load_model
    from shared.preprocessing import decode_image
    from shared.protocol import encode_activations

    torch.set_num_threads(1)
    loaded = load_model("efficientnet_lite0", "DEFAULT")
    graph = loaded.graph()
    cut = next(c for c in graph.single_tensor_cuts() if c.name.endswith("_blocks.6"))
    head, _ = graph.split(cut)
    shipped = []
    for name in ("chelsea", "coffee", "astronaut"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, "JPEG", quality=90)
        batch = loaded.preprocessor.batch([decode_image(buffer.getvalue())])
        with torch.inference_mode():
            shipped.append(tuple(head(batch)))
    common = {"model": loaded.name, "weights": loaded.digest}
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "code": str(Path(sys.modules["shared"].__file__ or "").parent.parent),
        "cut": cut.name,
        "shape": list(shipped[0][0].shape),
        "runs": args.runs,
        "codecs": {},
    }
    for codec in args.codecs:
        payloads = [encode_activations(s, cut, codec=codec, **common) for s in shipped]
        walls, cpus = [], []
        for run in range(args.runs):
            started, cpu = time.perf_counter(), time.process_time()
            encode_activations(shipped[run % len(shipped)], cut, codec=codec, **common)
            walls.append((time.perf_counter() - started) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        results["codecs"][codec] = {
            "min_ms": round(min(walls), 3),
            "median_ms": round(statistics.median(walls), 3),
            "median_cpu_ms": round(statistics.median(cpus), 3),
            "bytes": [len(p) for p in payloads],
            "digest": hashlib.sha256(b"".join(payloads)).hexdigest()[:16],
        }
        print(codec, results["codecs"][codec], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
