"""Warning and critical thresholds of the shipped model for a target false-alert rate.

Leave-records-out over the DS1 DEV records (the protocol's 5 folds of 3 records, ``MITDB_CV_FOLDS``): the thresholds are chosen on
12 records and the other 3 are scored with them, twice: with the anomaly alerts re-decided from
the window scores (``rescore``, as the choice itself is made; no localisation) and replayed through
the pipeline at the fold's thresholds (``replay_record``, as ``ecgstream evaluate --alerts``, with
localisation, so runs reported by new spans count); then the final choice is made on all 15 DEV
records. DS1 TEST is not read here.

    python research/alert_operating_points.py ../shared/data/mitdb-ds1 --target 1.0 \
        --out docs/research/alert-operating-points.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ecgstream.alerts.state import AlertConfig
from ecgstream.evaluation.alerts import (
    operating_point,
    pool,
    reference_events,
    replay_record,
    rescore,
    score_record,
)
from ecgstream.evaluation.splits import MITDB_CV_FOLDS, MITDB_DEV, mitdb_paths
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.worker import find_model


def dev_replays(folder: str | Path, scorer: Scorer) -> list:
    """Each DS1 DEV record of ``folder`` replayed once through ``scorer``'s model, with its
    annotated events: ``[(replay, events), ...]`` in ``MITDB_DEV`` order."""
    return [(replay_record(scorer, p), reference_events(p)) for p in mitdb_paths(folder, MITDB_DEV)]


def study_folds(runs: list) -> list[list]:
    """The protocol's 5 folds of 3 DEV records (``MITDB_CV_FOLDS``), as lists of ``runs``."""
    by_name = {replay.name: (replay, events) for replay, events in runs}
    return [[by_name[name] for name in fold] for fold in MITDB_CV_FOLDS]


def fold_held_out(folds: list[list], i: int, target: float, cfg: AlertConfig):
    """Fold ``i`` of ``folds`` (lists of ``(replay, events)``) at the operating point chosen on
    the other folds for ``target`` false alerts per monitor-hour: the other folds' runs, the
    operating point (:func:`operating_point`) and fold ``i``'s runs with their anomaly alerts
    re-decided at it (``rescore``)."""
    train = [r for j, f in enumerate(folds) if j != i for r in f]
    op = operating_point(train, target, cfg)
    return train, op, [(rescore(r, op["warning"], op["critical"], cfg), ev) for r, ev in folds[i]]


def arguments():
    """``folder``, ``--target`` (false alerts per monitor-hour) and ``--out`` of the alert studies."""
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--target", type=float, default=1.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--model", type=Path, default=None, help="model file (default: the shipped one)"
    )
    return ap.parse_args()


def main() -> None:
    args = arguments()
    scorer = Scorer(find_model(args.model))
    runs = dev_replays(args.folder, scorer)
    paths = {Path(p).name: p for p in mitdb_paths(args.folder, MITDB_DEV)}
    cfg = AlertConfig()
    folds = study_folds(runs)
    held, replayed = [], []
    out = {"target_per_hour": args.target, "folds": []}
    for i, test in enumerate(folds):
        _, op, rescored = fold_held_out(folds, i, args.target, cfg)
        rows = [score_record(r, ev) for r, ev in rescored]
        thresholds = (op["warning"], op["critical"])
        again = [
            score_record(replay_record(scorer, paths[r.name], cfg, thresholds), ev)
            for r, ev in test
        ]
        p, q = pool(rows), pool(again)
        held += rows
        replayed += again
        out["folds"].append(
            {"records": [r.name for r, _ in test], "warning": op["warning"], "critical": op["critical"],
             "v_run_se": p["v_run_se"], "false_per_hour": p["false_per_hour"], "af_se": p["af_se"],
             "replayed": {"v_runs": f"{q['v_runs_alerted']}/{q['v_runs']}",
                          "false_per_hour": q["false_per_hour"]}}
        )  # fmt: skip
        print(out["folds"][-1], flush=True)
    p = pool(held)
    out["held_out_pooled"] = p
    out["held_out_replayed_pooled"] = pool(replayed)
    final = operating_point(runs, args.target, cfg)
    out["final"] = {k: final[k] for k in ("warning", "critical")}
    out["final_dev_pooled"] = final["pooled"]
    print(
        "held out:",
        {
            k: p[k]
            for k in (
                "v_runs",
                "v_runs_alerted",
                "v_run_se",
                "false_per_hour",
                "af_se",
                "sv_run_se",
            )
        },
    )
    q = out["held_out_replayed_pooled"]
    print(
        "held out, replayed:",
        {k: q[k] for k in ("v_runs_alerted", "v_run_se", "false_per_hour", "af_se")},
    )
    print("final:", out["final"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
