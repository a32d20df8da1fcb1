"""The fixed evaluation splits of the development data (one place; never tune on TEST).

MIT-BIH DS1 is split by record (inter-patient), PTB-XL by ``strat_fold`` (patient-respecting).
Figures are reported on the TEST parts only; training, early stopping, threshold calibration and
hyper-parameter choices use the DEV / train / validation parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = [
    "MITDB_LEAD",
    "MITDB_TEST",
    "MITDB_DEV",
    "MITDB_ALL",
    "PTBXL_TRAIN_FOLDS",
    "PTBXL_VAL_FOLDS",
    "PTBXL_TEST_FOLDS",
    "MITDB_CV_FOLDS",
    "PTBXL_CV_FOLDS",
    "CVFold",
    "mitdb_cv_folds",
    "ptbxl_cv_folds",
    "mitdb_paths",
    "ptbxl_split",
]

#: Lead the MIT-BIH models use.
MITDB_LEAD = "MLII"
#: MIT-BIH DS1 records used for figures only.
MITDB_TEST = ("101", "106", "119", "201", "209", "215", "223")
#: MIT-BIH DS1 records for training and validation (split further by record, never by window).
MITDB_DEV = (
    "108", "109", "112", "114", "115", "116", "118", "122",
    "124", "203", "205", "207", "208", "220", "230",
)  # fmt: skip
#: All 22 DS1 records (the shipped model is trained on these; no DS1 figures come from it).
MITDB_ALL = tuple(sorted(MITDB_TEST + MITDB_DEV))

#: PTB-XL ``strat_fold`` values: train on NORM-only ECGs of 1-5, validate on 6, TEST on 7-8.
PTBXL_TRAIN_FOLDS = (1, 2, 3, 4, 5)
PTBXL_VAL_FOLDS = (6,)
PTBXL_TEST_FOLDS = (7, 8)

#: Leave-records-out cross-validation over the DS1 DEV records: 5 folds of 3 records, fixed
#: before any cross-validated figure. Assigned from beat counts only (no scores) so that every
#: fold holds supraventricular (S), ventricular (V) and fusion (F) beats: the S-rich records
#: (118 207 220 124 114) and the V/F-rich ones (208 205 203 116 109) are spread one of each per
#: fold; the records with (almost) no ectopy (115 112 122 230 108) fill the folds.
MITDB_CV_FOLDS = (
    ("118", "208", "115"),
    ("207", "205", "112"),
    ("220", "203", "122"),
    ("124", "116", "230"),
    ("114", "109", "108"),
)
#: PTB-XL cross-validation: each ``strat_fold`` of ``ptbxl-dev`` in turn (folds respect patients).
PTBXL_CV_FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)


class CVFold(NamedTuple):
    """One cross-validation fold: ``held_out`` is scored, the model trains on ``train`` and
    validates (early stopping, calibration) on ``val``; the three are disjoint. Entries are
    MIT-BIH record names or PTB-XL ``strat_fold`` numbers."""

    index: int
    held_out: tuple
    train: tuple
    val: tuple


def _rotate(folds: tuple[tuple, ...]) -> list[CVFold]:
    """Fold k is scored, fold k+1 (cyclically) validates, the others train."""
    out = []
    for k, held in enumerate(folds):
        v = (k + 1) % len(folds)
        train = tuple(x for j, f in enumerate(folds) if j not in (k, v) for x in f)
        out.append(CVFold(k + 1, tuple(held), train, tuple(folds[v])))
    return out


def mitdb_cv_folds(folds: tuple[tuple[str, ...], ...] = MITDB_CV_FOLDS) -> list[CVFold]:
    """The DS1 DEV cross-validation folds; refuses a fold set that names a TEST record."""
    leaked = sorted({r for f in folds for r in f} & set(MITDB_TEST))
    if leaked:
        raise ValueError(
            f"cross-validation folds name DS1 TEST records {leaked}; TEST is scored once, "
            "outside cross-validation (eval_cv.py --test)"
        )
    names = [r for f in folds for r in f]
    if len(names) != len(set(names)):
        raise ValueError(f"a record is in more than one fold: {sorted(names)}")
    if len(folds) < 3:
        raise ValueError(f"need at least 3 folds (scored, validation, training), got {len(folds)}")
    return _rotate(tuple(tuple(f) for f in folds))


def ptbxl_cv_folds(folds: tuple[int, ...] = PTBXL_CV_FOLDS) -> list[CVFold]:
    """The PTB-XL cross-validation folds: ``held_out``, ``train`` and ``val`` are ``strat_fold``s."""
    if len(set(folds)) != len(folds) or len(folds) < 3:
        raise ValueError(f"need at least 3 distinct strat_folds, got {folds}")
    return _rotate(tuple((f,) for f in folds))


def mitdb_paths(folder: str | Path, names: tuple[str, ...] | list[str]) -> list[Path]:
    """Record paths (without extension) of MIT-BIH records ``names`` in ``folder``."""
    folder = Path(folder)
    return [folder / name for name in names]


def ptbxl_split(folder: str | Path, part: str, resolution: str = "lr"):
    """PTB-XL records of one split part as a DataFrame (see :func:`ecgstream.signals.labels.ptbxl_table`).

    ``part`` is ``"train"`` (NORM-only ECGs of folds 1-5), ``"val"`` (fold 6, all labels 0/1) or
    ``"test"`` (folds 7-8, all labels 0/1). Records without a diagnostic superclass are left out.
    """
    from ecgstream.signals.labels import ptbxl_table

    table = ptbxl_table(folder, resolution)
    table = table[table["label"] >= 0]
    if part == "train":
        return table[
            table["strat_fold"].isin(PTBXL_TRAIN_FOLDS) & (table["label"] == 0)
        ].reset_index(drop=True)
    if part == "val":
        return table[table["strat_fold"].isin(PTBXL_VAL_FOLDS)].reset_index(drop=True)
    if part == "test":
        return table[table["strat_fold"].isin(PTBXL_TEST_FOLDS)].reset_index(drop=True)
    raise ValueError(f"PTB-XL split part must be 'train', 'val' or 'test', not {part!r}")
