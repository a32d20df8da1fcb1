"""``ecgstream export``: a finished training checkpoint to a self-describing ONNX file + model card."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]

HELP = """\
Export the model.pt written at the end of `ecgstream train` (or its checkpoint folder) to ONNX
(opset 17, dynamic batch axis). The file carries its ModelSpec in metadata_props (rate, window,
hop, leads, preprocessing, score normalisation, thresholds, version, training summary), and a
markdown model card <name>.md is written beside it.

example:
  ecgstream train --checkpoint-dir runs/mit ../shared/data/mitdb-ds1
  ecgstream export runs/mit --out models/mmae-mitdb-mlii.onnx --version 2
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained checkpoint to ONNX + model card",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("checkpoint", type=Path, help="model.pt from training, or its folder")
    p.add_argument("--out", required=True, type=Path, help="output .onnx path")
    p.add_argument("--name", help="override the model name")
    p.add_argument("--version", help="override the model version")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecgstream.runtime.model_file import read_spec
    from ecgstream.training.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, args.name, args.version)
    spec = read_spec(path)
    print(f"wrote {path} ({spec.name} v{spec.version}, {spec.kind}) and {path.with_suffix('.md')}")
    return 0
