"""Training material: preprocessed records with their normal regions and labels.

A record is read once, preprocessed with the one preprocessing definition
(:mod:`ecgstream.signals.preprocess`) at the model rate, and kept whole; training windows are cut
from it at random normal positions each epoch. Three kinds of labels are understood:

- MIT-BIH style beat annotations (``.atr``): training windows contain only normal beats
  (:func:`ecgstream.signals.labels.normal_mask`); validation uses beat-level AUROC.
- PTB-XL folders (``ptbxl_database.csv``): only NORM-only ECGs are trained on; validation uses
  record-level AUROC (NORM-only vs any other diagnostic superclass).
- Plain records without labels: every window counts as normal (validation loss only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgstream.signals.preprocess import PreprocessConfig, preprocess
from ecgstream.signals.records import Record, RecordError, list_records, read_record

__all__ = [
    "TrainingRecord",
    "NoNormalWindowsError",
    "collect_records",
    "load_record",
    "normal_starts",
    "read_leads",
    "to_model_rate",
    "split_records",
]

#: Samples at the start of a preprocessed record skipped while the causal filters settle (seconds).
SETTLE_S = 1.0


class NoNormalWindowsError(ValueError):
    """No window of the training records is free of abnormal beats."""


@dataclass
class TrainingRecord:
    """One preprocessed record: ``x`` ``(n, leads)`` at the model rate, normal mask, labels."""

    name: str
    path: Path
    x: np.ndarray
    fs_record: float
    n_record: int
    delay_s: float
    normal: np.ndarray  # (n,) bool at the model rate
    beat_samples: np.ndarray | None = None  # at the record rate
    beat_abnormal: np.ndarray | None = None
    record_label: int | None = None  # PTB-XL style: 0 NORM only, 1 other
    group: str = ""  # patient (PTB-XL) or record name, for splitting
    fs_model: float = 100.0  # rate of ``x`` (Hz)
    meta: dict = field(default_factory=dict)


def read_leads(path: str | Path, leads: list[str]) -> Record:
    """Read a record and keep ``leads`` by name (raw samples at the record rate)."""
    return _strict_leads(read_record(path), leads)


def _strict_leads(record: Record, leads: list[str]) -> Record:
    """Keep ``leads`` by name; unlike scoring there is no fallback: training needs the named lead."""
    have = [name.strip().upper().replace(" ", "") for name in record.leads]
    idx = []
    for lead in leads:
        key = lead.strip().upper().replace(" ", "")
        if key not in have:
            raise RecordError(f"{record.name}: lead {lead!r} not in record (it has {record.leads})")
        idx.append(have.index(key))
    return Record(record.name, np.ascontiguousarray(record.signal[:, idx]), record.fs,
                  [record.leads[i] for i in idx], [record.units[i] for i in idx] if record.units else [],
                  record.path)  # fmt: skip


def to_model_rate(
    mask: np.ndarray, fs_record: float, fs_model: float, n_model: int, delay_s: float
) -> np.ndarray:
    """A per-sample bool mask at the record rate, sampled at the model rate (delay-aligned)."""
    t = np.arange(n_model) / fs_model - delay_s
    idx = np.clip(np.rint(t * fs_record).astype(np.int64), 0, len(mask) - 1)
    return mask[idx]


def load_record(
    path: Path,
    leads: list[str],
    pre: PreprocessConfig,
    window: int,
    normal_margin_s: float = 0.5,
    record_label: int | None = None,
    group: str = "",
) -> TrainingRecord:
    """Read, preprocess and label one record; raises :class:`RecordError` if shorter than a window."""
    from ecgstream.signals.labels import normal_mask, read_beats

    record = read_leads(path, leads)
    x, delay_s = preprocess(record.signal, record.fs, pre)
    if len(x) < window:
        raise RecordError(
            f"{record.name}: {record.duration_s:.2f} s is shorter than one "
            f"{window / pre.fs:.2f} s window"
        )
    beats = None
    if Path(path).with_suffix(".atr").exists():
        beats = read_beats(path)
        if beats.fs != beats.fs:  # NaN: annotation without its own rate
            beats.fs = record.fs
        normal_rec = normal_mask(beats, record.n_samples, normal_margin_s)
    else:
        normal_rec = np.ones(record.n_samples, bool)
    if record_label is not None and record_label != 0:
        normal_rec = np.zeros(record.n_samples, bool)
    normal = to_model_rate(normal_rec, record.fs, pre.fs, len(x), delay_s)
    settle = int(SETTLE_S * pre.fs)
    if len(x) - settle >= window:  # short records (PTB-XL's 10 s) keep their only window
        normal[:settle] = False
    return TrainingRecord(
        name=record.name,
        path=Path(path),
        x=np.ascontiguousarray(x, dtype=np.float32),
        fs_record=record.fs,
        n_record=record.n_samples,
        delay_s=delay_s,
        normal=normal,
        beat_samples=None if beats is None else beats.samples,
        beat_abnormal=None if beats is None else beats.abnormal,
        record_label=record_label,
        group=group or record.name,
        fs_model=pre.fs,
    )


def normal_starts(rec: TrainingRecord, window: int, stride: int = 1) -> np.ndarray:
    """Start indices (model rate) of windows lying entirely in the record's normal region."""
    bad = np.concatenate([[0], np.cumsum(~rec.normal)])
    starts = np.arange(0, len(rec.x) - window + 1, stride)
    return starts[(bad[starts + window] - bad[starts]) == 0]


def collect_records(
    paths: list[str | Path], ptbxl_resolution: str = "lr"
) -> list[tuple[Path, dict]]:
    """Expand PATHs into record paths with PTB-XL metadata where a folder has it.

    Returns ``(path, meta)`` pairs; ``meta`` holds ``label``, ``patient`` and ``fold`` for PTB-XL
    records and is empty otherwise.
    """
    from ecgstream.signals.labels import ptbxl_table

    out: list[tuple[Path, dict]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and (p / "ptbxl_database.csv").exists():
            table = ptbxl_table(p, ptbxl_resolution)
            for row in table.itertuples():
                meta = {
                    "label": int(row.label),
                    "patient": str(row.patient_id),
                    "fold": int(row.strat_fold),
                }
                out.append((Path(row.path), meta))
        else:
            out.extend((q, {}) for q in list_records(p))
    return out


def split_records(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A deterministic split of record (or patient) names into train and validation lists."""
    unique = sorted(set(names))
    if len(unique) < 2:
        raise ValueError(
            f"need at least two records or patients to split into train and validation, got {unique}; "
            "pass --val-records"
        )
    rng = np.random.default_rng(seed)
    n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
    val = sorted(rng.choice(unique, size=n_val, replace=False).tolist())
    return [n for n in unique if n not in val], val
