"""Plain time series without a sampling rate: text (one value per line, UCR archive), CSV and NPY.

A series is read into the same :class:`~ecgstream.signals.records.Record` as a WFDB record, with
``fs = 1.0`` (one sample per "second"; all lengths are then in samples), so training, windowing
and ``ecgstream score`` treat both alike. Channels are columns: ``(n_samples, n_channels)``.

The UCR Time Series Anomaly Archive names its files ``NNN_UCR_Anomaly_<name>_<train_end>_<begin>_<end>.txt``:
samples ``[0, train_end)`` are anomaly-free, and the single anomaly spans ``begin..end`` (1-based,
inclusive). :func:`ucr_info` parses that; :func:`dominant_period` and :func:`auto_window` choose a
window length from the series itself.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgstream.signals.records import Record, RecordError

__all__ = [
    "SERIES_SUFFIXES",
    "SeriesError",
    "UCRInfo",
    "is_series_path",
    "read_series",
    "write_series",
    "ucr_info",
    "read_ucr_labels",
    "dominant_period",
    "auto_window",
]

#: file suffixes read as plain series (anything else is taken for a WFDB record)
SERIES_SUFFIXES = (".txt", ".csv", ".npy")


class SeriesError(RecordError):
    """A series file cannot be used: unreadable, not numeric, empty or too short."""


@dataclass(frozen=True)
class UCRInfo:
    """Labels of one UCR anomaly-archive series, as 0-based half-open sample ranges.

    ``train_end`` samples are anomaly-free; the anomaly is ``[anomaly_start, anomaly_end)``.
    """

    name: str
    train_end: int
    anomaly_start: int
    anomaly_end: int


def is_series_path(path: str | Path) -> bool:
    """True when ``path`` names a plain series file (by suffix), not a WFDB record."""
    return Path(path).suffix.lower() in SERIES_SUFFIXES


def _read_text(path: Path) -> tuple[np.ndarray, list[str] | None]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SeriesError(f"{path}: empty file")
    header = None
    try:
        float(rows[0][0])
    except ValueError:
        header, rows = rows[0], rows[1:]
    if len(rows) == 1 and len(rows[0]) > 1 and header is None:
        rows = [[v] for v in rows[0]]  # all values on one line (some UCR files)
    try:
        data = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise SeriesError(
            f"{path}: not a numeric series (one value, or one row of values, per line): {exc}"
        ) from exc
    return data, header


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    with open(path, newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t ")
        except csv.Error:
            dialect = csv.excel
        rows = [r for r in csv.reader(fh, dialect) if any(c.strip() for c in r)]
    if not rows:
        raise SeriesError(f"{path}: empty file")
    header = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    try:
        data = np.array(
            [[float(c) if c.strip() else np.nan for c in r] for r in rows], dtype=np.float64
        )
    except ValueError as exc:
        raise SeriesError(
            f"{path}: non-numeric value in CSV ({exc}); keep only numeric columns"
        ) from exc
    # drop a leading index/time column only if the header says so
    if header and header[0].lower() in ("", "index", "time", "t", "timestamp", "sample"):
        data, header = data[:, 1:], header[1:]
    return data, header


def read_series(path: str | Path) -> Record:
    """Read a ``.txt``, ``.csv`` or ``.npy`` series as a :class:`Record` with ``fs = 1.0``.

    Text: one value per line (UCR archive), or whitespace-separated columns per line. CSV: one
    column per channel, optional header row (names become the channel names). NPY: a 1-D array or
    ``(n_samples, n_channels)``. Short NaN gaps (up to 0.5 samples, i.e. none) are an error, so
    missing values must be filled beforehand.

    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.txt"
    >>> _ = p.write_text("1.0\\n2.5\\n-3\\n")
    >>> r = read_series(p)
    >>> r.signal.ravel().tolist(), r.fs, r.leads, r.name
    ([1.0, 2.5, -3.0], 1.0, ['value'], 's')
    """
    path = Path(path)
    if not path.exists():
        raise SeriesError(f"{path}: no such series file")
    suffix = path.suffix.lower()
    header: list[str] | None = None
    if suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise SeriesError(f"{path}: not a readable .npy array: {exc}") from exc
        if not np.issubdtype(data.dtype, np.number):
            raise SeriesError(f"{path}: array dtype {data.dtype} is not numeric")
    elif suffix == ".csv":
        data, header = _read_csv(path)
    elif suffix == ".txt":
        data, header = _read_text(path)
    else:
        raise SeriesError(
            f"{path}: unknown series suffix {suffix!r}; use one of {', '.join(SERIES_SUFFIXES)}"
        )
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
        raise SeriesError(
            f"{path}: expected a 1-D series or (samples, channels), got shape {data.shape}"
        )
    if not np.isfinite(data).all():
        bad = int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
        raise SeriesError(
            f"{path}: missing or infinite value at sample {bad}; fill gaps before scoring"
        )
    n_ch = data.shape[1]
    if header is None or len(header) != n_ch:
        header = ["value"] if n_ch == 1 else [f"ch{i}" for i in range(n_ch)]
    return Record(
        name=path.stem,
        signal=data.astype(np.float32),
        fs=1.0,
        leads=header,
        units=[""] * n_ch,
        path=path,
    )


def write_series(path: str | Path, signal: np.ndarray, names: list[str] | None = None) -> Path:
    """Write ``signal`` ``(n,)`` or ``(n, channels)`` as ``.txt`` (one row per line), ``.csv`` or ``.npy``."""
    path = Path(path)
    data = np.asarray(signal, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, data if data.shape[1] > 1 else data[:, 0])
    elif suffix == ".txt":
        np.savetxt(path, data, fmt="%.9g")
    elif suffix == ".csv":
        names = names or (
            ["value"] if data.shape[1] == 1 else [f"ch{i}" for i in range(data.shape[1])]
        )
        np.savetxt(path, data, fmt="%.9g", delimiter=",", header=",".join(names), comments="")
    else:
        raise SeriesError(
            f"{path}: unknown series suffix {suffix!r}; use one of {', '.join(SERIES_SUFFIXES)}"
        )
    return path


_UCR_NAME = re.compile(r"^(\d+)_UCR_Anomaly_(.+)_(\d+)_(\d+)_(\d+)$")


def ucr_info(path: str | Path) -> UCRInfo | None:
    """Labels parsed from a UCR archive file name, or None if the name does not follow it.

    >>> ucr_info("113_UCR_Anomaly_CIMIS44AirTemperature1_4000_5391_5392.txt")
    UCRInfo(name='113_UCR_Anomaly_CIMIS44AirTemperature1_4000_5391_5392', train_end=4000, anomaly_start=5390, anomaly_end=5392)
    """
    stem = Path(path).name
    for suffix in SERIES_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    m = _UCR_NAME.match(stem)
    if not m:
        return None
    train_end, begin, end = int(m.group(3)), int(m.group(4)), int(m.group(5))
    return UCRInfo(stem, train_end, begin - 1, end)


def read_ucr_labels(folder: str | Path) -> list[tuple[Path, UCRInfo]]:
    """``(path, labels)`` of every series in a UCR folder, from its ``labels.csv`` or file names."""
    folder = Path(folder)
    table = folder / "labels.csv"
    out = []
    if table.exists():
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                p = folder / row["file"]
                out.append(
                    (
                        p,
                        UCRInfo(
                            p.stem,
                            int(row["train_end"]),
                            int(row["anomaly_start"]) - 1,
                            int(row["anomaly_end"]),
                        ),
                    )
                )
        return out
    for p in sorted(folder.glob("*.txt")):
        info = ucr_info(p)
        if info is not None:
            out.append((p, info))
    if not out:
        raise SeriesError(f"{folder}: no labels.csv and no UCR-named .txt files")
    return out


def dominant_period(x: np.ndarray, min_period: int = 4, max_period: int | None = None) -> int:
    """The dominant period of a series in samples, from the first strong autocorrelation peak.

    ``x`` is ``(n,)`` or ``(n, channels)`` (channels are averaged after standardising). The
    autocorrelation is computed by FFT on the linearly detrended series; the period is the lag of
    the highest local maximum between ``min_period`` and ``max_period`` (default ``n // 3``)
    that is at least 0.8 times the best, taking the shortest such lag so harmonics do not win.
    Returns ``min_period`` when the series has no periodicity.

    >>> import numpy as np
    >>> t = np.arange(5000)
    >>> dominant_period(np.sin(2 * np.pi * t / 137) + 0.1 * np.random.default_rng(0).normal(size=5000))
    137
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = len(x)
    max_period = min(max_period or n // 3, n - 1)
    if max_period <= min_period:
        return int(min_period)
    t = np.arange(n)
    acf = np.zeros(n)
    for col in x.T:
        col = col - np.polyval(np.polyfit(t, col, 1), t)
        sd = col.std()
        if sd == 0:
            continue
        col = col / sd
        size = 1 << int(np.ceil(np.log2(2 * n)))
        f = np.fft.rfft(col, size)
        acf += np.fft.irfft(f * np.conj(f), size)[:n] / (n - np.arange(n))
    lags = np.arange(min_period, max_period + 1)
    seg = acf[lags]
    peaks = (seg[1:-1] > seg[:-2]) & (seg[1:-1] >= seg[2:]) & (seg[1:-1] > 0)
    if not peaks.any():
        return int(min_period)
    cand = lags[1:-1][peaks]
    vals = seg[1:-1][peaks]
    good = cand[vals >= 0.8 * vals.max()]
    return int(good.min())


def auto_window(
    x: np.ndarray, periods: float = 2.0, min_window: int = 32, max_window: int = 512
) -> int:
    """A window length (samples) of about ``periods`` dominant periods, clipped to ``min..max``,
    rounded up to a multiple of 8 (so it splits into tokens).

    >>> import numpy as np
    >>> auto_window(np.sin(2 * np.pi * np.arange(4000) / 100))
    200
    """
    period = dominant_period(x, max_period=max_window)
    w = int(np.clip(round(periods * period), min_window, max_window))
    return int(-(-w // 8) * 8)
