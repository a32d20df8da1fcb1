"""The weight of the shipped history term, chosen by a rule fixed before the results.

The product's history term (:mod:`ecgstream.runtime.history`: the study's ``snippet-nn``, a
per-stream bank of the patient's recent normal envelope snippets) is computed for every DS1 DEV
record with the shipped consensus model through the runtime's own code (a copy of the model
with a ``history`` section, scored by ``Scorer``: the same walk as ``ecgstream score`` and the
stream stepper), keeping the calibrated score and the term apart (weight-free): the record's
point score is ``score + w * term`` exactly (both are averaged over overlapping windows and
interpolated to the record rate alike), its window score ``window + w * top``.

Protocol (fixed before any result):

- folds: ``ecgstream.evaluation.splits.MITDB_CV_FOLDS`` over the 15 DEV records; TEST records
  are refused.
- per fold, on the 12 other records: ``w`` from the grid ``{0} U {2^-8 .. 2^6}`` times the ratio
  of the spreads (95th minus 50th percentile) of the beat scores of the shipped score and of the
  term alone over the 12 records' beats, maximising the mean of pooled (all abnormal vs normal),
  S-vs-N and V-vs-N beat AUROC; applied to the 3 held out.
- shipped weight: the median of the five fold weights.
- reported: out-of-fold pooled / S / V / F beat AUROC and 10 s window AUROC (pooled over the
  15 records, and mean +- sd over the folds) for the shipped score alone, the score with the
  fold's weight, the term alone and the segment-energy score (calibrated on each fold's 12
  training records), in the same run; beat scores and AAMI classes as
  ``ecgstream.evaluation.crossval`` computes them (``collect_record`` / ``figures``); and the
  DEV window score distribution before and after the term at the shipped weight.

    nice -n 10 python research/patient_reference/choose_weight.py \\
        --out research/patient_reference/choose_weight.json
"""

# ruff: noqa: E402
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ecgstream.evaluation.baselines import fit_energy_on_records
from ecgstream.evaluation.crossval import class_aurocs, figures, merge, spread
from ecgstream.evaluation.metrics import auroc, beat_scores
from ecgstream.evaluation.protocol import Collected, collect_record
from ecgstream.evaluation.splits import MITDB_CV_FOLDS, MITDB_DEV, MITDB_TEST
from ecgstream.runtime.history import top_mean
from ecgstream.runtime.model_file import read_spec, update_spec
from ecgstream.runtime.scorer import RecordScores, Scorer
from ecgstream.signals.labels import read_beats
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.records import read_record, select_leads
from ecgstream.signals.windows import frame, overlap_average, to_record_rate, window_starts

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "consensus-mitdb-mlii.onnx"
DATA = REPO.parent / "shared" / "data" / "mitdb-ds1"
G_GRID = np.r_[0.0, 2.0 ** np.arange(-8, 7)]
HALF_S = 0.15  # the protocol's beat half-width


def record_parts(scorer: Scorer, name: str) -> dict:
    """One record: the shipped score and the term, apart, at the record rate (point) and per
    model window (window), with the record, its beats and the shipped ``RecordScores``."""
    spec, hist = scorer.spec, scorer.history
    assert hist is not None
    rec = read_record(DATA / name)
    sig = select_leads(rec, spec.leads).signal
    x, delay = preprocess(sig, rec.fs, spec.preprocess_config)
    starts = window_starts(len(x), spec.window, spec.hop)
    windows = frame(x, starts, spec.window)
    t0 = time.perf_counter()
    point_raw, window_raw = scorer.score_windows(windows)
    t1 = time.perf_counter()
    terms = scorer.history_terms(windows, starts, window_raw)
    t2 = time.perf_counter()
    n = sig.shape[0]
    point0 = to_record_rate(overlap_average(spec.normalise(point_raw), starts, len(x)), spec.fs,
                            rec.fs, n, delay)  # fmt: skip
    term = to_record_rate(overlap_average(hist.point_terms(terms), starts, len(x)), spec.fs,
                          rec.fs, n, delay)  # fmt: skip
    base = scorer.score_signal(sig, rec.fs, name)  # the weighted scores, for the check
    return {
        "record": rec,
        "beats": read_beats(DATA / name),
        "point0": point0,
        "term": term,
        "window0": spec.normalise(window_raw.astype(np.float64)),
        "window_term": top_mean(terms, hist.top),
        "scores": base,
        "starts": starts,
        "seconds": (t1 - t0, t2 - t1, len(starts)),
    }


def weighted(part: dict, w: float) -> RecordScores:
    """The record's scores with weight ``w``."""
    return dataclasses.replace(
        part["scores"],
        point_score=part["point0"] + w * part["term"],
        window_score=part["window0"] + w * part["window_term"],
    )


def beat_arrays(parts: dict, names, w: float, alone: bool = False):
    """Beat scores (score + w * term, or the term alone), abnormal labels and symbols."""
    s, lab, sym = [], [], []
    for n in names:
        p = parts[n]
        trace = p["term"] if alone else p["point0"] + w * p["term"]
        b = beat_scores(trace, p["beats"].samples, p["record"].fs, HALF_S)
        ok = np.isfinite(b)
        s.append(b[ok])
        lab.append(p["beats"].abnormal[ok])
        sym.append(p["beats"].symbols[ok])
    return np.concatenate(s), np.concatenate(lab), np.concatenate(sym)


def objective(scores, labels, symbols) -> float:
    """Mean of pooled, S-vs-N and V-vs-N beat AUROC (the choice rule)."""
    cls = class_aurocs(symbols, scores)
    vals = [auroc(labels.astype(np.int8), scores), cls["S"]["auroc"], cls["V"]["auroc"]]
    return float(np.mean([v for v in vals if v is not None]))


def spread_of(v: np.ndarray) -> float:
    """95th minus 50th percentile."""
    return float(np.percentile(v, 95) - np.percentile(v, 50))


def fold_weight(parts: dict, train: list[str]) -> tuple[float, float, float, float]:
    """The weight rule on the ``train`` records: the grid value ``g`` (times the spread ratio of
    score to term) with the highest :func:`objective`; (objective, g, weight, ratio)."""
    s0, lab, sym = beat_arrays(parts, train, 0.0)
    st, _, _ = beat_arrays(parts, train, 0.0, alone=True)
    ratio = spread_of(s0) / spread_of(st)
    best = (-1.0, 0.0, 0.0)
    for g in G_GRID:
        val = objective(beat_arrays(parts, train, g * ratio)[0], lab, sym)
        if val > best[0] + 1e-9:
            best = (val, g, g * ratio)
    return best[0], best[1], best[2], ratio


def collected(parts: dict, names, w: float, source: str = "score") -> Collected:
    out = Collected()
    for n in names:
        p = parts[n]
        if source == "term":
            rs = dataclasses.replace(p["scores"], point_score=p["term"],
                                     window_score=p["window_term"])  # fmt: skip
        else:
            rs = weighted(p, w)
        collect_record(out, p["record"], rs, p["beats"])
    return out


def brief(fig: dict) -> dict:
    return {
        k: (fig[k]["auroc"] if k in fig and fig[k] else None)
        for k in ("beat", "S", "V", "F", "window_10s")
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    folds = [tuple(f) for f in MITDB_CV_FOLDS]
    names = sorted({r for f in folds for r in f})
    assert sorted(names) == sorted(MITDB_DEV) and not set(names) & set(MITDB_TEST)
    tmp = Path(tempfile.mkdtemp(prefix="history-weight-"))
    model = tmp / "history.onnx"
    shutil.copy(MODEL, model)
    spec = read_spec(MODEL)
    # the shipped section's gate (chosen as the default threshold before the alert thresholds
    # were chosen again), else the model's default threshold
    gate = (spec.history or {}).get("gate", spec.threshold)
    update_spec(model, history={"kind": "snippets", "weight": 1.0, "gate": gate})
    scorer = Scorer(model, batch_size=64)
    parts = {}
    model_s = term_s = 0.0
    n_windows = 0
    for name in names:
        parts[name] = record_parts(scorer, name)
        a, b, k = parts[name]["seconds"]
        model_s, term_s, n_windows = model_s + a, term_s + b, n_windows + k
        print(f"{name}: {len(parts[name]['beats'])} beats", flush=True)

    # check: the runtime's own weighted scores (weight 1) equal score + 1 * term (relative to
    # the score, at least 1 calibrated unit: raw scores are float32)
    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.nanmax(np.abs(a - b) / np.maximum(1.0, np.abs(b))))

    check = max(rel(parts[n]["scores"].point_score, weighted(parts[n], 1.0).point_score)
                for n in names)  # fmt: skip
    check_w = max(rel(parts[n]["scores"].window_score, weighted(parts[n], 1.0).window_score)
                  for n in names)  # fmt: skip
    print(f"check: Scorer with weight 1 vs score + term, relative: point {check:.2e}, "
          f"window {check_w:.2e}")  # fmt: skip

    results: dict = {"records": names, "folds": [list(f) for f in folds], "gate": gate,
                     "check_max_relative": {"point": check, "window": check_w}}  # fmt: skip
    rows: dict[str, list[Collected]] = {"shipped": [], "history": [], "term": [], "energy": []}
    fold_rows = []
    for k, held in enumerate(folds):
        train = [n for n in names if n not in held]
        best, g, w, ratio = fold_weight(parts, train)
        energy_model = fit_energy_on_records(
            [DATA / n for n in train], read_spec(MODEL), tmp / f"energy-{k}.onnx"
        )
        energy = Scorer(energy_model)
        e = Collected()
        for n in held:
            p = parts[n]
            collect_record(e, p["record"], energy.score_record(p["record"]), p["beats"])
        rows["shipped"].append(collected(parts, held, 0.0))
        rows["history"].append(collected(parts, held, w))
        rows["term"].append(collected(parts, held, 0.0, "term"))
        rows["energy"].append(e)
        fold_rows.append({"held": list(held), "g": g, "ratio": ratio, "w": w,
                          "train_objective": best})  # fmt: skip
        print(f"fold {held}: g = {g:g}, ratio {ratio:.3f}, w = {w:.4g}", flush=True)
    results["fold_weights"] = fold_rows
    w_ship = float(np.median([f["w"] for f in fold_rows]))
    results["shipped_weight"] = w_ship
    results["rows"] = {}
    for row, parts_ in rows.items():
        per_fold = [brief(figures(c)) for c in parts_]
        pooled = brief(figures(merge(parts_)))
        results["rows"][row] = {
            "oof": pooled,
            "folds": per_fold,
            "spread": {m: spread(f[m] for f in per_fold) for m in pooled},
        }
    # the DEV window scores (model windows) before and after the term at the shipped weight
    w0 = np.concatenate([parts[n]["window0"] for n in names])
    w1 = np.concatenate([parts[n]["window0"] + w_ship * parts[n]["window_term"] for n in names])
    thr = read_spec(MODEL).thresholds
    results["window_scores"] = {
        "n": int(len(w0)),
        "before": {f"p{q}": float(np.percentile(w0, q)) for q in (50, 90, 95, 99)},
        "after": {f"p{q}": float(np.percentile(w1, q)) for q in (50, 90, 95, 99)},
        "over_default_before": float((w0 >= thr["default"]).mean()),
        "over_default_after": float((w1 >= thr["default"]).mean()),
        "thresholds": thr,
    }
    results["ms_per_window"] = {"model": 1000 * model_s / n_windows,
                                "term": 1000 * term_s / n_windows, "windows": n_windows}  # fmt: skip
    # the shipped weight on every record (in-sample for the weight; for the distribution only)
    fmt = lambda v: " -   " if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{'row':10s} pooled   S      V      F      10s  | folds mean+-sd pooled S V")
    for row, r in results["rows"].items():
        o, sp = r["oof"], r["spread"]
        print(
            f"{row:10s} " + " ".join(fmt(o[m]) for m in ("beat", "S", "V", "F", "window_10s"))
            + " | " + "  ".join(f"{sp[m]['mean']:.3f}+-{sp[m]['std']:.3f}" for m in ("beat", "S", "V"))
        )  # fmt: skip
    print("fold weights:", [round(f["w"], 4) for f in fold_rows], "shipped (median):", w_ship)
    print("window scores:", results["window_scores"])
    print("ms per window:", results["ms_per_window"])
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
