"""``splitinfer export``: write the ONNX head and tail of a cut (or of every single-tensor cut) with manifests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from splitinfer.failures import CliError

__all__ = ["add_export_parser"]


def _cmd_export(args: argparse.Namespace) -> int:
    if Path(args.out).exists() and not Path(args.out).is_dir():  # NOTE: before the model and the export
        raise CliError(f"--out {args.out!r} is a file: name a folder to write the export into")
    import torch

    from shared.models import load_model
    from shared.onnx_export import ExportError, export_split
    from shared.splitting import ModelGraph

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.weights)
    graph = ModelGraph(loaded.module, loaded.input_shape)
    cuts = [c.name for c in graph.single_tensor_cuts()] if args.cut == "all" else [args.cut]
    out = Path(args.out)
    failures = 0
    rows = []
    for name in cuts:
        directory = out / name if args.cut == "all" else out
        try:
            exported = export_split(
                graph,
                name,
                model=loaded.name,
                weights=loaded.digest,
                preprocessing=loaded.preprocessor.to_json(),
                labels=loaded.labels,
                tolerance=args.tolerance,
                opset=args.opset,
            )
        except ExportError as exc:
            failures += 1
            print(f"{name}: FAILED: {exc}")
            continue
        path = exported.write(directory)
        manifest = exported.manifest
        rows.append(manifest.to_json() | {"labels": len(manifest.labels), "path": str(path)})
        tensors = ", ".join(f"{t.name} {list(t.shape)}" for t in manifest.cut_tensors)
        print(
            f"{manifest.cut}: head max |err| {manifest.head.max_abs_error:.2e}, tail max |err| "
            f"{manifest.tail.max_abs_error:.2e} (tolerance {args.tolerance:g}); crossing: {tensors}; wrote {path}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if failures else 0


def add_export_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """``export`` and its options; ``parents``: the options every command takes (``--debug``, ``--width``)."""
    help_text = "write the head and tail of a cut as ONNX (checked against torch) with a manifest"
    export = sub.add_parser("export", help=help_text, description=help_text, parents=parents)
    export.add_argument("model")
    export.add_argument(
        "--cut", required=True, help="a cut name, or 'all' for every single-tensor cut (one folder each)"
    )
    export.add_argument("--weights", default="none")
    export.add_argument("--out", required=True, help="folder for head.onnx, tail.onnx and manifest.json")
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest |onnxruntime - torch| accepted")
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--threads", type=int, default=1, help="torch threads while exporting and checking")
    export.add_argument("--json", default=None, help="also write the manifests (without labels) to this file")
    export.set_defaults(func=_cmd_export)
