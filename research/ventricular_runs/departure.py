"""A "departure" alert kind: most of a window unlike the patient's own banked normal snippets?

For each DEV window, the share of its segments whose history term (distance to the nearest
snippet in the stream's bank, :mod:`ecgstream.runtime.history`) exceeds ``tau`` is fed to a
second alert state machine of its own (the anomaly lifecycle: 2 windows at or above ``theta``).
Per fold of the protocol (``MITDB_CV_FOLDS``): the anomaly thresholds are chosen on the other 12
records for 1 false alert per monitor-hour, then ``theta`` as the lowest value (0.30-1.00 in
steps of 0.05) that keeps the other 12 records' false alerts of all kinds at most 1 per hour;
the 3 held-out records are counted with both (anomaly alerts re-decided from the window scores).
Banks: the shipped one (window gate), and the per-snippet gates of ``clean_bank.py``.
DS1 TEST is not read.

    python research/ventricular_runs/departure.py ../shared/data/mitdb-ds1
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "patient_reference"))
from clean_bank import MODEL, CleanHistory  # noqa: E402

from ecgstream.alerts.state import AlertConfig, AnomalyMachine  # noqa: E402
from ecgstream.evaluation.alerts import pool, rescore, score_record  # noqa: E402
from ecgstream.runtime.scorer import Scorer  # noqa: E402
from ecgstream.signals.preprocess import preprocess  # noqa: E402
from ecgstream.signals.records import read_record, select_leads  # noqa: E402
from ecgstream.signals.windows import frame, window_starts  # noqa: E402
from research.alert_operating_points import dev_replays, fold_held_out, study_folds  # noqa: E402

VARIANTS = (("shipped", 0.1), ("shipped", 0.2), ("fixed5", 0.2), ("fixed5-nogate", 0.2))


def departure_shares(scorer: Scorer, folder: Path, name: str) -> dict:
    """Per bank variant, each window's share of segments by term threshold, with window starts
    (s from the record start)."""
    spec, h = scorer.spec, scorer.history
    hist = CleanHistory(h.cfg, spec.window, spec.hop, spec.fs, len(spec.leads))
    rec = read_record(folder / name)
    x, delay = preprocess(select_leads(rec, spec.leads).signal, rec.fs, spec.preprocess_config)
    starts = window_starts(len(x), spec.window, spec.hop)
    windows = frame(x, starts, spec.window)
    point_raw, window_raw = scorer.score_windows(windows)
    cal = spec.normalise(window_raw.astype(np.float64))
    admit = hist.admit(spec.normalise(point_raw.astype(np.float64)), "fixed")
    terms = {
        "shipped": hist.clean_terms(windows, starts, cal, None, True),
        "fixed5": hist.clean_terms(windows, starts, cal, admit, True),
        "fixed5-nogate": hist.clean_terms(windows, starts, cal, admit, False),
    }
    return {"t0": starts / spec.fs - delay, "terms": terms}


def with_departure(run, ev, share: np.ndarray, t0: np.ndarray, theta: float, cfg: AlertConfig):
    """``run`` with the departure machine's messages added (matched to its windows by start)."""
    m = AnomalyMachine(run.name, dataclasses.replace(cfg, rhythm=False), theta, "", "", [])
    ks = [s["window"] for s in run.scores]
    m.step = int(np.min(np.diff(ks)))
    idx = np.clip(np.searchsorted(t0, [s["start_s"] - 0.01 for s in run.scores]), 0, len(t0) - 1)
    msgs = []
    for s, i in zip(run.scores, idx, strict=True):
        if abs(t0[i] - s["start_s"]) <= 0.01:
            msgs += m.update(s["window"], float(share[i]), s["start_s"], s["end_s"], None, 1.0)
    msgs += m.close(m.open.end_s if m.open is not None else 0.0)
    extra = [dict(a.to_dict(), alert_id="departure-" + a.id) for a in msgs]
    return dataclasses.replace(run, messages=run.messages + extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    scorer = Scorer(MODEL, batch_size=64)
    runs = dev_replays(args.folder, scorer)
    parts = {r.name: departure_shares(scorer, args.folder, r.name) for r, _ in runs}
    cfg = AlertConfig()
    folds = study_folds(runs)
    for bank, tau in VARIANTS:
        share = {n: (p["terms"][bank] > tau).mean(1) for n, p in parts.items()}

        def plus(r, ev, th, share=share):
            return with_departure(r, ev, share[r.name], parts[r.name]["t0"], th, cfg)

        held, thetas = [], []
        for k in range(len(folds)):
            train, op, rescored = fold_held_out(folds, k, 1.0, cfg)
            base = [(rescore(r, op["warning"], op["critical"], cfg), ev) for r, ev in train]
            theta = next(
                (th for th in np.round(np.arange(0.30, 1.0001, 0.05), 2)
                 if pool([score_record(plus(r, ev, th), ev) for r, ev in base])["false_per_hour"]
                 <= 1.0),
                1.01,
            )  # fmt: skip
            thetas.append(float(theta))
            held += [score_record(plus(r, ev, theta), ev) for r, ev in rescored]
        p = pool(held)
        missed = {r["record"]: r["v_runs"] - r["v_runs_alerted"] for r in held
                  if r["v_runs_alerted"] < r["v_runs"]}  # fmt: skip
        print(f"bank {bank}, term > {tau}: theta per fold {thetas}; ventricular runs "
              f"{p['v_runs_alerted']}/{p['v_runs']}, false alerts {p['false_per_hour']:.2f}/h, "
              f"missed {missed}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
