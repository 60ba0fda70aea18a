"""split-inference's library: graph-level splitting, the wire format, model loading and planning.

It never imports the services.
"""

from shared.errors import SplitInferError
from shared.models import LoadedModel, load_model, weights_digest
from shared.splitting import INPUT_CUT, OUTPUT_CUT, Cut, ModelGraph, TensorSpec, list_cuts, split_model
from shared.wire import ExpectedTensor, Payload, WireLimits, decode_payload, encode_payload

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
