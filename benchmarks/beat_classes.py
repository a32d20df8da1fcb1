"""Beat AUROC per AAMI class of exported models on MIT-BIH records, side by side.

Each class's beats (S: A a J S supraventricular, V: V E ventricular, F: F fusion) against the
normal beats (N L R e j) of the same records, pooled over records; a beat's score is the max point
score within +-150 ms of its annotation, as in ``ecgstream evaluate``. The pooled beat AUROC is
dominated by the most numerous class, so a change that costs one class (e.g. the timing of
supraventricular premature beats) can hide in it. Defaults to the DEV records (choices are made
on them; pass ``--records`` for others).

    python benchmarks/beat_classes.py models/consensus-mitdb-mlii.onnx OTHER.onnx
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from _workload import model_records_parser  # benchmarks/ is on sys.path when run as a script


def class_aurocs(model: Path, folder: Path, records: list[str], batch_size: int = 256) -> dict:
    """``{class: (beats, AUROC)}`` and ``all`` (every abnormal beat) for one model."""
    from ecgstream.evaluation.crossval import class_aurocs as per_class
    from ecgstream.evaluation.metrics import auroc, beat_scores
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.labels import AAMI_ABNORMAL, read_beats
    from ecgstream.signals.records import read_record

    scorer = Scorer(model, batch_size=batch_size)
    scores, symbols = [], []
    for name in records:
        rec = read_record(folder / name)
        beats = read_beats(folder / name)
        s = beat_scores(scorer.score_record(rec).point_score, beats.samples, rec.fs)
        ok = np.isfinite(s)
        scores.append(s[ok])
        symbols.append(beats.symbols[ok])
    s, sym = np.concatenate(scores), np.concatenate(symbols)
    out: dict = {
        c: (b["n"], b["auroc"]) for c, b in per_class(sym, s).items() if b["auroc"] is not None
    }
    abnormal = np.isin(sym, sorted(AAMI_ABNORMAL))
    out["all"] = (int(abnormal.sum()), auroc(abnormal.astype(int), s))
    return out


def main() -> None:
    from ecgstream.evaluation.splits import MITDB_DEV

    args = model_records_parser(__doc__, list(MITDB_DEV), "default: DEV records").parse_args()
    results = {}
    for model in args.models:
        res = class_aurocs(model, args.data, args.records)
        results[str(model)] = res
        print(model, "  ".join(f"{c} ({n} beats) {a:.4f}" for c, (n, a) in res.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"records": args.records, "models": results}, indent=1))


if __name__ == "__main__":
    main()
