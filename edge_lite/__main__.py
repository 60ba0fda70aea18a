"""``python -m edge_lite --onnx-dir DIR [--cloud-url URL] [--port N] [--codec C] [--engine E] ...``: run the
torch-free edge (engine onnxruntime, or openvino with the `openvino` extra installed).

Every setting of :class:`edge_lite.settings.EdgeLiteSettings` is a flag, overriding its ``SPLITINFER_``
environment variable. It is served as the torch services are (``splitinfer.serve``): the same uvicorn
configuration and HTTP protocol (the connection cap, the request-head deadline, problem+json for requests
the parser refuses), draining on SIGTERM, and a startup failure in one line (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

PROG = "python -m edge_lite"
DESCRIPTION = (
    "Run the torch-free edge: the head of an export (`splitinfer export`) on ONNX Runtime or OpenVINO, served "
    "as `splitinfer edge` is (connection cap, request-head deadline, draining on SIGTERM)."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until stopped; an expected failure (bad settings, an export that does not load) is one line on
    stderr and exit status 2."""
    from edge_lite.settings import EdgeLiteSettings
    from splitinfer.failures import explain, failure_line
    from splitinfer.settings_flags import add_settings_flags, settings_from_args

    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    add_settings_flags(parser, EdgeLiteSettings)
    args = parser.parse_args(argv)
    try:
        from edge_lite.app import create_app
        from service_core.connections import raise_open_files_limit
        from splitinfer.serve import run_service

        raise_open_files_limit()  # NOTE: before the settings, whose default MAX_CONNECTIONS fits the limit
        settings = settings_from_args(EdgeLiteSettings, args)
        run_service(create_app(settings), settings, debug=args.debug)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = explain(exc)
        if message is None or args.debug:
            raise
        print(failure_line(PROG, message), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
