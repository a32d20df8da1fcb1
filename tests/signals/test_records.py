"""Reading WFDB records written by the test: layouts, leads, units and the error cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_ecg, write_record

from ecgstream.signals.records import (
    RecordError,
    _parse_header,
    fill_short_nan_runs,
    lead_indices,
    list_records,
    read_record,
    select_leads,
)


def test_read_record_round_trip(tmp_path):
    sig = synthetic_ecg(5, 360, seed=2, n_leads=2)
    sig[:, 1] *= 0.5
    path = write_record(tmp_path, "r", sig, 360, ["MLII", "V1"])
    rec = read_record(path)
    assert (
        rec.name == "r"
        and rec.fs == 360.0
        and rec.leads == ["MLII", "V1"]
        and rec.units == ["mV", "mV"]
    )
    assert rec.signal.shape == (1800, 2) and rec.signal.dtype == np.float32
    assert rec.duration_s == pytest.approx(5.0)
    # format 16 with gain 200/mV: exact to half an ADC step
    np.testing.assert_allclose(rec.signal, sig, atol=0.5 / 200 + 1e-6)
    for form in (path.with_suffix(".hea"), path.with_suffix(".dat"), str(path)):
        np.testing.assert_array_equal(read_record(form).signal, rec.signal)


def test_read_record_selects_leads_by_name(tmp_path):
    sig = np.stack([np.full(500, v, np.float32) for v in (0.1, 0.2, 0.3)], axis=1)
    path = write_record(tmp_path, "r", sig, 250, ["I", "II", "V1"])
    rec = read_record(path, ["v1", "ii"])
    assert rec.leads == ["V1", "II"]
    np.testing.assert_allclose(rec.signal[0], [0.3, 0.2], atol=1e-2)


def test_unknown_leads_raise_with_names(tmp_path):
    path = write_record(tmp_path, "r", synthetic_ecg(3, 250, n_leads=2), 250, ["I", "II"])
    with pytest.raises(RecordError, match=r"V5.*I', 'II"):
        read_record(path, ["II", "V5"])


def test_single_lead_falls_back_to_lead_zero():
    assert lead_indices(["ECG1", "ECG2"], ["MLII"]) == [0]
    assert lead_indices(["V1", "MLII"], ["mlii"]) == [1]
    assert lead_indices(["V1", "MLII", "V5"], ["V5", "V1"]) == [2, 0]
    # a modified limb lead stands for its standard lead, both ways, but an exact name wins
    twelve = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert lead_indices(twelve, ["MLII"]) == [1]
    assert lead_indices(["MLII", "V1"], ["II", "V1"]) == [0, 1]
    assert lead_indices(["II", "MLII"], ["MLII"]) == [1]
    with pytest.raises(RecordError, match="V7"):
        lead_indices(twelve, ["MLII", "V7"])


def test_select_leads_keeps_units_and_copies(tmp_path):
    path = write_record(tmp_path, "r", synthetic_ecg(3, 250, n_leads=2), 250, ["I", "II"])
    rec = read_record(path)
    sub = select_leads(rec, ["II"])
    assert sub.leads == ["II"] and sub.units == ["mV"] and sub.signal.flags["C_CONTIGUOUS"]
    sub.signal[:] = 0
    assert rec.signal.any()


def test_missing_files(tmp_path):
    with pytest.raises(RecordError, match="not found"):
        read_record(tmp_path / "absent")
    path = write_record(tmp_path, "r", synthetic_ecg(3, 250), 250, ["II"])
    path.with_suffix(".dat").unlink()
    with pytest.raises(RecordError, match="r"):
        read_record(path)
    with pytest.raises(RecordError, match="no such record"):
        list_records(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="no RECORDS file"):
        list_records(tmp_path / "empty")


def test_corrupt_header_is_a_record_error(tmp_path):
    (tmp_path / "bad.hea").write_text("this is not a header\n")
    with pytest.raises(RecordError, match="bad"):
        read_record(tmp_path / "bad")


def test_list_records_layouts(tmp_path):
    for name in ("b", "a"):
        write_record(tmp_path / "hea", name, synthetic_ecg(2, 250), 250, ["II"])
    assert [p.name for p in list_records(tmp_path / "hea")] == ["a", "b"]
    (tmp_path / "hea" / "RECORDS").write_text("b\n\n")
    assert [p.name for p in list_records(tmp_path / "hea")] == ["b"]
    mixed = list_records(tmp_path / "hea", tmp_path / "hea" / "a.hea")
    assert [p.name for p in mixed] == ["b", "a"]


def test_short_nan_runs_are_bridged(tmp_path):
    sig = synthetic_ecg(10, 360, seed=5)
    sig[1000:1090] = np.nan  # 0.25 s
    path = write_record(tmp_path, "gap", sig, 360, ["MLII"])
    rec = read_record(path)
    assert not np.isnan(rec.signal).any()
    seg = rec.signal[999:1091, 0]
    np.testing.assert_allclose(seg, np.linspace(seg[0], seg[-1], len(seg)), atol=1e-5)


def test_long_nan_run_raises_with_position(tmp_path):
    sig = synthetic_ecg(10, 360, seed=6)
    sig[2000 : 2000 + 360] = np.nan  # 1 s
    path = write_record(tmp_path, "hole", sig, 360, ["MLII"])
    with pytest.raises(
        RecordError, match=r"360 missing samples \(1.00 s\) starting at sample 2000"
    ):
        read_record(path)


def test_all_nan_lead_raises():
    x = np.zeros((100, 2), np.float32)
    x[:, 1] = np.nan
    with pytest.raises(RecordError, match="lead 1 has no valid samples"):
        fill_short_nan_runs(x, 100.0)


MITDB = Path("/work/shared/data/mitdb-ds1")
PTBXL = Path("/work/shared/data/ptbxl-dev")


def wfdb_samples(path: Path) -> np.ndarray:
    import wfdb

    return np.asarray(wfdb.rdrecord(str(path)).p_signal, dtype=np.float32)


def write_digital(folder: Path, name: str, digital: np.ndarray, fmt: str, gain, baseline, **kw) -> Path:  # fmt: skip
    """A WFDB record of the given digital samples, written by wfdb in format ``fmt``."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    n_sig = digital.shape[1]
    wfdb.wrsamp(name, fs=kw.get("fs", 360), units=kw.get("units", ["mV"] * n_sig),
                sig_name=kw.get("leads", [f"L{i}" for i in range(n_sig)]), d_signal=digital,
                fmt=[fmt] * n_sig, adc_gain=gain, baseline=baseline, write_dir=str(folder))  # fmt: skip
    return folder / name


@pytest.mark.parametrize("fmt", ["212", "16"])
@pytest.mark.parametrize("n_samples", [1000, 999])  # an odd count ends format 212 mid-triplet
def test_numpy_reader_equals_wfdb(tmp_path, fmt, n_samples):
    lim = 2047 if fmt == "212" else 32767
    rng = np.random.default_rng(n_samples)
    digital = rng.integers(-lim, lim + 1, size=(n_samples, 3)).astype(np.int32)
    digital[[0, -1], 0] = [-lim, lim]
    digital[10:20, 1] = -lim - 1  # the format's "missing sample" value: NaN, bridged
    path = write_digital(tmp_path, "d", digital, fmt, [200.0, 1000.0, 31.5], [1024, 0, -7],
                         units=["mV", "mV", "uV"], leads=["MLII", "V1", "ECG lead II"])  # fmt: skip
    assert _parse_header(path.with_suffix(".hea").read_text()) is not None  # read with numpy
    rec = read_record(path)
    expected = fill_short_nan_runs(wfdb_samples(path), 360.0)
    assert rec.signal.dtype == np.float32 and rec.signal.shape == (n_samples, 3)
    np.testing.assert_array_equal(rec.signal, expected)
    assert rec.leads == ["MLII", "V1", "ECG lead II"] and rec.units == ["mV", "mV", "uV"]
    assert rec.fs == 360.0
    np.testing.assert_allclose(rec.signal[0, 0], (-lim - 1024) / 200.0)


def test_other_formats_are_read_by_wfdb(tmp_path):
    digital = np.random.default_rng(1).integers(-100, 100, size=(500, 2)).astype(np.int32)
    path = write_digital(tmp_path, "f80", digital, "80", [100.0, 100.0], [0, 0])
    assert _parse_header(path.with_suffix(".hea").read_text()) is None
    np.testing.assert_array_equal(read_record(path).signal, wfdb_samples(path))


def test_short_signal_file_is_a_record_error(tmp_path):
    path = write_record(tmp_path, "t", synthetic_ecg(3, 250), 250, ["II"])
    dat = path.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:100])
    with pytest.raises(RecordError, match=r"t\.dat has 100 bytes"):
        read_record(path)


@pytest.mark.skipif(not MITDB.exists() or not PTBXL.exists(), reason="no real data in shared/")
def test_numpy_reader_equals_wfdb_on_real_records():
    paths = list_records(MITDB) + sorted(PTBXL.glob("records*/*/*.hea"))[::50]
    for path in paths:
        path = path.with_suffix("") if path.suffix == ".hea" else path
        assert _parse_header(path.with_suffix(".hea").read_text()) is not None
        np.testing.assert_array_equal(
            read_record(path).signal, wfdb_samples(path), err_msg=str(path)
        )
