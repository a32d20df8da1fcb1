"""Reading PhysioNet WFDB records and choosing their leads.

A :class:`Record` is a whole recording in physical units (usually mV) with its own sampling
rate. Everything downstream (preprocessing, windowing, models) works on its ``signal`` array of
shape ``(n_samples, n_leads)``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Record",
    "RecordError",
    "list_records",
    "read_record",
    "select_leads",
    "fill_short_nan_runs",
]

#: Longest run of missing (NaN) samples that is bridged by linear interpolation, in seconds.
MAX_NAN_GAP_S = 0.5


class RecordError(ValueError):
    """A record cannot be used: missing files, unknown leads, too short, unusable samples."""


@dataclass
class Record:
    """One recording: ``signal`` is ``(n_samples, n_leads)`` float32 in ``units`` at ``fs`` Hz."""

    name: str
    signal: np.ndarray
    fs: float
    leads: list[str]
    units: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


def _records_in_folder(folder: Path) -> list[Path]:
    ptbxl_csv = folder / "ptbxl_database.csv"
    if ptbxl_csv.exists():
        return ptbxl_record_paths(folder)
    listing = folder / "RECORDS"
    if listing.exists():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        return [folder / name for name in names]
    heas = sorted(folder.glob("*.hea"))
    if not heas:
        raise RecordError(f"{folder}: no RECORDS file, no ptbxl_database.csv and no .hea files")
    return [h.with_suffix("") for h in heas]


def ptbxl_record_paths(folder: Path, resolution: str = "lr") -> list[Path]:
    """Record paths of a PTB-XL folder from ``ptbxl_database.csv`` (``lr`` 100 Hz or ``hr`` 500 Hz)."""
    if resolution not in ("lr", "hr"):
        raise RecordError(f"PTB-XL resolution must be 'lr' or 'hr', not {resolution!r}")
    column = f"filename_{resolution}"
    paths = []
    with open(folder / "ptbxl_database.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            path = folder / row[column]
            if path.with_suffix(".hea").exists():
                paths.append(path)
    return paths


def list_records(*paths: str | Path) -> list[Path]:
    """Expand record paths and folders into record paths (without extension).

    A folder is read from its ``RECORDS`` file, a PTB-XL ``ptbxl_database.csv`` (100 Hz
    files) or, failing both, every ``.hea`` file in it. A record path may be given with or
    without its ``.hea`` / ``.dat`` extension.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(_records_in_folder(p))
            continue
        if p.suffix in (".hea", ".dat", ".atr"):
            p = p.with_suffix("")
        if not p.with_suffix(".hea").exists():
            raise RecordError(f"{raw}: no such record (looked for {p.with_suffix('.hea')})")
        out.append(p)
    return out


def fill_short_nan_runs(
    signal: np.ndarray, fs: float, max_gap_s: float = MAX_NAN_GAP_S
) -> np.ndarray:
    """Bridge NaN runs up to ``max_gap_s`` seconds by linear interpolation, per lead.

    Raises :class:`RecordError` naming the lead and position of a longer run, because a long
    hole cannot be scored honestly.
    """
    if not np.isnan(signal).any():
        return signal
    signal = signal.copy()
    max_gap = int(round(max_gap_s * fs))
    n = signal.shape[0]
    idx = np.arange(n)
    for lead in range(signal.shape[1]):
        bad = np.isnan(signal[:, lead])
        if not bad.any():
            continue
        if bad.all():
            raise RecordError(f"lead {lead} has no valid samples")
        edges = np.diff(np.concatenate(([0], bad.astype(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        longest = int((ends - starts).max())
        if longest > max_gap:
            at = int(starts[np.argmax(ends - starts)])
            raise RecordError(
                f"lead {lead} has a run of {longest} missing samples ({longest / fs:.2f} s) "
                f"starting at sample {at}; at most {max_gap_s} s can be bridged"
            )
        signal[bad, lead] = np.interp(idx[bad], idx[~bad], signal[~bad, lead])
    return signal


#: digital value that marks a missing sample, per supported signal file format
_INVALID = {"212": -2048, "16": -32768}
_GAIN = re.compile(r"^(-?\d*\.?\d*(?:e[+-]?\d+)?)(?:\((-?\d+)\))?(?:/(\S+))?$")


@dataclass
class _Header:
    """What :func:`_read_simple` needs from a single-segment WFDB header."""

    fs: float
    n_samples: int
    file_name: str
    fmt: str
    gain: np.ndarray
    baseline: np.ndarray
    units: list[str]
    names: list[str]


def _parse_header(text: str) -> _Header | None:
    """The header of a record :func:`_read_simple` can read, or None for anything else.

    Covered: one segment, every signal in one file, format 212 or 16, one sample per frame, no
    skew or byte offset, the sample count and every signal field given. Other headers (and
    malformed ones) go to ``wfdb``, which reads or rejects them.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        return None
    rec = lines[0].split()
    if len(rec) < 4 or "/" in rec[0] or not rec[1].isdigit() or not rec[3].isdigit():
        return None
    fs_text = re.match(r"\d*\.?\d*", rec[2]).group()
    n_sig, n_samples = int(rec[1]), int(rec[3])
    if not fs_text or fs_text == "." or n_sig < 1 or len(lines) != n_sig + 1:
        return None
    files, fmts, gains, baselines, units, names = set(), set(), [], [], [], []
    for line in lines[1:]:
        f = line.split(maxsplit=8)
        if len(f) < 9 or f[1] not in _INVALID:
            return None
        gain = _GAIN.match(f[2])
        if gain is None or not gain.group(1) or not f[4].lstrip("-").isdigit():
            return None
        files.add(f[0])
        fmts.add(f[1])
        gains.append(float(gain.group(1)) or 200.0)
        baselines.append(int(gain.group(2)) if gain.group(2) is not None else int(f[4]))
        units.append(gain.group(3) or "mV")
        names.append(f[8])
    if len(files) != 1 or len(fmts) != 1:
        return None
    return _Header(
        fs=float(fs_text),
        n_samples=n_samples,
        file_name=files.pop(),
        fmt=fmts.pop(),
        gain=np.array(gains, dtype=np.float64),
        baseline=np.array(baselines, dtype=np.float64),
        units=units,
        names=names,
    )


def _decode_212(raw: np.ndarray, n: int) -> np.ndarray:
    """Format 212: two 12-bit two's-complement samples in every three bytes."""
    triplets = np.zeros(-(-n // 2) * 3, dtype=np.uint8)
    triplets[: min(len(raw), len(triplets))] = raw[: len(triplets)]
    b = triplets.reshape(-1, 3).astype(np.int16)
    out = np.empty((len(b), 2), dtype=np.int16)
    out[:, 0] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
    out[:, 1] = b[:, 2] | ((b[:, 1] >> 4) << 8)
    out = out.ravel()[:n]
    out[out > 2047] -= 4096
    return out


def _read_simple(path: Path, header: _Header) -> tuple[np.ndarray, float, list[str], list[str]]:
    """Physical samples ``(n, n_sig)`` float64 of a record :func:`_parse_header` accepted."""
    n_sig = len(header.names)
    n = header.n_samples * n_sig
    data_path = path.parent / header.file_name
    try:
        raw = np.fromfile(data_path, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise RecordError(f"{path}: signal file {data_path} not found") from exc
    need = -(-n * 3 // 2) if header.fmt == "212" else 2 * n
    if len(raw) < need:
        raise RecordError(
            f"{path}: signal file {data_path} has {len(raw)} bytes, the header needs {need}"
        )
    digital = _decode_212(raw, n) if header.fmt == "212" else raw[:need].view("<i2")
    digital = digital.reshape(header.n_samples, n_sig)
    signal = digital.astype(np.float64)
    np.subtract(signal, header.baseline, signal)
    np.divide(signal, header.gain, signal)
    signal[digital == _INVALID[header.fmt]] = np.nan
    return signal, header.fs, header.names, header.units


def _read_wfdb(path: Path) -> tuple[np.ndarray, float, list[str], list[str]]:
    """Any record ``wfdb`` reads (multi-segment, other formats, ...), as :func:`_read_simple`."""
    import wfdb

    try:
        rec = wfdb.rdrecord(str(path))
    except FileNotFoundError as exc:
        raise RecordError(f"{path}: {exc}") from exc
    except Exception as exc:  # wfdb raises bare ValueErrors etc. for corrupt headers
        raise RecordError(f"{path}: cannot read record: {exc}") from exc
    if rec.p_signal is None:
        raise RecordError(f"{path}: record has no signal samples")
    signal = np.asarray(rec.p_signal)
    if signal.ndim == 1:
        signal = signal[:, None]
    units = [str(u) for u in (rec.units or ["mV"] * signal.shape[1])]
    return signal, float(rec.fs), [str(s) for s in rec.sig_name], units


def read_record(path: str | Path, leads: list[str] | None = None) -> Record:
    """Read a WFDB record in physical units, optionally keeping only ``leads`` (by name).

    Single-file records in formats 212 (MIT-BIH) and 16 (PTB-XL) are read with numpy alone,
    giving the same samples as ``wfdb.rdrecord``; every other record is read with ``wfdb``.
    """
    path = Path(path)
    if path.suffix in (".hea", ".dat"):
        path = path.with_suffix("")
    hea = path.with_suffix(".hea")
    if not hea.exists():
        raise RecordError(f"{path}: record header {hea} not found")
    try:
        header = _parse_header(hea.read_bytes().decode("ascii", errors="ignore"))
    except ValueError:
        header = None
    if header is not None and header.n_samples > 0:
        p_signal, fs, names, units = _read_simple(path, header)
    else:
        p_signal, fs, names, units = _read_wfdb(path)
    signal = fill_short_nan_runs(p_signal.astype(np.float32), fs)
    record = Record(name=path.name, signal=signal, fs=fs, leads=names, units=units, path=path)
    if leads is not None:
        record = select_leads(record, leads)
    return record


def _norm(name: str) -> str:
    return name.strip().upper().replace(" ", "")


#: Holter "modified" limb leads and the standard leads they stand for (matched both ways)
LEAD_ALIASES = {"MLI": "I", "MLII": "II", "MLIII": "III"}
_ALIAS = {**LEAD_ALIASES, **{v: k for k, v in LEAD_ALIASES.items()}}


def _find(avail: list[str], wanted: str) -> int | None:
    """Index of ``wanted`` in normalised ``avail``: by name, else by its alias (MLII <-> II)."""
    w = _norm(wanted)
    if w in avail:
        return avail.index(w)
    alias = _ALIAS.get(w)
    return avail.index(alias) if alias in avail else None


def lead_indices(available: list[str], wanted: list[str]) -> list[int]:
    """Indices of ``wanted`` leads in ``available``, matched by name (case-insensitive).

    A modified limb lead matches its standard lead when the exact name is absent (a model of
    MIT-BIH's MLII reads lead II of a 12-lead ECG, and the reverse). A single wanted lead falls
    back to the first lead when no name matches (the scoring contract); several wanted leads
    must all be present.
    """
    avail = [_norm(a) for a in available]
    found = [_find(avail, w) for w in wanted]
    if len(wanted) == 1:
        return [found[0] if found[0] is not None else 0]
    missing = [w for w, i in zip(wanted, found, strict=True) if i is None]
    if missing:
        raise RecordError(f"leads {missing} not in record (it has {available})")
    return found


def select_leads(record: Record, leads: list[str]) -> Record:
    """A copy of ``record`` with only ``leads``, in that order (see :func:`lead_indices`)."""
    idx = lead_indices(record.leads, leads)
    return Record(
        name=record.name,
        signal=np.ascontiguousarray(record.signal[:, idx]),
        fs=record.fs,
        leads=[record.leads[i] for i in idx],
        units=[record.units[i] for i in idx] if record.units else [],
        path=record.path,
    )
