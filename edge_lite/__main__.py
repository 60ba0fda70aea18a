"""``python -m edge_lite [--onnx-dir DIR] [--cloud-url URL] [--port N] [--codec C] [--engine E]``: run the
torch-free edge (engine onnxruntime, or openvino with the `openvino` extra installed).

Flags override the ``SPLITINFER_`` environment variables of :class:`edge_lite.settings.EdgeLiteSettings`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from edge_lite.app import create_app
    from edge_lite.settings import EdgeLiteSettings

    parser = argparse.ArgumentParser(prog="python -m edge_lite", description=__doc__)
    flags = ("onnx-dir", "cloud-url", "host", "port", "codec", "engine", "onnx-threads", "openvino-precision")
    for flag in (*flags, "log-level"):
        parser.add_argument(f"--{flag}", default=None)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = EdgeLiteSettings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
