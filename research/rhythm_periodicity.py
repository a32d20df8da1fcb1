"""How well each window's periodicity (the irregular-rhythm feature) separates annotated AF /
flutter windows from all other windows, on DS1 DEV records, as the streaming pipeline sees them.

    python research/rhythm_periodicity.py ../shared/data/mitdb-ds1
"""

from __future__ import annotations

import sys

import numpy as np

from ecgstream.evaluation.alerts import reference_events, replay_record
from ecgstream.evaluation.metrics import auroc
from ecgstream.evaluation.splits import MITDB_DEV, mitdb_paths
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.worker import find_model


def main(folder: str) -> None:
    scorer = Scorer(find_model(None))
    labels, reg = [], []
    for path in mitdb_paths(folder, MITDB_DEV):
        ev, run = reference_events(path), replay_record(scorer, path)
        tr = np.array([t[1:4] for t in run.rhythm_trace])  # start, end, regularity
        mid = tr[:, :2].mean(axis=1)
        af = np.zeros(len(mid), bool)
        for a, b in ev.af:
            af |= (mid >= a) & (mid < b)
        labels.append(af)
        reg.append(tr[:, 2])
    y, r = np.concatenate(labels), np.concatenate(reg)
    ok = np.isfinite(r)
    print(f"windows {ok.sum()}, AF {y[ok].sum()}; AUROC (low periodicity = AF) "
          f"{auroc(y[ok].astype(int), -r[ok]):.3f}; median periodicity AF {np.median(r[ok & y]):.2f}, "
          f"other {np.median(r[ok & ~y]):.2f}; other windows below 0.30: {(r[ok & ~y] < 0.3).mean():.3f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
