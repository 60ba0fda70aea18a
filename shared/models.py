"""Loading a classifier by name with its weights, labels, preprocessing and a digest of its weights."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from shared.preprocessing import ImagePreprocessor

__all__ = ["LoadedModel", "WeightsKind", "load_model", "resolve_factory", "unwritable_weights_cache", "weights_digest"]

logger = logging.getLogger(__name__)

WeightsKind = Literal["pretrained", "random", "file"]
RANDOM_SEED = 0


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode plus everything both services must agree on."""

    name: str
    module: nn.Module
    weights: str
    """What was asked for: ``DEFAULT``, ``none`` or a file path."""
    weights_kind: WeightsKind
    digest: str
    """``sha256:<hex>`` over the state dict in key order (names, dtypes, shapes and bytes)."""
    labels: tuple[str, ...]
    preprocessor: ImagePreprocessor

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        size = self.preprocessor.crop_size
        return (1, 3, size, size)

    @property
    def short_digest(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else f"class {index}"


def weights_digest(module: nn.Module) -> str:
    """A stable digest of a model's parameters and buffers."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(key.encode())
        digest.update(f"|{value.dtype!s}|{tuple(tensor.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def resolve_factory(name: str) -> Any:
    """``package.module:factory`` to the callable it names."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model {name!r} is neither a torchvision model name nor 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for model {name!r}: {exc}") from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"{module_name!r} has no attribute {attr!r} (model {name!r})")
    if not callable(factory):
        raise ValueError(f"model factory {name!r} is not callable")
    return factory


def _torchvision_weights(name: str) -> Any | None:
    from torchvision import models

    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return None


def _build(name: str, pretrained: bool) -> nn.Module:
    if ":" in name:
        if pretrained:
            raise ValueError(f"DEFAULT weights exist only for torchvision models, not {name!r}; pass a file")
        module = resolve_factory(name)()
        if not isinstance(module, nn.Module):
            raise ValueError(f"model factory {name!r} returned {type(module).__name__}, not an nn.Module")
        return module
    from torchvision import models

    if name not in models.list_models(module=models):
        raise ValueError(
            f"unknown model {name!r}: use a torchvision classification model name "
            "(torchvision.models.list_models(module=torchvision.models)) or 'package.module:factory'"
        )
    with warnings.catch_warnings():
        # NOTE: googlenet and inception_v3 warn about a future change of their default init.
        warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
        built: nn.Module = models.get_model(name, weights="DEFAULT" if pretrained else None)
        return built


def unwritable_weights_cache() -> Path | None:
    """torch's checkpoint cache (``$TORCH_HOME/hub/checkpoints``) when this process cannot create or write it."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    existing = cache
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return None if os.access(existing, os.W_OK | os.X_OK) else cache


def _seeded_build(name: str, *, pretrained: bool) -> nn.Module:
    """Build with the fixed seed (so two processes agree on random weights) without touching the caller's
    global RNG: the seed applies inside a forked RNG state that is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _build(name, pretrained=pretrained)


def load_model(name: str, weights: str = "none", *, fallback_to_random: bool = False) -> LoadedModel:
    """Load ``name`` (a torchvision model or ``package.module:factory``) with ``weights``.

    ``weights`` is ``DEFAULT`` (torchvision's pretrained weights, downloaded and cached by torchvision),
    ``none`` (random init with a fixed seed, so two processes agree) or a path to a ``state_dict`` file
    (loaded with ``weights_only=True``). With ``fallback_to_random``, a ``DEFAULT`` that cannot be
    obtained (offline) logs an error and falls back to random weights instead of raising.
    """
    kind: WeightsKind
    if weights.upper() == "DEFAULT":
        try:
            module = _seeded_build(name, pretrained=True)
            kind = "pretrained"
        except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
            unwritable = unwritable_weights_cache()
            reason = (
                f"the weights cache {unwritable} is not writable by uid {os.getuid()} ({exc})"
                if unwritable is not None
                else f"they could not be obtained ({exc})"
            )
            if not fallback_to_random:
                raise ValueError(f"cannot load DEFAULT weights for {name!r}: {reason}") from exc
            logger.error(
                "!!! DEFAULT weights for %s: %s; serving RANDOM weights (seed %d): predictions are meaningless !!!",
                name,
                reason,
                RANDOM_SEED,
            )
            module = _seeded_build(name, pretrained=False)
            kind = "random"
    elif weights.lower() == "none":
        module = _seeded_build(name, pretrained=False)
        kind = "random"
    else:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"weights file {str(path)!r} does not exist")
        module = _seeded_build(name, pretrained=False)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise ValueError(f"cannot load weights file {str(path)!r}: {exc}") from exc
        if not isinstance(state, dict):
            raise ValueError(f"weights file {str(path)!r} does not hold a state_dict")
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"weights file {str(path)!r} does not fit model {name!r}: {exc}") from exc
        kind = "file"
    module.eval()
    meta = _torchvision_weights(name) if ":" not in name else None
    categories = tuple(meta.meta.get("categories") or ()) if meta is not None else ()
    preprocessor = ImagePreprocessor.from_transform(meta.transforms() if meta is not None else None)
    if ":" in name:  # a factory may say how its model's inputs are normalized (shared.zoo)
        custom = getattr(resolve_factory(name), "preprocessing", None)
        preprocessor = custom if isinstance(custom, ImagePreprocessor) else preprocessor
    return LoadedModel(
        name=name,
        module=module,
        weights=weights,
        weights_kind=kind,
        digest=weights_digest(module),
        labels=categories,
        preprocessor=preprocessor,
    )
