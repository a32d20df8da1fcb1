"""Clean bank: the history term with a per-snippet gate, on DS1 DEV only (research).

The shipped history (:mod:`ecgstream.runtime.history`) admits a window's new snippets into the
stream's bank when the WINDOW's calibrated score before the term is below the gate (24.6); a
patient with frequent ectopy then banks ectopic beats and the nearest-snippet term calls them
"known". Here each new snippet is also judged on its own: its *snippet score* is the max of the
window's calibrated point score before the term (the detector's, per window, causal) over the
snippet's own span (``before_s`` before the segment centre to ``after_s`` after it: everything
the snippet holds). Nothing in ``ecgstream/`` changes: :class:`CleanHistory` subclasses
``History`` and refuses snippets by marking them empty when they mature.

Variants (fixed before any result was seen; calibrated units are robust z of normal training
windows: 0 = the median normal window, 1 = one robust spread):

- ``none``: no history (weight 0).
- ``shipped``: the shipped window gate only.
- ``fixed5``: window gate, and snippet score < 5.0.
- ``relative3``: window gate, and snippet score <= the window's median snippet score (over its
  segments whose snippet lies in the window) + 3 x 1.4826 x their median absolute deviation.
- ``fixed5-nogate``: no window gate; snippet score < 5.0 only (normal beats of busy windows
  enter too).

Protocol (that of ``choose_weight.py``, whose functions are reused): folds
``MITDB_CV_FOLDS`` over the 15 DEV records (TEST refused); per fold and variant the weight is
chosen on the 12 other records (grid x spread ratio, maximising mean of pooled, S and V beat
AUROC) and applied to the 3 held out; out-of-fold beat AUROC pooled / S / V / F and 10 s windows.
Alerts: each record replayed once through the streaming pipeline (shipped model, default alert
policy); the anomaly alerts are re-decided from the variant's window scores (calibrated score +
the fold's weight x the window term, same windows); per fold the warning / critical thresholds
are chosen on the 12 other records for 1 false alert per monitor-hour (``operating_point``) and
the 3 held out are scored with them (as ``research/alert_operating_points.py``).

    nice -n 10 python research/patient_reference/clean_bank.py ../shared/data/mitdb-ds1 \\
        --out research/patient_reference/clean_bank.json | tee research/patient_reference/clean_bank.txt
"""

# ruff: noqa: E402
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # research/: sibling studies
from alert_operating_points import fold_held_out, study_folds  # noqa: E402
from choose_weight import (  # noqa: E402
    HALF_S,
    brief,
    collected,
    fold_weight,
)

from ecgstream.alerts.state import AlertConfig
from ecgstream.evaluation.alerts import (
    V_SYMBOLS,
    pool,
    reference_events,
    replay_record,
    rescore,
    score_record,
)
from ecgstream.evaluation.crossval import figures, merge, spread
from ecgstream.evaluation.metrics import beat_scores
from ecgstream.evaluation.splits import MITDB_CV_FOLDS, MITDB_DEV, MITDB_TEST
from ecgstream.runtime.history import History, HistoryState, top_mean
from ecgstream.runtime.scorer import Scorer
from ecgstream.signals.labels import AAMI_NORMAL, read_beats
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.records import read_record, select_leads
from ecgstream.signals.windows import frame, overlap_average, to_record_rate, window_starts

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "consensus-mitdb-mlii.onnx"
LEVEL = 5.0  # fixed snippet level (calibrated units)
K_MAD = 3.0  # relative snippet level: median + K_MAD x 1.4826 x MAD
#: variant -> (window gate on, snippet rule)
VARIANTS = {
    "shipped": (True, None),
    "fixed5": (True, "fixed"),
    "relative3": (True, "relative"),
    "fixed5-nogate": (False, "fixed"),
}
ROWS = ("none", *VARIANTS)
RUN_RECORDS = ("124", "203", "205", "207")  # the DEV records with ventricular runs


class _Admitting(list):
    """A stream's pending list that marks refused snippets (NaN) as they are appended: the
    ``i``-th appended window takes the ``i``-th mask ``(per_window,)`` of ``queue``."""

    def __init__(self, items, queue):
        super().__init__(items)
        self.queue = queue

    def append(self, item) -> None:
        end, snip = item
        mask = next(self.queue)
        if not mask.all():
            snip = snip.copy()
            snip[:, ~mask] = np.nan
        super().append((end, snip))


class CleanHistory(History):
    """The product's history with a per-snippet admission mask (one stream, offline)."""

    def clean_terms(
        self,
        windows: np.ndarray,
        starts: np.ndarray,
        window_cal: np.ndarray,
        admit: np.ndarray | None,
        window_gate: bool = True,
    ) -> np.ndarray:
        """Terms ``(n, segments)`` of one stream's windows from a fresh history; ``admit``
        ``(n, per_window)`` says which new snippets of each window may enter (None: all),
        ``window_gate`` whether the window's calibrated score must also be below the gate."""
        state = self.new_state("offline")
        state.restart(0)
        cal = window_cal if window_gate else np.full(len(window_cal), -np.inf)
        if admit is not None:
            rows = np.flatnonzero(cal < self.cfg.gate)
            state.pending = _Admitting([], iter(admit[rows]))
        with threadpool_limits(limits=1, user_api="blas"):
            return self.advance([state], [0], [np.asarray(starts)], windows, cal)

    def _mature(self, state: HistoryState, start: int) -> None:
        queue = getattr(state.pending, "queue", None)
        super()._mature(state, start)
        refused = np.isnan(state.bank_sq)  # refused snippets: empty rows
        if refused.any():
            state.bank_sq[refused] = np.inf
            state.bank[refused] = 0.0
        if queue is not None:
            state.pending = _Admitting(state.pending, queue)

    def snippet_scores(self, point_cal: np.ndarray) -> np.ndarray:
        """Each segment's snippet score ``(n, segments)``: the max calibrated point score
        ``(n, window)`` over its snippet's span (model samples); NaN where the span leaves the
        window."""
        span = self.length * self.block
        mx = np.lib.stride_tricks.sliding_window_view(point_cal, span, axis=-1).max(-1)
        first = (self.c_env - self.before) * self.block
        out = np.full((len(point_cal), len(first)), np.nan)
        out[:, self.inside] = mx[:, first[self.inside]]
        return out

    def admit(self, point_cal: np.ndarray, rule: str) -> np.ndarray:
        """Admission mask ``(n, per_window)`` of each window's new snippets by ``rule``."""
        s = self.snippet_scores(point_cal)
        new = s[:, self.new]
        if rule == "fixed":
            return new < LEVEL
        med = np.nanmedian(s, axis=1, keepdims=True)
        mad = np.nanmedian(np.abs(s - med), axis=1, keepdims=True)
        return new <= med + K_MAD * 1.4826 * mad


def record_parts(scorer: Scorer, hist: CleanHistory, folder: Path, name: str) -> dict:
    """One record: the score before the term and each variant's term (point at the record
    rate, window per model window), its beats, window starts and admission shares."""
    spec = scorer.spec
    rec = read_record(folder / name)
    sig = select_leads(rec, spec.leads).signal
    x, delay = preprocess(sig, rec.fs, spec.preprocess_config)
    starts = window_starts(len(x), spec.window, spec.hop)
    windows = frame(x, starts, spec.window)
    point_raw, window_raw = scorer.score_windows(windows)
    cal = spec.normalise(window_raw.astype(np.float64))
    point_cal = spec.normalise(point_raw.astype(np.float64))
    n = sig.shape[0]

    def at_record(a: np.ndarray) -> np.ndarray:
        return to_record_rate(overlap_average(a, starts, len(x)), spec.fs, rec.fs, n, delay)

    base = scorer.score_signal(sig, rec.fs, name)
    beats = read_beats(folder / name)
    # which new snippets hold a V beat (its annotation inside the snippet's span, seconds)
    v_t = np.sort(beats.samples[np.isin(beats.symbols, sorted(V_SYMBOLS))] / rec.fs)
    centre_t = (starts[:, None] + hist.centres[hist.new][None]) / spec.fs - delay
    lo, hi = centre_t - hist.cfg.before_s, centre_t + hist.cfg.after_s
    has_v = np.searchsorted(v_t, hi) > np.searchsorted(v_t, lo)  # (n, per_window)
    v_beats, n_beats = (
        beats.samples[np.isin(beats.symbols, sorted(V_SYMBOLS))],
        beats.samples[np.isin(beats.symbols, sorted(AAMI_NORMAL))],
    )
    out = {"record": rec, "beats": beats, "starts": starts, "mechanism": {},
           "point0": at_record(spec.normalise(point_raw)), "window0": cal,
           "scores": base, "terms": {}, "admitted": {}}  # fmt: skip
    for v, (gate_on, rule) in VARIANTS.items():
        admit = None if rule is None else hist.admit(point_cal, rule)
        terms = hist.clean_terms(windows, starts, cal, admit, gate_on)
        out["terms"][v] = (at_record(hist.point_terms(terms)), top_mean(terms, hist.top))
        gated = cal < hist.cfg.gate if gate_on else np.ones(len(cal), bool)
        share = admit[gated].mean() if admit is not None else 1.0
        out["admitted"][v] = (int(gated.sum()) * hist.per_window, float(share))
        adm = (
            admit[gated]
            if admit is not None
            else np.ones((int(gated.sum()), hist.per_window), bool)
        )
        hv = has_v[gated]
        term = out["terms"][v][0]
        out["mechanism"][v] = {
            "admitted": int(adm.sum()),
            "admitted_with_v": int((adm & hv).sum()),
            "candidates_with_v": int(hv.sum()),
            "term_at_v": beat_scores(term, v_beats, rec.fs, HALF_S).tolist(),
            "term_at_n": beat_scores(term, n_beats, rec.fs, HALF_S).tolist(),
        }
    # check: the subclass without a mask is the product's term
    ref = scorer.history_terms(windows, starts, window_raw)
    same = hist.clean_terms(windows, starts, cal, np.ones((len(cal), hist.per_window), bool))
    out["check"] = float(np.max(np.abs(ref - same))) if len(ref) else 0.0
    # and with every snippet refused the bank stays empty: no term at all
    refused = hist.clean_terms(windows, starts, cal, np.zeros((len(cal), hist.per_window), bool))
    assert not refused.any(), f"{name}: refused snippets reached the bank"
    return out


def variant_parts(parts: dict, v: str) -> dict:
    """``parts`` with variant ``v``'s term in the keys ``choose_weight`` reads."""
    out = {}
    for name, p in parts.items():
        term, wterm = p["terms"]["shipped" if v == "none" else v]
        out[name] = {**p, "term": term, "window_term": wterm}
    return out


def with_scores(run, p: dict, w: float):
    """The replayed ``run`` with its window scores replaced by score + ``w`` x window term of
    the same windows (matched by start, model samples)."""
    idx = np.searchsorted(p["starts"], [s["window"] for s in run.scores])
    assert (p["starts"][idx] == [s["window"] for s in run.scores]).all()
    vals = p["window0"][idx] + w * p["window_term"][idx]
    scores = [{**s, "score": float(v)} for s, v in zip(run.scores, vals, strict=True)]
    return dataclasses.replace(run, scores=scores)


def held_out_row(
    vp: dict, runs: dict, names: list[str], folds: list[tuple], weighted: bool, target: float,
    cfg: AlertConfig, alert_keys: tuple[str, ...],
) -> dict:  # fmt: skip
    """One variant's out-of-fold figures: per fold, the term's weight chosen on the other 12
    records (0 when not ``weighted``), the held-out beat figures, and the anomaly alerts re-decided
    from the variant's window scores with thresholds chosen on the other folds for ``target``
    false alerts per monitor-hour; pooled, spread over folds, and the pooled ``alert_keys``."""
    beat_rows, held_rows, fold_rows = [], [], []
    for k, held in enumerate(folds):
        train = [n for n in names if n not in held]
        g, w = fold_weight(vp, train)[1:3] if weighted else (0.0, 0.0)
        beat_rows.append(collected(vp, held, w))
        by_fold = study_folds([(with_scores(runs[n][0], vp[n], w), runs[n][1]) for n in names])
        _, op, rescored = fold_held_out(by_fold, k, target, cfg)
        rows = [score_record(r, ev) for r, ev in rescored]
        p = pool(rows)
        held_rows += rows
        fold_rows.append({"held": list(held), "g": g, "w": w, "warning": op["warning"],
                          "critical": op["critical"],
                          "v_runs": f"{p['v_runs_alerted']}/{p['v_runs']}",
                          "false_per_hour": p["false_per_hour"],
                          **brief(figures(beat_rows[-1]))})  # fmt: skip
    per_fold = [brief(figures(c)) for c in beat_rows]
    pooled = brief(figures(merge(beat_rows)))
    p = pool(held_rows)
    return {
        "oof": pooled,
        "spread": {m: spread(f[m] for f in per_fold) for m in pooled},
        "folds": fold_rows,
        "alerts": {k: p.get(k) for k in alert_keys},
        "v_runs_missed_by_record": {r["record"]: r["v_runs"] - r["v_runs_alerted"]
                                    for r in held_rows if r["v_runs_alerted"] < r["v_runs"]},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--target", type=float, default=1.0, help="false alerts per monitor-hour")
    args = ap.parse_args()
    folds = [tuple(f) for f in MITDB_CV_FOLDS]
    names = sorted({r for f in folds for r in f})
    assert sorted(names) == sorted(MITDB_DEV) and not set(names) & set(MITDB_TEST)
    t_start = time.time()
    scorer = Scorer(MODEL, batch_size=64)  # the shipped model (its terms are weight-free)
    h = scorer.history
    assert h is not None
    spec = scorer.spec
    hist = CleanHistory(h.cfg, spec.window, spec.hop, spec.fs, len(spec.leads))
    parts, runs = {}, {}
    for name in names:
        parts[name] = record_parts(scorer, hist, args.folder, name)
        runs[name] = (
            replay_record(scorer, args.folder / name),
            reference_events(args.folder / name),
        )
        print(f"{name}: {len(parts[name]['beats'])} beats, check {parts[name]['check']:.1e}, "
              f"admitted " + " ".join(f"{v} {s:.2f}" for v, (_, s) in parts[name]["admitted"].items()),
              flush=True)  # fmt: skip
    results: dict = {"records": names, "folds": [list(f) for f in folds], "level": LEVEL,
                     "k_mad": K_MAD, "gate": h.cfg.gate,
                     "check_max_abs": max(p["check"] for p in parts.values()),
                     "admitted": {v: {n: parts[n]["admitted"][v] for n in names}
                                  for v in VARIANTS},
                     "rows": {}}  # fmt: skip
    mech = {}
    for v in VARIANTS:
        row = {}
        for scope, recs in (("all", names), *((n, [n]) for n in RUN_RECORDS)):
            m = [parts[n]["mechanism"][v] for n in recs]
            tv = np.concatenate([x["term_at_v"] for x in m])
            tn = np.concatenate([x["term_at_n"] for x in m])
            adm, adm_v = sum(x["admitted"] for x in m), sum(x["admitted_with_v"] for x in m)
            row[scope] = {
                "bank_share_with_v": adm_v / max(adm, 1),
                "v_snippets_admitted": adm_v / max(sum(x["candidates_with_v"] for x in m), 1),
                "term_median_v": float(np.nanmedian(tv)) if len(tv) else None,
                "term_median_n": float(np.nanmedian(tn)) if len(tn) else None,
            }
        mech[v] = row
    results["mechanism"] = mech
    cfg = AlertConfig()
    # reference: the shipped thresholds, the full pipeline's alerts against the re-decided ones
    ref = {}
    for how in ("pipeline", "rescored"):
        rows = [
            score_record(r if how == "pipeline" else rescore(r, r.threshold, r.critical, cfg), ev)
            for r, ev in runs.values()
        ]
        p = pool(rows)
        ref[how] = {k: p[k] for k in ("v_runs", "v_runs_alerted", "false_per_hour")}
    results["shipped_thresholds_in_sample"] = ref
    ship = next(iter(runs.values()))[0]
    for v in ROWS:
        results["rows"][v] = held_out_row(
            variant_parts(parts, v), runs, names, folds, v != "none", args.target, cfg,
            ("v_runs", "v_runs_alerted", "v_run_se", "false_per_hour", "false_alerts", "hours",
             "v_beat_se", "v_beat_ppv", "s_beat_se", "v_latency_median_s", "v_latency_p95_s"),
        )  # fmt: skip
        print(f"{v}: done ({time.time() - t_start:.0f} s)", flush=True)
    # each V run's peak window score (windows overlapping it) against its fold's warning level
    peaks = {}
    for name in RUN_RECORDS:
        k = next(i for i, f in enumerate(folds) if name in f)
        t0 = parts[name]["starts"] / spec.fs
        for a, b in runs[name][1].v_runs:
            inside = (t0 < b) & (t0 + spec.window / spec.fs > a)
            row = {}
            for v in ROWS:
                f = results["rows"][v]["folds"][k]
                wt = parts[name]["terms"]["shipped" if v == "none" else v][1]
                peak = float(np.max(parts[name]["window0"][inside] + f["w"] * wt[inside]))
                row[v] = (peak, f["warning"])
            peaks[f"{name} {a:.0f}-{b:.0f} s"] = row
    results["v_run_peaks"] = peaks
    fmt = lambda x: " -   " if x is None else f"{x:.3f}"  # noqa: E731
    print(f"\n{'row':14s} pooled S     V     F     10s  | folds mean+-sd pooled S V        "
          f"| V runs   false/h  V beat Se | weights")  # fmt: skip
    for v, r in results["rows"].items():
        o, sp, a = r["oof"], r["spread"], r["alerts"]
        print(f"{v:14s} " + " ".join(fmt(o[m]) for m in ("beat", "S", "V", "F", "window_10s"))
              + " | " + " ".join(f"{sp[m]['mean']:.3f}+-{sp[m]['std']:.3f}" for m in ("beat", "S", "V"))
              + f" | {a['v_runs_alerted']}/{a['v_runs']} ({a['v_run_se']:.2f}) {a['false_per_hour']:.2f}"
              f"     {a['v_beat_se']:.2f}     | "
              + " ".join(f"{f['w']:.3g}" for f in r["folds"]))  # fmt: skip
    for v, r in results["rows"].items():
        print(f"{v}: missed V runs by record {r['v_runs_missed_by_record']}; fold thresholds "
              + " ".join(f"{f['warning']:.1f}" for f in r["folds"]))  # fmt: skip
    print("admitted share of the gated windows' new snippets:",
          {v: round(float(np.mean([s for _, s in d.values()])), 3)
           for v, d in results["admitted"].items()})  # fmt: skip
    print("V runs near or below their fold's warning threshold: peak window score / threshold")
    for run, row in peaks.items():
        if min(pk - thr for pk, thr in row.values()) < 10:
            print(
                f"  {run:16s} "
                + "  ".join(f"{v} {pk:.1f}/{thr:.1f}" for v, (pk, thr) in row.items())
            )
    print(
        "mechanism (bank share holding a V beat / V snippets admitted / median term at V "
        "beats / at N beats):"
    )
    for v, row in mech.items():
        print(
            f"  {v:14s} "
            + "  ".join(
                f"{sc}: {r['bank_share_with_v']:.3f}/{r['v_snippets_admitted']:.2f}/"
                f"{fmt(r['term_median_v'])}/{fmt(r['term_median_n'])}"
                for sc, r in row.items()
            )
        )
    print(
        f"shipped thresholds {ship.threshold} / {ship.critical} on all 15 DEV records (in sample): "
        + ", ".join(
            f"{k} {x['v_runs_alerted']}/{x['v_runs']} runs, {x['false_per_hour']:.2f} false/h"
            for k, x in ref.items()
        )
    )
    print(f"check (subclass, all admitted, vs the product's term): {results['check_max_abs']:.1e}")
    results["seconds"] = time.time() - t_start
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
