"""Run the peer's ``server-run.py`` (from the current folder) on a given port, as shipped or with one thread.

The peer's code creates its session with the default options (one thread per core) and listens on
0.0.0.0:8002; this launcher moves it to 127.0.0.1:PORT and, only with ``--one-thread``, gives its session
one intra-op and one inter-op thread, without editing the peer's files.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--one-thread", action="store_true", help="one ONNX Runtime thread (not the peer's default)")
    args = parser.parse_args()

    import onnxruntime as ort
    import uvicorn

    original_session = ort.InferenceSession
    original_run = uvicorn.run

    def one_thread_session(path: Any, sess_options: Any = None, **kwargs: Any) -> Any:
        options = sess_options or ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return original_session(path, options, **kwargs)

    def run_on_port(app: Any, **kwargs: Any) -> None:
        original_run(app, host="127.0.0.1", port=args.port)  # uvicorn's default access log stays on

    if args.one_thread:
        ort.InferenceSession = one_thread_session  # type: ignore[misc]
    uvicorn.run = run_on_port
    sys.path.insert(0, os.getcwd())  # the peer imports its modules from its own folder
    runpy.run_path("server-run.py", run_name="__main__")


if __name__ == "__main__":
    main()
