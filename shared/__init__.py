"""split-inference's library: graph-level splitting, the wire format, model loading and planning.

It never imports the services. The names below are imported on first use (PEP 562), so the torch-free
modules (``shared.errors``, ``shared.onnx_manifest``, ``shared.engines``) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.errors import SplitInferError
    from shared.models import LoadedModel, load_model, weights_digest
    from shared.splitting import INPUT_CUT, OUTPUT_CUT, Cut, ModelGraph, TensorSpec, list_cuts, split_model
    from shared.wire import ExpectedTensor, Payload, WireLimits, decode_payload, encode_payload

_HOMES = {
    "SplitInferError": "shared.errors",
    "LoadedModel": "shared.models",
    "load_model": "shared.models",
    "weights_digest": "shared.models",
    "INPUT_CUT": "shared.splitting",
    "OUTPUT_CUT": "shared.splitting",
    "Cut": "shared.splitting",
    "ModelGraph": "shared.splitting",
    "TensorSpec": "shared.splitting",
    "list_cuts": "shared.splitting",
    "split_model": "shared.splitting",
    "ExpectedTensor": "shared.wire",
    "Payload": "shared.wire",
    "WireLimits": "shared.wire",
    "decode_payload": "shared.wire",
    "encode_payload": "shared.wire",
}

__all__ = [
    "INPUT_CUT",
    "OUTPUT_CUT",
    "Cut",
    "ExpectedTensor",
    "LoadedModel",
    "ModelGraph",
    "Payload",
    "SplitInferError",
    "TensorSpec",
    "WireLimits",
    "decode_payload",
    "encode_payload",
    "list_cuts",
    "load_model",
    "split_model",
    "weights_digest",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shared' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
