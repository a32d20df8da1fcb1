"""The evaluation protocol and ``ecgstream evaluate``, end to end on annotated WFDB records written here.

Records are synthetic ECG (neurokit2) in which some beats carry a large 25 Hz oscillation
(annotated ``V``); the others are annotated ``N``. A model fitted on
normal windows must rank the altered beats high; random scores must not.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_ecg, write_record

from ecgstream.cli import main
from ecgstream.evaluation.baselines import PCABaseline, export_pca, fit_pca, fit_pca_on_records
from ecgstream.evaluation.protocol import (
    LOCALISATION_CONTEXT_S,
    ModelSource,
    NpzSource,
    evaluate,
    load_npz,
    synthetic_excerpts,
)
from ecgstream.runtime.model_file import ModelSpec, read_spec
from ecgstream.runtime.scorer import Scorer
from ecgstream.signals.records import RecordError, read_record
from ecgstream.signals.synth import inject_1d

FS = 360


def annotated_record(folder: Path, name: str, seed: int, abnormal_frac: float = 0.15) -> Path:
    import neurokit2 as nk
    import wfdb

    sig = synthetic_ecg(60, FS, heart_rate=70, seed=seed)
    _, info = nk.ecg_peaks(sig[:, 0], sampling_rate=FS)
    peaks = np.asarray(info["ECG_R_Peaks"])
    peaks = peaks[(peaks > FS) & (peaks < len(sig) - FS)]
    rng = np.random.default_rng(seed)
    abnormal = rng.random(len(peaks)) < abnormal_frac
    half = int(0.12 * FS)
    wobble = 1.5 * np.sin(2 * np.pi * 25 * np.arange(2 * half) / FS)
    for p in peaks[abnormal]:
        sig[p - half : p + half, 0] += wobble
    path = write_record(folder, name, sig, FS, ["MLII"])
    wfdb.wrann(name, "atr", peaks, np.where(abnormal, "V", "N"), fs=FS, write_dir=str(folder))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    train = [
        annotated_record(root / "train", f"t{i}", seed=40 + i, abnormal_frac=0.0) for i in range(2)
    ]
    test = [annotated_record(root / "test", f"e{i}", seed=50 + i) for i in range(2)]
    (root / "test" / "RECORDS").write_text("e0\ne1\n")
    spec = ModelSpec(name="pca", version="1", kind="pca", leads=["MLII"], window=250, hop=125)
    model = fit_pca_on_records(train, spec, root / "pca.onnx", n_components=6)
    return root, test, model


def test_pca_onnx_equals_numpy_and_reconstructs_its_subspace(tmp_path):
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 2 * 50))
    windows = (rng.normal(size=(400, 3)) @ basis).reshape(
        400, 2, 50
    ) + 0.7  # per-window DC is removed
    model = fit_pca(windows, n_components=3)
    point, score = model.score_windows(windows)
    assert point.shape == (400, 50) and score.shape == (400,)
    assert float(point.max()) < 1e-6 * float((windows**2).mean())
    assert model.explained_variance_ratio_.sum() == pytest.approx(1.0, abs=1e-6)
    odd = windows[:5] + rng.normal(size=(5, 2, 50))
    spec = ModelSpec(name="p", version="1", kind="x", leads=["A", "B"], window=50, hop=25)
    path = export_pca(model, tmp_path / "p.onnx", spec)
    assert read_spec(path).kind == "pca"
    p_onnx, s_onnx = Scorer(path).score_windows(odd.astype(np.float32))
    p_np, s_np = model.score_windows(odd)
    np.testing.assert_allclose(p_onnx, p_np, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s_onnx, s_np, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        export_pca(
            model,
            tmp_path / "q.onnx",
            ModelSpec(name="p", version="1", kind="x", leads=["A"], window=50, hop=25),
        )
    with pytest.raises(ValueError, match="at least 2"):
        fit_pca(windows[:1])
    assert isinstance(model, PCABaseline)


def test_model_ranks_altered_beats_high(data):
    root, test, model = data
    report, collected, example = evaluate([ModelSource(model)], test, progress=False)
    entry = report["sources"]["pca-baseline"]
    assert entry["beat"]["auroc"] > 0.9
    assert entry["beat"]["ap"] > entry["beat"]["ap_chance"] + 0.3
    assert entry["beat"]["n"] == sum(v["n_beats"] for v in entry["per_record"].values())
    assert entry["window_10s"]["n"] >= 8
    assert "record" not in entry and "localisation" not in entry
    most = max(entry["per_record"], key=lambda r: entry["per_record"][r]["n_abnormal_beats"])
    assert example is not None and example.record.name == most
    assert entry["model"]["sha256"] and report["protocol"]["beat_half_width_s"] == 0.15


def test_random_scores_are_near_chance(data, tmp_path):
    root, test, _ = data
    rng = np.random.default_rng(1)
    for path in test:
        n = 60 * FS
        np.savez(
            tmp_path / f"{path.name}.npz",
            fs=float(FS),
            point_score=rng.random(n),
            window_start=np.array([0]),
            window_end=np.array([n]),
            window_score=np.array([0.5]),
        )
    report, _, _ = evaluate([NpzSource(tmp_path, "random")], test, progress=False)
    assert abs(report["sources"]["random"]["beat"]["auroc"] - 0.5) < 0.12


def test_score_files_and_model_give_identical_figures(data, tmp_path, capsys):
    root, test, model = data
    assert (
        main(
            [
                "score",
                "--model",
                str(model),
                "--out",
                str(tmp_path / "s"),
                "--no-progress",
                str(root / "test"),
            ]
        )
        == 0
    )
    a, _, _ = evaluate([ModelSource(model)], test, progress=False)
    b, _, _ = evaluate([NpzSource(tmp_path / "s", "files")], test, progress=False)
    for key in ("beat", "window_10s"):
        assert a["sources"]["pca-baseline"][key] == b["sources"]["files"][key]


def test_npz_source_checks_length_and_rate(data, tmp_path):
    root, test, model = data
    scores = Scorer(model).score_record(read_record(test[0]))
    scores.point_score = scores.point_score[:-5]
    scores.save_npz(tmp_path / "e0.npz")
    report, _, _ = evaluate([NpzSource(tmp_path)], test[:1], progress=False)
    assert "point scores" in report["skipped"][str(test[0])]
    with pytest.raises(RecordError, match="lacks"):
        np.savez(tmp_path / "bad.npz", fs=1.0)
        load_npz(tmp_path / "bad.npz")


def test_synthetic_excerpts_cut_inject_and_repeat_with_the_seed():
    signal = np.random.default_rng(0).normal(size=(3000, 2)).astype(np.float32)
    inject = partial(inject_1d, kinds=["invert"], min_len_s=1, max_len_s=2)

    def draw(seed: int, excerpt_s: float = 10.0) -> list:
        rng = np.random.default_rng(seed)
        return list(synthetic_excerpts(signal, 100.0, rng, 4, excerpt_s, inject))

    cuts = draw(1)
    assert len(cuts) == 4 and len({start for start, *_ in cuts}) == 4
    for start, out, mask, info in cuts:
        assert out.shape == (1000, 2) and mask.dtype == bool and 0 <= start <= 2000
        clean = signal[start : start + 1000]
        np.testing.assert_array_equal(out[~mask], clean[~mask])  # only the mask changed
        assert mask.sum() == info["n_masked"] >= 100 and not np.allclose(out[mask], clean[mask])
    again = draw(1)
    assert [c[0] for c in again] == [c[0] for c in cuts]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(again, cuts, strict=True))
    assert [c[0] for c in draw(2)] != [c[0] for c in cuts]
    # an excerpt longer than the signal is the whole signal
    assert all(start == 0 and len(mask) == 3000 for start, _, mask, _ in draw(1, excerpt_s=60.0))


def test_localisation_on_synthetic_anomalies(data):
    root, test, model = data
    noise = partial(inject_1d, kinds=["noise"], strength=3.0)
    report, collected, _ = evaluate(
        [ModelSource(model)], test, localisation=3, excerpt_s=20, inject=noise, progress=False
    )
    loc = report["sources"]["pca-baseline"]["localisation"]
    assert loc["n_excerpts"] == 6 and loc["auroc"] > 0.7 and list(loc["per_kind"]) == ["noise"]
    low, high = loc["auroc_interval_95"]  # over the 6 excerpts
    assert low <= loc["auroc"] <= high and high - low > 0
    # the first excerpt is kept for the plot: its anomaly and 4 s either side, as scored
    example = collected["pca-baseline"].localisation_examples["noise"]
    first = collected["pca-baseline"].per_record[example.record]["excerpts"][0]
    assert example.kind == "noise" and example.mask.sum() == first["anomalous"]
    inside = np.flatnonzero(example.mask)
    pad = int(LOCALISATION_CONTEXT_S * example.fs)
    assert inside[0] == min(pad, inside[0] + example.start - first["start"])
    assert len(example.signal) == len(example.mask) == len(example.score)
    record = read_record(next(p for p in test if Path(p).name == example.record))
    clean = record.signal[example.start : example.start + len(example.signal), 0]
    np.testing.assert_array_equal(example.signal[~example.mask], clean[~example.mask])
    assert not np.allclose(example.signal[example.mask], clean[example.mask])
    assert np.nanmean(example.score[example.mask]) > np.nanmedian(example.score[~example.mask])
    # all kinds by default, seeded: the same anomalies again
    runs = [
        evaluate([ModelSource(model)], test, localisation=3, excerpt_s=20, seed=3, progress=False)[
            0
        ]
        for _ in range(2)
    ]
    loc = runs[0]["sources"]["pca-baseline"]["localisation"]
    assert set(loc["per_kind"]) <= {
        "amplitude",
        "wander",
        "noise",
        "flat",
        "invert",
        "warp",
        "paste",
    }
    assert runs[1]["sources"]["pca-baseline"]["localisation"] == loc


def test_evaluate_cli_writes_report_and_plots(data, tmp_path, capsys):
    root, _, model = data
    out = tmp_path / "ev"
    code = main(
        [
            "evaluate",
            "--model",
            str(model),
            "--model",
            str(model),
            "--localisation",
            "1",
            "--excerpt-s",
            "15",
            "--out",
            str(out),
            "--no-progress",
            str(root / "test"),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "beat AUROC" in text and "pca-baseline#2" in text
    # the per-kind localisation table: one column per kind drawn, one row per source
    report = json.loads((out / "report.json").read_text())
    kinds = sorted(report["sources"]["pca-baseline#1"]["localisation"]["per_kind"])
    lines = text.splitlines()
    at = lines.index("localisation AUROC per kind of synthetic anomaly:")
    assert lines[at + 1].split()[1:] == [k[:10] for k in kinds]
    assert [line.split()[0] for line in lines[at + 2 : at + 4]] == [
        "pca-baseline#1",
        "pca-baseline#2",
    ]
    per_kind = report["sources"]["pca-baseline#1"]["localisation"]["per_kind"]
    assert lines[at + 2].split()[1:] == [f"{per_kind[k]['auroc']:.3f}" for k in kinds]
    assert set(report["sources"]) == {"pca-baseline#1", "pca-baseline#2"}
    # the share of the model's own windows over its default threshold, recomputed here
    from ecgstream.evaluation.protocol import beats_of
    from ecgstream.signals.labels import window_labels

    scorer = Scorer(model)
    labels, scores = [], []
    for name in ("e0", "e1"):
        rs = scorer.score_record(read_record(root / "test" / name))
        label = window_labels(beats_of(root / "test" / name), rs.window_start, rs.window_end)
        keep = (label >= 0) & np.isfinite(rs.window_score)
        labels.append(label[keep])
        scores.append(rs.window_score[keep])
    label, score = np.concatenate(labels), np.concatenate(scores)
    alerts = report["sources"]["pca-baseline#1"]["alerts"]
    assert alerts["threshold"] == scorer.spec.threshold
    assert (alerts["normal_windows"], alerts["abnormal_windows"]) == (
        int((label == 0).sum()),
        int((label == 1).sum()),
    )
    assert alerts["normal_windows"] > 0 and alerts["abnormal_windows"] > 0
    over = score >= scorer.spec.threshold
    assert alerts["normal_over"] == pytest.approx(over[label == 0].mean())
    assert alerts["abnormal_over"] == pytest.approx(over[label == 1].mean())
    from ecgstream.evaluation.metrics import auroc

    assert alerts["auroc"] == pytest.approx(auroc(label, score))
    half = np.median(score[label == 1])
    assert alerts["half_threshold"] == pytest.approx(half)
    assert (score[label == 1] >= alerts["half_threshold"]).mean() >= 0.5
    assert alerts["normal_over_at_half"] == pytest.approx((score[label == 0] >= half).mean())
    line = next(x for x in lines if x.startswith("pca-baseline#1") and "threshold" in x)
    assert f"{100 * alerts['normal_over']:.1f} % of {alerts['normal_windows']} normal" in line
    assert report["plots"] == ["roc.png", "example.png", "localisation.png"]
    for name in report["plots"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_cli_kinds_and_strength(data, tmp_path, capsys):
    """--kinds limits the synthetic anomalies, --strength scales the additive ones; the same seed
    draws the same excerpts and regions, so only the size of the burst differs."""
    root, _, model = data
    aurocs = {}
    for strength in ("0.1", "3"):
        out = tmp_path / strength
        argv = ["evaluate", "--model", str(model), "--localisation", "3", "--excerpt-s", "20"]
        argv += ["--kinds", "noise", "--strength", strength, "--no-plots", "--no-progress"]
        assert main(argv + ["--out", str(out), str(root / "test")]) == 0
        report = json.loads((out / "report.json").read_text())
        anomalies = report["protocol"]["localisation_anomalies"]
        assert anomalies == {"injector": "perlin", "kinds": ["noise"], "strength": float(strength)}
        loc = report["sources"]["pca-baseline"]["localisation"]
        assert list(loc["per_kind"]) == ["noise"] and loc["n_excerpts"] == 6
        aurocs[strength] = (loc["n_positive"], loc["auroc"])
    (n_weak, weak), (n_strong, strong) = aurocs["0.1"], aurocs["3"]
    assert n_weak == n_strong and strong > weak + 0.1
    capsys.readouterr()


def test_evaluate_cli_errors(tmp_path, capsys):
    assert main(["evaluate", "--out", str(tmp_path), str(tmp_path)]) == 2
    assert "--model or --scores" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--scores",
                str(tmp_path),
                "--localisation",
                "2",
                "--out",
                str(tmp_path),
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "needs a --model" in capsys.readouterr().err
    model = ["evaluate", "--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path)]
    assert main(model + ["--kinds", "noise", str(tmp_path)]) == 2
    assert "of --localisation N" in capsys.readouterr().err
    assert main(model + ["--localisation", "2", "--kinds", "noise,boom", str(tmp_path)]) == 2
    assert "unknown ['boom']" in capsys.readouterr().err
    assert main(model + ["--localisation", "2", "--strength", "0", str(tmp_path)]) == 2
    assert "--strength must be > 0" in capsys.readouterr().err


def test_evaluate_cli_ptbxl_folds_record_auroc(tmp_path, capsys):
    from conftest import make_tiny_model

    root = tmp_path / "ptbxl"
    (root).mkdir()
    (root / "scp_statements.csv").write_text(
        ",diagnostic,diagnostic_class\nNORM,1.0,NORM\nIMI,1.0,MI\n"
    )
    rows = ["ecg_id,patient_id,scp_codes,strat_fold,filename_lr,filename_hr"]
    specs = [(1, "NORM", 0.0), (7, "NORM", 0.0), (7, "IMI", 1.0), (8, "NORM", 0.0), (8, "IMI", 1.0)]
    for i, (fold, code, noisy) in enumerate(specs, start=1):
        sig = synthetic_ecg(10, 100, seed=60 + i)
        sig += noisy * 0.5 * np.random.default_rng(i).standard_normal(sig.shape).astype(np.float32)
        write_record(root / "records100", f"{i:05d}_lr", sig, 100, ["II"])
        rows.append(
            f"{i},{i},\"{{'{code}': 100.0}}\",{fold},records100/{i:05d}_lr,records500/{i:05d}_hr"
        )
    (root / "ptbxl_database.csv").write_text("\n".join(rows) + "\n")
    model = make_tiny_model(tmp_path / "ii.onnx", leads=("II",))
    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--folds",
                "7",
                "8",
                "--out",
                str(out),
                "--no-progress",
                str(root),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert len(report["records"]) == 4  # fold 1 left out
    block = report["sources"]["tiny-pca"]["record"]
    assert (
        block["n"] == 4 and block["n_positive"] == 2 and block["auroc"] == 1.0
    )  # noisy ECGs score higher
    assert block["record_score"] == "max of window_score"


def test_evaluate_measures_synth_output_against_its_saved_masks(data, tmp_path, capsys):
    """`ecgstream synth` writes records and masks; evaluate scores the records against the masks
    (not a silent row of "-"), and a mask that does not fit its record is an error."""
    root, _, model = data
    synth = tmp_path / "synth"
    argv = ["synth", "--out", str(synth), "--count", "3", "--after", "5", "--seed", "1"]
    assert main([*argv, "--kinds", "flat,noise", "--min-len", "1", str(root / "test")]) == 0
    capsys.readouterr()
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model), "--out", str(out), "--no-progress",
                 "--no-plots", str(synth)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    block = json.loads((out / "report.json").read_text())["sources"]["pca-baseline"]["synth_masks"]
    masks = [np.load(synth / f"e{i}.mask.npz")["mask"] for i in range(2)]
    assert block["n_records"] == 2 and block["n_positive"] == sum(int(m.sum()) for m in masks)
    # the same figure from the records' own point scores against the saved masks
    from ecgstream.evaluation.metrics import auroc

    scorer = Scorer(model)
    pairs = [(m, scorer.score_record(read_record(synth / f"e{i}")).point_score) for i, m in
             enumerate(masks)]  # fmt: skip
    keep = [np.isfinite(p) for _, p in pairs]
    labels = np.concatenate([m[k] for (m, _), k in zip(pairs, keep, strict=True)])
    scores = np.concatenate([p[k] for (_, p), k in zip(pairs, keep, strict=True)])
    assert block["auroc"] == pytest.approx(auroc(labels.astype(np.int8), scores))
    assert "`ecgstream synth` masks): point AUROC" in text
    np.savez(synth / "e0.mask.npz", mask=masks[0][:-5], fs=np.float64(FS))
    code = main(["evaluate", "--model", str(model), "--out", str(tmp_path / "bad"),
                 "--no-progress", "--no-plots", str(synth / "e0")])  # fmt: skip
    assert code == 2 and "does not fit record e0" in capsys.readouterr().err


def test_evaluate_reads_plain_series_and_says_when_there_is_nothing_to_measure(tmp_path, capsys):
    """A series file is read as a series (no ".hea" error); without labels, masks or
    --localisation, evaluate says there is nothing to measure instead of printing only "-"."""
    from ecgstream.signals.series import write_series

    x = np.sin(2 * np.pi * np.arange(3000) / 50)
    series = write_series(tmp_path / "s.txt", x)
    spec = ModelSpec(name="pca", version="1", kind="pca", leads=["value"], window=200, hop=100,
                     preprocessing={"fs": 1.0, "highpass_hz": 0.0, "lowpass_hz": 0.0})  # fmt: skip
    windows = np.stack([x[i : i + 200] for i in range(0, 2800, 100)])[:, None].astype(np.float32)
    model = export_pca(fit_pca(windows, n_components=4), tmp_path / "s.onnx", spec)
    code = main(["evaluate", "--model", str(model), "--out", str(tmp_path / "ev"),
                 "--no-progress", "--no-plots", str(series)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and "nothing to measure" in text


def test_threshold_hint_says_what_to_do_only_when_the_threshold_hides_a_good_ranking():
    from ecgstream.cli.evaluate import threshold_hint

    block = {"threshold": 26.45, "auroc": 0.95, "abnormal_over": 0.033,
             "half_threshold": 10.07, "normal_over_at_half": 0.02}  # fmt: skip
    hint = threshold_hint("m", block)
    assert "26.45" in hint and "96.7 %" in hint and "10.07" in hint and "2.0 %" in hint
    assert "--operating-point" in hint
    assert threshold_hint("m", {**block, "abnormal_over": 0.6}) == ""  # most are alerted
    assert threshold_hint("m", {**block, "auroc": 0.6}) == ""  # the ranking itself is poor
    assert threshold_hint("m", {**block, "auroc": None}) == ""
