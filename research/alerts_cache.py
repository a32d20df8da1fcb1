"""Cache what the streaming pipeline sees of each record: window scores and preprocessed windows.

Replays records (stream start t0 = 0, so times are seconds from the record start) through
:class:`ecgstream.streaming.pipeline.Pipeline` with the shipped model and saves, per record,
``OUT/<record>.npz`` with ``index`` (window start samples at the model rate), ``start_s``,
``end_s``, ``score`` (calibrated) and ``windows`` (the preprocessed windows, float32). Used to
study alert settings without re-running the model.

    python research/alerts_cache.py ../shared/data/mitdb-ds1 --out /tmp/alerts-cache
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.replay import plan_streams, record_chunks
from ecgstream.streaming.worker import find_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(find_model(args.model))
    for s in plan_streams(args.paths):
        t = time.time()
        pipe = Pipeline(scorer, keep_scores=True)
        idx, a, b, sc, wins = [], [], [], [], []
        for chunk in record_chunks(s.stream, s.record, 0.0):
            prep = pipe.prepare([Incoming(chunk)], now=0.0)
            for _, w in prep.parts:
                wins.append(w.data[:, 0].astype(np.float32))
            res = pipe.complete(prep, pipe.infer(prep))
            for r in res.scores:
                idx.append(r["window"])
                a.append(r["start_s"])
                b.append(r["end_s"])
                sc.append(r["score"])
        np.savez(
            args.out / f"{s.stream}.npz",
            index=np.array(idx),
            start_s=np.array(a),
            end_s=np.array(b),
            score=np.array(sc),
            windows=np.concatenate(wins) if wins else np.zeros((0, 0), np.float32),
        )
        print(s.stream, len(sc), f"{time.time() - t:.1f}s", flush=True)


if __name__ == "__main__":
    main()
