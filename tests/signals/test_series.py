"""Plain series files (UCR text, CSV, NPY), UCR labels and automatic window length."""

from __future__ import annotations

import numpy as np
import pytest

from ecgstream.signals.records import RecordError
from ecgstream.signals.series import (
    SeriesError,
    auto_window,
    dominant_period,
    is_series_path,
    read_series,
    read_ucr_labels,
    ucr_info,
    write_series,
)


def test_ucr_text_one_value_per_line(tmp_path):
    p = tmp_path / "001_UCR_Anomaly_Demo_100_150_160.txt"
    p.write_text("\n".join(f"{v:.3f}" for v in np.arange(300) / 10) + "\n")
    rec = read_series(p)
    assert rec.fs == 1.0 and rec.signal.shape == (300, 1) and rec.leads == ["value"]
    assert rec.signal[5, 0] == pytest.approx(0.5)
    info = ucr_info(p)
    assert (info.train_end, info.anomaly_start, info.anomaly_end) == (100, 149, 160)


def test_text_with_several_columns_and_values_on_one_line(tmp_path):
    cols = tmp_path / "cols.txt"
    cols.write_text("1 2\n3 4\n5 6\n")
    assert read_series(cols).signal.tolist() == [[1, 2], [3, 4], [5, 6]]
    one_line = tmp_path / "line.txt"
    one_line.write_text("  1.5  2.5  3.5 \n")
    assert read_series(one_line).signal[:, 0].tolist() == [1.5, 2.5, 3.5]


def test_csv_header_names_channels_and_drops_time_column(tmp_path):
    p = tmp_path / "sensor.csv"
    p.write_text("time,accel_x,accel_y\n0,1.0,2.0\n1,1.5,2.5\n2,2.0,3.0\n")
    rec = read_series(p)
    assert rec.leads == ["accel_x", "accel_y"] and rec.signal.shape == (3, 2)
    bare = tmp_path / "bare.csv"
    bare.write_text("1;2\n3;4\n")
    assert read_series(bare).signal.tolist() == [[1, 2], [3, 4]]


def test_npy_and_round_trips(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    for suffix in (".npy", ".csv", ".txt"):
        path = write_series(tmp_path / f"s{suffix}", x)
        assert np.allclose(read_series(path).signal, x, atol=1e-6), suffix
    write_series(tmp_path / "one.npy", x[:, 0])
    assert read_series(tmp_path / "one.npy").signal.shape == (50, 1)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.txt", "1\n2\nabc\n3\n", "not a numeric series"),
        ("gap.csv", "a,b\n1,2\n,3\n", "missing or infinite value at sample 1"),
        ("empty.txt", "\n\n", "empty file"),
        ("x.parquet", "", "unknown series suffix"),
    ],
)
def test_errors_name_file_and_problem(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(SeriesError, match=message) as exc:
        read_series(p)
    assert isinstance(exc.value, RecordError)  # the score CLI reports it and goes on
    assert name in str(exc.value)


def test_is_series_path():
    assert is_series_path("a/b.TXT") and is_series_path("x.npy") and not is_series_path("mitdb/100")


def test_read_ucr_labels_from_csv_or_names(tmp_path):
    (tmp_path / "005_UCR_Anomaly_A_10_20_25.txt").write_text("0\n" * 40)
    assert read_ucr_labels(tmp_path)[0][1].anomaly_start == 19
    (tmp_path / "labels.csv").write_text(
        "file,length,train_end,anomaly_start,anomaly_end\n005_UCR_Anomaly_A_10_20_25.txt,40,10,21,25\n"
    )
    path, info = read_ucr_labels(tmp_path)[0]
    assert path.exists() and (info.train_end, info.anomaly_start, info.anomaly_end) == (10, 20, 25)


@pytest.mark.parametrize("period", [17, 60, 233])
def test_dominant_period_of_noisy_periodic_signals(period):
    rng = np.random.default_rng(period)
    t = np.arange(20 * period)
    pulse = (np.sin(2 * np.pi * t / period) > 0.9).astype(float)  # harmonic-rich
    x = pulse + 0.5 * np.sin(2 * np.pi * t / period) + 0.2 * rng.normal(size=len(t)) + 1e-3 * t
    assert abs(dominant_period(x) - period) <= 1
    assert abs(dominant_period(np.stack([x, -x], 1)) - period) <= 1


def test_auto_window_bounds_and_multiple_of_eight():
    t = np.arange(5000)
    assert auto_window(np.sin(2 * np.pi * t / 100)) == 200
    assert auto_window(np.sin(2 * np.pi * t / 5)) == 32  # clipped to min_window
    assert auto_window(np.zeros(1000)) == 32  # no periodicity
    w = auto_window(np.sin(2 * np.pi * t / 1000), max_window=512)
    assert w <= 512 and w % 8 == 0
