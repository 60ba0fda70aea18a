"""How long ``splitinfer --help`` takes: a fresh interpreter per run, as a user's shell starts it.

    PYTHONPATH=. .venv/bin/python bench/cli_help.py            # 20 runs, a few seconds

Writes bench/results/cli_help.json: wall and CPU (user + system) seconds per run, their medians, and
the machine's load average before and after (a contended machine inflates wall time, not CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "measure"]

RESULTS = Path(__file__).parent / "results" / "cli_help.json"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(runs: int, argv: list[str]) -> dict[str, Any]:
    """Run ``python -m splitinfer ARGV`` ``runs`` times; one warm-up run first (the file cache)."""
    command = [sys.executable, "-m", "splitinfer", *argv]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    walls, cpus = [], []
    load_before = os.getloadavg()
    for _ in range(runs):
        cpu_before = _children_cpu()
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        walls.append(time.perf_counter() - started)
        cpus.append(_children_cpu() - cpu_before)
    return {
        "command": "splitinfer " + " ".join(argv),
        "runs": runs,
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_max": round(max(walls), 3),
        "cpu_s_median": round(statistics.median(cpus), 3),
        "wall_s": [round(w, 3) for w in walls],
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "help": measure(args.runs, ["--help"]),
        "cuts_help": measure(max(1, args.runs // 4), ["cuts", "--help"]),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
