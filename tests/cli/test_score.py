"""The scoring contract, end to end as a user runs it: ``ecgstream score --model M --out OUT PATH``.

Records are real WFDB files written by the tests; the model is a real ONNX file scored with ONNX
Runtime (a small PCA model from ``tests/conftest.py``, and the shipped model when present).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHIPPED_MODEL, make_tiny_model, synthetic_ecg, write_record

from ecgstream.cli import main
from ecgstream.runtime.model_file import read_spec

FIELDS = {"fs", "point_score", "window_start", "window_end", "window_score"}


def score(capsys, model: Path, out: Path, *paths: Path | str) -> tuple[int, str]:
    code = main(
        ["score", "--model", str(model), "--out", str(out), "--no-progress", *map(str, paths)]
    )
    return code, capsys.readouterr().err


def load(path: Path) -> dict:
    with np.load(path) as data:
        assert set(data.files) == FIELDS
        return {k: data[k] for k in data.files}


def check_contract(npz: dict, n_samples: int, fs: float, model: Path) -> None:
    """Every field of the contract, at the record's own rate."""
    spec = read_spec(model)
    assert npz["fs"].shape == () and float(npz["fs"]) == fs
    point = npz["point_score"]
    assert point.dtype.kind == "f" and point.shape == (n_samples,)
    # NaN only where no window covered: a run at the start (filter delay) and/or the end
    finite = np.flatnonzero(np.isfinite(point))
    assert finite.size > 0.8 * n_samples
    assert np.isfinite(point[finite[0] : finite[-1] + 1]).all()
    assert finite[0] <= int(0.5 * fs) and finite[-1] >= n_samples - 1 - int(spec.hop_s * fs)
    starts, ends, wscore = npz["window_start"], npz["window_end"], npz["window_score"]
    assert starts.dtype.kind == "i" and ends.dtype.kind == "i"
    assert starts.shape == ends.shape == wscore.shape and len(starts) >= 1
    assert (starts >= 0).all() and (ends <= n_samples).all() and (np.diff(starts) > 0).all()
    interior = (starts > 0) & (ends < n_samples)  # windows not clipped at the record edges
    # a window spans its first to its last model sample: window_s minus one model sample
    span = (spec.window - 1) / spec.fs * fs
    assert np.abs((ends - starts)[interior] - span).max() <= 1
    hop = np.diff(starts[interior])[:-1]  # the last window may be aligned to the end
    if hop.size:
        assert np.abs(hop - spec.hop_s * fs).max() <= 1
    assert np.isfinite(wscore).all()
    # the covered samples are exactly those inside some window
    covered = np.zeros(n_samples, bool)
    for a, b in zip(starts, ends, strict=False):
        covered[a:b] = True
    assert np.isfinite(point[covered]).all()
    assert np.isnan(point[~covered]).all()


def burst(
    signal: np.ndarray, fs: float, at_s: float, width_s: float = 0.2, amp: float = 2.5
) -> np.ndarray:
    """A noise burst of ``amp`` mV at ``at_s`` seconds: a localised anomaly with a known time."""
    out = signal.copy()
    a, b = int(at_s * fs), int((at_s + width_s) * fs)
    out[a:b] += amp * np.random.default_rng(7).standard_normal((b - a, out.shape[1])).astype(
        np.float32
    )
    return out


@pytest.fixture(scope="module")
def model_2lead(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m2") / "tiny-2lead.onnx", leads=("MLII", "V1"))


@pytest.mark.parametrize("fs", [360, 500, 250])
def test_single_record_fields_and_time_alignment(capsys, tmp_path, tiny_model, fs):
    sig = burst(synthetic_ecg(40, fs, heart_rate=70, seed=3, n_leads=2), fs, at_s=23.4)
    rec = write_record(tmp_path / "data", "r1", sig, fs, ["MLII", "V1"])
    code, err = score(capsys, tiny_model, tmp_path / "out", rec)
    assert code == 0, err
    npz = load(tmp_path / "out" / "r1.npz")
    check_contract(npz, len(sig), float(fs), tiny_model)
    # the most anomalous sample lies in the burst (time axis mapped back through resampling + filter delay)
    peak_s = np.nanargmax(npz["point_score"]) / fs
    assert 23.4 - 0.1 <= peak_s <= 23.6 + 0.1
    # and the highest window score belongs to a window containing the burst
    best = np.argmax(npz["window_score"])
    assert npz["window_start"][best] <= int(23.5 * fs) < npz["window_end"][best]


def test_hea_path_and_extension_forms(capsys, tmp_path, tiny_model):
    sig = synthetic_ecg(20, 360, seed=1)
    rec = write_record(tmp_path / "data", "r2", sig, 360, ["MLII"])
    for i, form in enumerate([rec, rec.with_suffix(".hea"), rec.with_suffix(".dat")]):
        code, err = score(capsys, tiny_model, tmp_path / f"out{i}", form)
        assert code == 0, err
    a, b, c = (load(tmp_path / f"out{i}" / "r2.npz") for i in range(3))
    assert np.array_equal(a["point_score"], b["point_score"], equal_nan=True)
    assert np.array_equal(a["point_score"], c["point_score"], equal_nan=True)


def test_folder_with_records_file(capsys, tmp_path, tiny_model, ecg_folder):
    code, err = score(capsys, tiny_model, tmp_path / "out", ecg_folder)
    assert code == 0, err
    assert f"wrote 3 file(s) (one .npz per record) to {tmp_path / 'out'}" in err  # says where
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "syn0.npz",
        "syn1.npz",
        "syn2.npz",
    ]
    for i in range(3):
        check_contract(load(tmp_path / "out" / f"syn{i}.npz"), 60 * 360, 360.0, tiny_model)


def test_records_file_lists_only_some(capsys, tmp_path, tiny_model):
    folder = tmp_path / "data"
    for name in ("a", "b", "c"):
        write_record(folder, name, synthetic_ecg(15, 360, seed=len(name)), 360, ["MLII"])
    (folder / "RECORDS").write_text("c\na\n")
    code, err = score(capsys, tiny_model, tmp_path / "out", folder)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npz", "c.npz"]


def test_folder_with_only_hea_files(capsys, tmp_path, tiny_model):
    folder = tmp_path / "data"
    for i in range(2):
        write_record(folder, f"h{i}", synthetic_ecg(15, 250, seed=i), 250, ["ECG"])
    assert not (folder / "RECORDS").exists()
    code, err = score(capsys, tiny_model, tmp_path / "out", folder)
    assert code == 0, err
    for i in range(2):
        check_contract(load(tmp_path / "out" / f"h{i}.npz"), 15 * 250, 250.0, tiny_model)


def write_ptbxl(folder: Path, n: int = 3) -> list[np.ndarray]:
    """A PTB-XL-style folder: ptbxl_database.csv with filename_lr / filename_hr, 12 leads at 100 and 500 Hz."""
    leads = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    rows = ["ecg_id,patient_id,scp_codes,strat_fold,filename_lr,filename_hr"]
    lead2 = []
    for i in range(1, n + 1):
        hi = synthetic_ecg(10, 500, seed=i, n_leads=12)
        lo = hi[::5]
        write_record(folder / "records100" / "00000", f"{i:05d}_lr", lo, 100, leads)
        write_record(folder / "records500" / "00000", f"{i:05d}_hr", hi, 500, leads)
        rows.append(
            f"{i},{100 + i},\"{{'NORM': 100.0}}\",{i},records100/00000/{i:05d}_lr,records500/00000/{i:05d}_hr"
        )
        lead2.append(lo[:, 1])
    (folder / "ptbxl_database.csv").write_text("\n".join(rows) + "\n")
    return lead2


def test_ptbxl_layout_uses_100hz_files_and_lead_by_name(capsys, tmp_path):
    model = make_tiny_model(tmp_path / "lead-ii.onnx", leads=("II",))
    lead2 = write_ptbxl(tmp_path / "ptbxl", n=2)
    code, err = score(capsys, model, tmp_path / "out", tmp_path / "ptbxl")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["00001_lr.npz", "00002_lr.npz"]
    got = load(tmp_path / "out" / "00002_lr.npz")
    check_contract(got, 1000, 100.0, model)
    # lead II was chosen by name: identical to scoring a record holding lead II only
    write_record(tmp_path / "single", "00002_lr", lead2[1][:, None], 100, ["II"])
    code, err = score(capsys, model, tmp_path / "out_single", tmp_path / "single" / "00002_lr")
    assert code == 0, err
    ref = load(tmp_path / "out_single" / "00002_lr.npz")
    np.testing.assert_array_equal(got["point_score"], ref["point_score"])
    np.testing.assert_array_equal(got["window_score"], ref["window_score"])


def test_single_lead_model_falls_back_to_lead_zero(capsys, tmp_path, tiny_model):
    sig = np.concatenate(
        [synthetic_ecg(20, 360, seed=4), synthetic_ecg(20, 360, seed=5) * 0.3], axis=1
    )
    write_record(tmp_path / "two", "x", sig, 360, ["ECG1", "ECG2"])  # no lead named MLII
    write_record(tmp_path / "one", "x", sig[:, :1], 360, ["ECG1"])
    assert score(capsys, tiny_model, tmp_path / "o2", tmp_path / "two" / "x")[0] == 0
    assert score(capsys, tiny_model, tmp_path / "o1", tmp_path / "one" / "x")[0] == 0
    a, b = load(tmp_path / "o2" / "x.npz"), load(tmp_path / "o1" / "x.npz")
    np.testing.assert_array_equal(a["point_score"], b["point_score"])


def test_single_lead_model_prefers_matching_lead_over_lead_zero(capsys, tmp_path, tiny_model):
    v1 = synthetic_ecg(20, 360, seed=8) * 0.4
    mlii = synthetic_ecg(20, 360, seed=9)
    write_record(tmp_path / "d", "x", np.concatenate([v1, mlii], axis=1), 360, ["V1", "MLII"])
    write_record(tmp_path / "ref", "x", mlii, 360, ["MLII"])
    assert score(capsys, tiny_model, tmp_path / "o", tmp_path / "d" / "x")[0] == 0
    assert score(capsys, tiny_model, tmp_path / "r", tmp_path / "ref" / "x")[0] == 0
    a, b = load(tmp_path / "o" / "x.npz"), load(tmp_path / "r" / "x.npz")
    np.testing.assert_array_equal(a["point_score"], b["point_score"])


def test_multilead_model_matches_leads_by_name_in_any_order(capsys, tmp_path, model_2lead):
    mlii, v1, v5 = (synthetic_ecg(20, 360, seed=s) for s in (11, 12, 13))
    write_record(
        tmp_path / "d", "x", np.concatenate([v5, v1, mlii], axis=1), 360, ["V5", "v1", "MLII"]
    )
    write_record(tmp_path / "ref", "x", np.concatenate([mlii, v1], axis=1), 360, ["MLII", "V1"])
    assert score(capsys, model_2lead, tmp_path / "o", tmp_path / "d" / "x")[0] == 0
    assert score(capsys, model_2lead, tmp_path / "r", tmp_path / "ref" / "x")[0] == 0
    a, b = load(tmp_path / "o" / "x.npz"), load(tmp_path / "r" / "x.npz")
    check_contract(a, 20 * 360, 360.0, model_2lead)
    np.testing.assert_array_equal(a["point_score"], b["point_score"])


def test_multilead_model_missing_lead_is_skipped_with_reason(capsys, tmp_path, model_2lead):
    write_record(tmp_path / "d", "x", synthetic_ecg(20, 360, n_leads=2), 360, ["MLII", "V5"])
    code, err = score(capsys, model_2lead, tmp_path / "o", tmp_path / "d" / "x")
    assert code == 1
    assert "V1" in err and "skipped" in err
    assert not (tmp_path / "o" / "x.npz").exists()


def test_500hz_record_with_100hz_model_maps_back_to_500hz(capsys, tmp_path, tiny_model):
    assert read_spec(tiny_model).fs == 100.0
    sig = burst(synthetic_ecg(30, 500, seed=21), 500, at_s=12.0)
    write_record(tmp_path / "d", "hr", sig, 500, ["II"])
    assert score(capsys, tiny_model, tmp_path / "o", tmp_path / "d" / "hr")[0] == 0
    npz = load(tmp_path / "o" / "hr.npz")
    check_contract(npz, 30 * 500, 500.0, tiny_model)
    assert 11.9 <= np.nanargmax(npz["point_score"]) / 500 <= 12.3


def test_short_record_skipped_others_scored(capsys, tmp_path, tiny_model):
    folder = tmp_path / "d"
    write_record(folder, "long", synthetic_ecg(10, 360), 360, ["MLII"])
    write_record(folder, "short", synthetic_ecg(2, 360), 360, ["MLII"])  # < one 2.5 s window
    code, err = score(capsys, tiny_model, tmp_path / "o", folder)
    assert code == 0
    assert "short" in err and "shorter than one" in err and "1 of 2 records skipped" in err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["long.npz"]
    code, err = score(capsys, tiny_model, tmp_path / "o2", folder / "short")
    assert code == 1


def test_errors_name_the_problem(capsys, tmp_path, tiny_model):
    code, err = score(capsys, tmp_path / "nope.onnx", tmp_path / "o", tmp_path)
    assert code == 2 and "nope.onnx" in err and "Traceback" not in err
    code, err = score(capsys, tiny_model, tmp_path / "o", tmp_path / "missing" / "rec")
    assert code == 2 and "no such record" in err
    (tmp_path / "empty").mkdir()
    code, err = score(capsys, tiny_model, tmp_path / "o", tmp_path / "empty")
    assert code == 2 and "no RECORDS file" in err
    not_ours = tmp_path / "plain.onnx"
    not_ours.write_bytes(b"not an onnx file")
    code, err = score(capsys, not_ours, tmp_path / "o", tmp_path)
    assert code == 2 and "not a loadable ONNX model" in err


def test_console_script_as_a_user_runs_it(tmp_path, tiny_model):
    rec = write_record(tmp_path / "d", "u1", synthetic_ecg(12, 360), 360, ["MLII"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecgstream",
            "score",
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "o"),
            str(rec),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    check_contract(load(tmp_path / "o" / "u1.npz"), 12 * 360, 360.0, tiny_model)
    helptext = subprocess.run(
        [sys.executable, "-m", "ecgstream", "score", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "example" in helptext and "--model" in helptext


@pytest.mark.skipif(not SHIPPED_MODEL.exists(), reason="no shipped model in models/")
def test_shipped_model_scores_a_record(capsys, tmp_path):
    spec = read_spec(SHIPPED_MODEL)
    sig = synthetic_ecg(max(30.0, 3 * spec.window_s), 360, seed=30, n_leads=2)
    write_record(tmp_path / "d", "s1", sig, 360, ["MLII", "V1"])
    code, err = score(capsys, SHIPPED_MODEL, tmp_path / "o", tmp_path / "d" / "s1")
    assert code == 0, err
    check_contract(load(tmp_path / "o" / "s1.npz"), len(sig), 360.0, SHIPPED_MODEL)


#: modules ``ecgstream score`` must not load: each costs start-up time (scipy.signal alone
#: most of a second) and none is needed to score a WFDB record with ONNX Runtime
NOT_FOR_SCORE = ("torch", "matplotlib", "pandas", "kafka", "scipy.signal", "wfdb", "tqdm")

PROBE = """
import sys
from ecgstream.cli import main
try:
    code = main(sys.argv[1:])
finally:  # --help exits inside main
    print("loaded:" + ",".join(m for m in {heavy!r} if m in sys.modules))
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["score"]])
def test_score_and_help_do_not_import_heavy_modules(tmp_path, tiny_model, argv):
    if argv == ["score"]:
        rec = write_record(tmp_path / "d", "p1", synthetic_ecg(12, 360, n_leads=2), 360, ["MLII", "V1"])  # fmt: skip
        argv = ["score", "--model", str(tiny_model), "--out", str(tmp_path / "o"), str(rec)]
    heavy = NOT_FOR_SCORE if argv[0] == "score" else ("torch", "matplotlib", "pandas", "kafka")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=heavy), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "loaded:"  # none of them was imported
    if "--out" in argv:
        assert (tmp_path / "o" / "p1.npz").exists()
