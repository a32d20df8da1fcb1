"""DS1 DEV replayed through the streaming pipeline (with localisation, as ``ecgstream evaluate
--alerts``) at the shipped thresholds, under alert policies: ``rise`` off and on.

    python research/alert_policy_replay.py ../shared/data/mitdb-ds1
"""

from __future__ import annotations

import dataclasses
import sys

from ecgstream.alerts.state import AlertConfig
from ecgstream.evaluation.alerts import (
    pool,
    reference_events,
    replay_record,
    score_record,
)
from ecgstream.evaluation.splits import MITDB_DEV, mitdb_paths
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.worker import find_model


def main(folder: str) -> None:
    scorer = Scorer(find_model(None))
    paths = mitdb_paths(folder, MITDB_DEV)
    events = [reference_events(p) for p in paths]
    for policy in ({"rise": 0.0}, {"rise": 1.5}, {"rise": 1.25}, {"cooldown_rise": 1.5}):
        cfg = dataclasses.replace(AlertConfig(), **policy)
        rows, messages = [], 0
        for p, ev in zip(paths, events, strict=True):
            run = replay_record(scorer, p, cfg)
            rows.append(score_record(run, ev))
            messages += sum(1 for m in run.messages if m["kind"] == "anomaly")
        s = pool(rows)
        print(
            f"{policy}: V runs {s['v_runs_alerted']}/{s['v_runs']} ({s['v_run_se']:.2f}), "
            f"false/h {s['false_per_hour']:.2f}, AF {s['af_se']:.2f}, anomaly messages/h "
            f"{messages / s['hours']:.1f}, V latency median/p95 {s['v_latency_median_s']:.1f}/"
            f"{s['v_latency_p95_s']:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1])
