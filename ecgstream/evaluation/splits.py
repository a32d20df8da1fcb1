"""The fixed evaluation splits of the development data (one place; never tune on TEST).

MIT-BIH DS1 is split by record (inter-patient), PTB-XL by ``strat_fold`` (patient-respecting).
Figures are reported on the TEST parts only; training, early stopping, threshold calibration and
hyper-parameter choices use the DEV / train / validation parts.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "MITDB_LEAD",
    "MITDB_TEST",
    "MITDB_DEV",
    "MITDB_ALL",
    "PTBXL_TRAIN_FOLDS",
    "PTBXL_VAL_FOLDS",
    "PTBXL_TEST_FOLDS",
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
