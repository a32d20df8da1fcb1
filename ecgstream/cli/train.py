"""``ecgstream train``: train a model on normal WFDB material (or a plain series) and export it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HELP = """\
Train an anomaly model on normal material and (with --model-out) export it to ONNX + model card.

PATH is a WFDB record path, a .hea file, or a folder (RECORDS file, PTB-XL ptbxl_database.csv,
or every .hea). Only normal material is trained on: windows without abnormal beat annotations
(.atr, AAMI classes), or NORM-only ECGs of PTB-XL (train folds 1-5, validation fold 6).
Validation uses records (or PTB-XL patients) never trained on: --val-records, else a seeded
fraction of the records. The best epoch on validation is kept, scores are calibrated on
validation normals (--set calibrate_on=all: every record's, for a detector that fits nothing
on its training records), and a checkpoint is written every epoch (--resume continues from it).

Settings come from defaults < the [train] and [model] tables of --config < ECGSTREAM_TRAIN__<KEY>
and ECGSTREAM_MODEL__<KEY> environment variables < flags. [train] holds the training settings,
[model] the model kind's own (e.g. the consensus detector's terms, lengths in samples at fs).
Every key of either table can also be set with --set KEY=VALUE (model.KEY or train.KEY to say
which); an unknown key is an error naming it.

examples:
  ecgstream train --config models/mmae-mitdb-mlii.toml --model-out models/mmae-mitdb-mlii.onnx \\
      ../shared/data/mitdb-ds1
  ecgstream train --leads MLII --records 108 109 112 --val-records 114 --epochs 5 \\
      --model-out /tmp/m.onnx ../shared/data/mitdb-ds1
  ecgstream train --leads I II III aVR aVL aVF V1 V2 V3 V4 V5 V6 --model-out /tmp/ptbxl.onnx \\
      ../shared/data/ptbxl-dev
  ecgstream train --series data/123_UCR.txt --train-end 5000 --model consensus --model-out /tmp/c.onnx
"""

#: flags that map one-to-one onto TrainConfig fields
_FLAGS = ("model", "name", "leads", "records", "exclude", "val_records", "epochs", "batch_size", "lr",
          "seed", "threads", "window_s", "hop_s", "fs", "checkpoint_dir", "model_out")  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on normal records and export it (needs torch)",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("paths", nargs="*", metavar="PATH", help="records, .hea files or folders")
    p.add_argument("--config", type=Path, help="TOML file with [train] and [model] tables")
    p.add_argument("--model", metavar="KIND", help="model kind (default mmae; see --list-models)")
    p.add_argument(
        "--list-models", action="store_true", help="print the available model kinds and exit"
    )
    p.add_argument("--name", help="model name stored in the file")
    p.add_argument("--leads", nargs="+", help="lead names to train on, e.g. MLII")
    p.add_argument("--records", nargs="+", help="use only these record names")
    p.add_argument("--exclude", nargs="+", help="leave out these record names")
    p.add_argument("--val-records", nargs="+", help="record names held out for validation")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--batch-size", type=int, help="windows per step")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="random seed (same seed, same weights)")
    p.add_argument("--threads", type=int, help="torch threads (default 2)")
    p.add_argument("--fs", type=float, help="model sampling rate in Hz")
    p.add_argument("--window-s", type=float, help="window length in seconds")
    p.add_argument("--hop-s", type=float, help="scoring hop in seconds")
    p.add_argument(
        "--checkpoint-dir", type=Path, help="folder for last.pt (every epoch) and model.pt"
    )
    p.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    p.add_argument("--model-out", type=Path, help="write the ONNX model (and <name>.md card) here")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any [train] or [model] key"
    )
    p.add_argument(
        "--series", type=Path, help="train on a plain series file instead of WFDB records"
    )
    p.add_argument("--train-end", type=int, help="with --series: samples [0, N) are anomaly-free")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _flags(args: argparse.Namespace) -> tuple[dict, dict]:
    """The ``[train]`` flags given, and the ``--set KEY=VALUE`` items as a dict."""
    from ecgstream.config import ConfigError

    flags = {name: getattr(args, name, None) for name in _FLAGS}
    sets = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        sets[key.strip().replace("-", "_")] = value
    return flags, sets


def _train_series(args: argparse.Namespace, cfg) -> int:
    try:
        from ecgstream.training.series import train_series
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("ecgstream"):
            raise ValueError("--series training is not available in this build "
                             "(ecgstream.training.series is missing)") from exc  # fmt: skip
        raise
    if args.train_end is None or args.model_out is None:
        raise ValueError("--series needs --train-end N (anomaly-free samples) and --model-out PATH")
    result = train_series(args.series, train_end=args.train_end, model_out=args.model_out,
                          kind=args.model or "uniad", seed=cfg.seed)  # fmt: skip
    print(f"trained {args.model or 'uniad'} on {args.series} in {result.seconds:.0f} s")
    print(f"wrote {args.model_out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ecgstream.training.config import load_train_config
    from ecgstream.training.registry import available_kinds, get_kind

    if args.list_models:
        print("\n".join(available_kinds()))
        return 0
    flags, sets = _flags(args)
    cfg = load_train_config(args.config, flags, sets)
    if args.series is not None:
        return _train_series(args, cfg)
    if not args.paths:
        raise ValueError("no PATH given: name WFDB records or folders to train on (see --help)")
    kind = get_kind(cfg.model)
    if cfg.checkpoint_dir is None and cfg.model_out is not None:
        cfg = dataclasses.replace(cfg, checkpoint_dir=Path(cfg.model_out).with_suffix(".ckpt"))
    result = kind.fit(cfg, args.paths, progress=not args.no_progress, resume=args.resume)
    val = result.spec.training.get("validation", {})
    summary = ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in val.items()
    )
    print(f"trained {cfg.model} in {getattr(result, 'seconds', 0.0):.0f} s; validation: {summary}")
    if cfg.checkpoint_dir:
        print(f"checkpoint: {Path(cfg.checkpoint_dir) / 'model.pt'}")
    if result.model_path:
        print(f"wrote {result.model_path} and {Path(result.model_path).with_suffix('.md')}")
    elif cfg.checkpoint_dir is None:
        print(
            "note: neither --model-out nor --checkpoint-dir given; nothing was saved",
            file=sys.stderr,
        )
    return 0


__all__ = ["add_parser", "run"]
