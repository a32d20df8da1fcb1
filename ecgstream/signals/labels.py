"""Reference labels: MIT-BIH-style beat annotations (AAMI classes) and PTB-XL record statements.

Labels are only used to choose normal training material and to evaluate; the model path never
looks at beats (no R-peak detection anywhere in scoring).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgstream.signals.records import RecordError

__all__ = [
    "AAMI_NORMAL",
    "AAMI_ABNORMAL",
    "BeatAnnotations",
    "read_beats",
    "window_labels",
    "normal_mask",
    "point_labels",
    "ptbxl_table",
]

#: AAMI beat symbols counted as normal (N class) and abnormal (S, V, F, Q classes).
AAMI_NORMAL = set("NLRej")
AAMI_ABNORMAL = set("AaJSVEFfQ")


@dataclass
class BeatAnnotations:
    """Beat positions (``samples``, at the record rate ``fs`` Hz) with symbols and AAMI class."""

    samples: np.ndarray
    symbols: np.ndarray
    abnormal: np.ndarray
    fs: float

    def __len__(self) -> int:
        return len(self.samples)


def read_beats(record_path: str | Path, extension: str = "atr") -> BeatAnnotations:
    """Read a record's beat annotations, keeping only AAMI normal and abnormal beat symbols."""
    import wfdb

    path = Path(record_path)
    if path.suffix in (".hea", ".dat", ".atr"):
        path = path.with_suffix("")
    ann_file = path.with_suffix(f".{extension}")
    if not ann_file.exists():
        raise RecordError(f"{path}: annotation file {ann_file} not found")
    ann = wfdb.rdann(str(path), extension)
    symbols = np.asarray(ann.symbol)
    keep = np.isin(symbols, sorted(AAMI_NORMAL | AAMI_ABNORMAL))
    symbols = symbols[keep]
    return BeatAnnotations(
        samples=np.asarray(ann.sample, dtype=np.int64)[keep],
        symbols=symbols,
        abnormal=np.isin(symbols, sorted(AAMI_ABNORMAL)),
        fs=float(ann.fs) if ann.fs else float("nan"),
    )


def window_labels(beats: BeatAnnotations, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per-window label: 1 if an abnormal beat lies in ``[start, end)``, 0 if only normal beats, -1 if none.

    ``starts`` and ``ends`` are sample indices at the annotation's rate.
    """
    starts, ends = np.asarray(starts), np.asarray(ends)
    lo = np.searchsorted(beats.samples, starts, side="left")
    hi = np.searchsorted(beats.samples, ends, side="left")
    cum = np.concatenate([[0], np.cumsum(beats.abnormal)])
    n_abnormal = cum[hi] - cum[lo]
    out = np.where(n_abnormal > 0, 1, 0).astype(np.int8)
    out[hi == lo] = -1
    return out


def normal_mask(beats: BeatAnnotations, n_samples: int, margin_s: float = 0.5) -> np.ndarray:
    """``(n_samples,)`` bool: True where no abnormal beat lies within ``margin_s`` seconds."""
    margin = int(round(margin_s * beats.fs))
    diff = np.zeros(n_samples + 1, dtype=np.int64)
    centres = beats.samples[beats.abnormal]
    np.add.at(diff, np.clip(centres - margin, 0, n_samples), 1)
    np.add.at(diff, np.clip(centres + margin + 1, 0, n_samples), -1)
    return np.cumsum(diff[:-1]) == 0


def point_labels(beats: BeatAnnotations, n_samples: int, half_width_s: float = 0.15) -> np.ndarray:
    """``(n_samples,)`` int8: 1 within ``half_width_s`` seconds of an abnormal beat, else 0."""
    return (~normal_mask(beats, n_samples, half_width_s)).astype(np.int8)


def _superclass_map(folder: Path) -> dict[str, str]:
    import pandas as pd

    statements = pd.read_csv(folder / "scp_statements.csv", index_col=0)
    diag = statements[statements["diagnostic"] == 1.0]
    return {
        code: str(cls) for code, cls in diag["diagnostic_class"].items() if isinstance(cls, str)
    }


def ptbxl_table(folder: str | Path, resolution: str = "lr"):
    """PTB-XL records with patient, fold and label (0 NORM only, 1 other diagnostic superclass, -1 none).

    Returns a pandas DataFrame with columns ``ecg_id``, ``patient_id``, ``strat_fold``, ``path``
    (record path without extension), ``superclasses`` (sorted list) and ``label``. Only records
    whose files exist are listed. Statements with likelihood 0 still count, as in PTB-XL's own
    benchmark code.
    """
    import pandas as pd

    folder = Path(folder)
    db_file = folder / "ptbxl_database.csv"
    if not db_file.exists():
        raise RecordError(f"{folder}: ptbxl_database.csv not found")
    if resolution not in ("lr", "hr"):
        raise RecordError(f"PTB-XL resolution must be 'lr' or 'hr', not {resolution!r}")
    db = pd.read_csv(db_file)
    classes = _superclass_map(folder)
    supers = [
        sorted({classes[c] for c in ast.literal_eval(codes) if c in classes})
        for codes in db["scp_codes"]
    ]
    label = [(-1 if not s else (0 if s == ["NORM"] else 1)) for s in supers]
    table = pd.DataFrame(
        {
            "ecg_id": db["ecg_id"].astype(int),
            "patient_id": db["patient_id"].astype(int),
            "strat_fold": db["strat_fold"].astype(int),
            "path": [folder / p for p in db[f"filename_{resolution}"]],
            "superclasses": supers,
            "label": label,
        }
    )
    exists = [Path(p).with_suffix(".hea").exists() for p in table["path"]]
    return table[exists].reset_index(drop=True)
