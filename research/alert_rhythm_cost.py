"""Pipeline time with and without rhythm alerts, same process, alternating runs.

python research/alert_rhythm_cost.py ../shared/data/mitdb-ds1/119
"""

from __future__ import annotations

import sys
import time

from ecgstream.alerts.state import AlertConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.replay import interleave, plan_streams
from ecgstream.streaming.worker import find_model


def main(record: str, copies: int = 50, seconds: float = 300.0) -> None:
    scorer = Scorer(find_model(None))
    steps = list(interleave(plan_streams([record], copies=copies, limit_s=seconds), 0.0))
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(2):
        for rhythm in (False, True):
            pipe = Pipeline(scorer, AlertConfig(rhythm=rhythm))
            t = time.perf_counter()
            for step in steps:
                pipe.process([Incoming(c) for c in step], now=0.0)
            times[rhythm].append(time.perf_counter() - t)
    print({f"rhythm={k}": [round(x, 2) for x in v] for k, v in times.items()})


if __name__ == "__main__":
    main(sys.argv[1])
