"""Why ventricular runs go unalerted: the run's windows below the threshold, or an alert already
open that sent no message about the run. DS1 DEV only, shipped model, default alert settings.

    python research/alert_missed_runs.py ../shared/data/mitdb-ds1
"""

from __future__ import annotations

import sys
from collections import Counter

from ecgstream.evaluation.alerts import _alerts, _detect, reference_events, replay_record
from ecgstream.evaluation.splits import MITDB_DEV, mitdb_paths
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.worker import find_model


def main(folder: str) -> None:
    scorer = Scorer(find_model(None))
    why: Counter = Counter()
    for path in mitdb_paths(folder, MITDB_DEV):
        ev, run = reference_events(path), replay_record(scorer, path)
        alerts = _alerts(run.messages, ("anomaly", "irregular_rhythm", "tachycardia",
                                        "bradycardia", "pause"))  # fmt: skip
        for (a, b), lat in zip(ev.v_runs, _detect(ev.v_runs, alerts, 10.0), strict=True):
            if lat is not None:
                why["alerted"] += 1
                continue
            peak = max((s["score"] for s in run.scores if s["start_s"] < b and s["end_s"] > a),
                       default=float("nan"))  # fmt: skip
            anomaly = [x for x in alerts if x["kind"] == "anomaly"]
            if peak < run.threshold:
                key = "windows below the threshold"
            elif any(x["start"] <= a <= x["end"] for x in anomaly):
                key = "anomaly alert open, no new spans reported"
            elif any(0 <= a - x["end"] <= 20.0 for x in anomaly):
                key = "cooldown after an alert of the same severity"
            else:
                key = "above the threshold for too few windows"
            why[key] += 1
            print(
                f"{run.name} run {a:.0f}-{b:.0f} s: peak {peak:.1f} (thr {run.threshold:.1f}); {key}"
            )
    print(dict(why))


if __name__ == "__main__":
    main(sys.argv[1])
