"""The reliability soak: 20,000 requests through edge and cloud at concurrency 16, memory sampled.

    .venv/bin/python bench/soak.py     # writes bench/results/soak.json; then python bench/report.py

It uses a tiny CNN (tests.fixture_models:tiny_cnn) so that the run measures the services (HTTP, wire
format, batching, memory) rather than convolution speed; resnet18 on this 2-core machine would need
about 25 minutes for the same count. The services run as bench/cpu_suite.py starts them (as ``splitinfer up``
does); this script sets nothing else (it set ``GOMP_SPINCOUNT=0`` for every process until bench/cpu_suite.py
stopped doing so).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixture_models must import in the service processes too
sys.path.insert(0, str(ROOT / "bench"))

from cpu_suite import machine, soak_section  # noqa: E402

from splitinfer.bench import bench_images  # noqa: E402


def main() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    logs = Path(tempfile.mkdtemp(prefix="splitinfer-soak-"))
    row = soak_section(
        bench_images(count=8), logs, model="tests.fixture_models:tiny_cnn", cut="block", clients=16, requests=requests
    )
    result = {"machine": machine(), "command": "python bench/soak.py", "soak": row}
    out = ROOT / "bench/results/soak.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
