"""DEV material for the MMAE-ECG studies: normal windows of MIT-BIH DS1 DEV records, cached.

Never reads the DS1 TEST records (101 106 119 201 209 215 223).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ecgstream.training.config import TrainConfig
from ecgstream.training.trainer import build_model, load_checkpoint, prepare_data

DEV = [
    "108",
    "109",
    "112",
    "114",
    "115",
    "116",
    "118",
    "122",
    "124",
    "203",
    "205",
    "207",
    "208",
    "220",
    "230",
]
TEST = ["101", "106", "119", "201", "209", "215", "223"]
VAL = ["114", "118", "124", "205", "220"]
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mitdb-ds1"
CACHE = Path("/tmp/mmae_dev_records.pkl")


def fold_summary(folds: dict, names: tuple[str, ...]) -> dict:
    """Per score name and class (S, V, F, all): mean, min and max of the folds' beat AUROCs
    (``folds[k][name][class]["auroc"]``) and how many folds have it."""
    summary = {}
    for name in names:
        for c in ("S", "V", "F", "all"):
            vals = [f[name][c]["auroc"] for f in folds.values() if c in f.get(name, {})]
            if vals:
                summary[f"{name}_{c}"] = {"mean": round(float(np.mean(vals)), 4),
                                          "min": min(vals), "max": max(vals), "folds": len(vals)}  # fmt: skip
    return summary


def load_dev() -> dict:
    """Every DEV record preprocessed at 100 Hz (MLII), keyed by name; cached in /tmp."""
    if CACHE.exists():
        return pickle.loads(CACHE.read_bytes())
    cfg = TrainConfig(records=DEV, val_records=VAL)
    train, val = prepare_data(cfg, [DATA])
    recs = {r.name: r for r in train + val}
    assert not set(recs) & set(TEST)
    CACHE.write_bytes(pickle.dumps(recs))
    return recs


if __name__ == "__main__":
    recs = load_dev()
    print({k: v.x.shape for k, v in recs.items()})


def trained_model(checkpoint: str | Path):
    """The MMAE-ECG network of a training checkpoint (``last.pt``, ``model.pt``, ...), with the
    training configuration it was saved with."""
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig(
        **{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__}
    )
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model
