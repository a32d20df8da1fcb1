"""Alert policy against ventricular runs missed in a cooldown or inside an open alert.

Candidates: the cooldown after an alert (``cooldown_s``), ``rise`` (0: off), the multiple of an
open alert's peak score that is news (an ``updated`` message), and ``cooldown_rise`` (0: off),
the multiple of a resolved alert's peak that opens a new alert inside its cooldown. Each candidate is scored by 5-fold leave-records-out over the DS1 DEV
records as research/alert_operating_points.py does it: the warning and critical thresholds are
chosen on 12 records for 1 false alert per monitor-hour with that policy, the other 3 are scored
with them; held-out figures are pooled over the folds. DS1 TEST is not read here. The records
are replayed once (shipped model) and the anomaly alerts re-decided from the window scores.

    python research/alert_policy_cv.py ../shared/data/mitdb-ds1 \
        --out docs/research/alert-policy-cv.json
"""

from __future__ import annotations

import dataclasses
import json

from alert_operating_points import arguments, dev_replays, fold_held_out, study_folds  # a sibling

from ecgstream.alerts.state import AlertConfig
from ecgstream.evaluation.alerts import (
    pool,
    score_record,
)
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.worker import find_model

CANDIDATES = [
    {"cooldown_s": c, "rise": r, "cooldown_rise": cr}
    for c in (10.0, 5.0, 0.0)
    for r in (0.0, 1.25, 1.5, 2.0, 3.0)
    for cr in (0.0, 1.5, 3.0)
    if not (c == 0.0 and cr)  # no cooldown: nothing to break
]


def cross_validate(runs: list, cfg: AlertConfig, target: float) -> dict:
    """Held-out figures of policy ``cfg`` over 5 folds of the replayed ``runs``."""
    folds = study_folds(runs)
    held, per_fold, messages = [], [], 0
    for i in range(len(folds)):
        _, op, again = fold_held_out(folds, i, target, cfg)
        rows = [score_record(r, ev) for r, ev in again]
        messages += sum(1 for r, _ in again for m in r.messages if m["kind"] == "anomaly")
        p = pool(rows)
        per_fold.append(
            {"warning": op["warning"], "v_runs": f"{p['v_runs_alerted']}/{p['v_runs']}",
             "false_per_hour": round(p["false_per_hour"], 2)}
        )  # fmt: skip
        held += rows
    p = pool(held)
    keys = ("v_runs", "v_runs_alerted", "v_run_se", "false_per_hour", "af_se", "sv_run_se",
            "v_latency_median_s", "v_latency_p95_s", "alerts")  # fmt: skip
    held_out = {k: p.get(k) for k in keys}
    held_out["anomaly_messages_per_hour"] = messages / p["hours"]
    return {"held_out": held_out, "folds": per_fold}


def main() -> None:
    args = arguments()
    runs = dev_replays(args.folder, Scorer(find_model(args.model)))
    out = []
    for cand in CANDIDATES:
        cfg = dataclasses.replace(AlertConfig(), **cand)
        res = cross_validate(runs, cfg, args.target)
        out.append({"policy": cand, **res})
        h = res["held_out"]
        print(
            f"cooldown {cand['cooldown_s']:>4} s  rise {cand['rise']:>4}  cooldown_rise "
            f"{cand['cooldown_rise']:>3}: V runs "
            f"{h['v_runs_alerted']}/{h['v_runs']} ({h['v_run_se']:.2f})  false/h "
            f"{h['false_per_hour']:.2f}  AF {h['af_se']:.2f}  anomaly msgs/h "
            f"{h['anomaly_messages_per_hour']:.1f}  folds "
            + " ".join(f"{f['v_runs']}@{f['false_per_hour']}" for f in res["folds"]),
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
