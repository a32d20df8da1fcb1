"""Cache what the pipeline computes per window of DS1 DEV records, for the ventricular-run study.

Replays each record through :class:`ecgstream.streaming.pipeline.Pipeline` (stream start 0, so
times are seconds from the record start) with the shipped model and saves ``OUT/<record>.npz``:
``index`` (window start samples at the model rate), ``start_s``, ``end_s`` (window times, s),
``score`` (calibrated window score), ``point`` (calibrated point scores, ``(windows, window
samples)`` at the model rate, float32) and ``windows`` (the preprocessed windows), plus the
reference beats (``beat_t`` s, ``beat_sym``) and ventricular runs (``v_runs``, ``(n, 2)`` s).
Used to study alert settings without running the model again.

    python research/ventricular_runs/cache.py ../shared/data/mitdb-ds1 --out /tmp/vruns
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ecgstream.evaluation.alerts import reference_events
from ecgstream.evaluation.splits import MITDB_DEV, mitdb_paths
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.replay import plan_streams, record_chunks
from ecgstream.streaming.worker import find_model


def cache_record(scorer: Scorer, path: Path, out: Path) -> None:
    (s,) = plan_streams([str(path)])
    pipe = Pipeline(scorer, keep_scores=True)
    norm = scorer.spec.score_norm
    idx, a, b, sc, pts, wins = [], [], [], [], [], []
    for chunk in record_chunks(s.stream, s.record, 0.0):
        prep = pipe.prepare([Incoming(chunk)], now=0.0)
        for _, w in prep.parts:
            wins.append(w.data[:, 0].astype(np.float32))
        inf = pipe.infer(prep)
        if inf is not None and inf.stepped.point_raw is not None:
            pts.append(
                ((inf.stepped.point_raw - norm["center"]) / norm["scale"]).astype(np.float32)
            )
        res = pipe.complete(prep, inf)
        for r in res.scores:
            idx.append(r["window"])
            a.append(r["start_s"])
            b.append(r["end_s"])
            sc.append(r["score"])
    ev = reference_events(path)
    np.savez_compressed(
        out / f"{s.stream}.npz",
        index=np.array(idx),
        start_s=np.array(a),
        end_s=np.array(b),
        score=np.array(sc),
        point=np.concatenate(pts),
        windows=np.concatenate(wins),
        beat_t=ev.beat_t,
        beat_sym=ev.beat_sym,
        v_runs=np.array(ev.v_runs).reshape(-1, 2),
        fs=scorer.spec.fs,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(find_model(args.model))
    for path in mitdb_paths(args.folder, MITDB_DEV):
        t = time.time()
        cache_record(scorer, Path(path), args.out)
        print(Path(path).name, f"{time.time() - t:.1f}s", flush=True)


if __name__ == "__main__":
    main()
