"""Merge per-fold results of ``cv_mitdb.py`` (one file per fold) into one markdown table.

Beat AUROC per fold, their mean and range, and the mean of the per-fold S, V, F vs N AUROCs.

    python research/image/summarise_cv.py research/image/results/final_f*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(paths: list[str]) -> int:
    runs = [json.loads(Path(p).read_text()) for p in sorted(paths)]
    names = list(dict.fromkeys(n for r in runs for n in r["models"]))
    folds = [" ".join(r["folds"][0]) for r in runs]
    print("| model | " + " | ".join(f"fold {f}" for f in folds)
          + " | mean beat AUROC (range) | S vs N | V vs N | F vs N |")  # fmt: skip
    print("|---|" + "---|" * (len(folds) + 4))
    for name in names:
        per = [r["models"].get(name, {}).get("pooled") for r in runs]
        if any(p is None for p in per):
            continue
        beat = [p["beat"] for p in per]
        cls = {c: np.mean([p[c] for p in per if c in p]) for c in "SVF"}
        print(f"| {name} | " + " | ".join(f"{b:.3f}" for b in beat)
              + f" | {np.mean(beat):.3f} ({min(beat):.3f}-{max(beat):.3f}) | "
              + " | ".join(f"{cls[c]:.3f}" for c in "SVF") + " |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
