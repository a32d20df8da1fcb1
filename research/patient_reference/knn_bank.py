"""k-th nearest snippet: a history term that a few banked ectopic beats do not cancel (DS1 DEV).

The shipped history term (:mod:`ecgstream.runtime.history`) is each segment's distance to its
NEAREST snippet in the stream's bank of recent normal-looking snippets. A window in which
ventricular beats are the majority scores low before the term and enters the bank, and from
then on one banked snippet of that morphology makes the next ventricular beat "known" (the
missed runs of records 124 and 205 in ``docs/alerts.md``). Here the term is the distance to the
k-th nearest snippet: a morphology becomes known only once the bank holds k snippets of it.
Nothing in ``ecgstream/`` changes: the study replaces ``nearest_term`` while it runs.

Variants (fixed before any result was seen): k = 1 (shipped), 4, 16; and no history.
Protocol: that of ``clean_bank.py`` (the protocol's folds ``MITDB_CV_FOLDS`` over the 15 DEV
records, TEST refused; the weight of each fold chosen on the other 12 records by
``choose_weight.fold_weight``; out-of-fold beat AUROC pooled / S / V / F and 10 s windows;
anomaly alerts re-decided from the variant's window scores, warning / critical thresholds per
fold for 1 false alert per monitor-hour on the other 12 records, held-out records scored).

    nice -n 10 python research/patient_reference/knn_bank.py ../shared/data/mitdb-ds1 \\
        --out research/patient_reference/knn_bank.json | tee research/patient_reference/knn_bank.txt
"""

# ruff: noqa: E402
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # research/: sibling studies
from choose_weight import MODEL, record_parts
from clean_bank import held_out_row

import ecgstream.runtime.history as history
from ecgstream.alerts.state import AlertConfig
from ecgstream.evaluation.alerts import reference_events, replay_record
from ecgstream.evaluation.splits import MITDB_CV_FOLDS, MITDB_DEV, MITDB_TEST
from ecgstream.runtime.scorer import Scorer

KS = (1, 4, 16)
SHIPPED_NEAREST = history.nearest_term


def kth_term(k: int):
    """``nearest_term`` with the k-th smallest distance in place of the smallest."""

    def term(snips: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray) -> np.ndarray:
        if k == 1:
            return SHIPPED_NEAREST(snips, bank, bank_sq)
        rel = history.relative_distances(snips, bank, bank_sq)
        kk = min(k, rel.shape[-1]) - 1
        return np.partition(rel, kk, axis=-1)[..., kk].astype(np.float64)

    return term


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--target", type=float, default=1.0, help="false alerts per monitor-hour")
    args = ap.parse_args()
    folds = [tuple(f) for f in MITDB_CV_FOLDS]
    names = sorted({r for f in folds for r in f})
    assert sorted(names) == sorted(MITDB_DEV) and not set(names) & set(MITDB_TEST)
    t_start = time.time()
    scorer = Scorer(MODEL, batch_size=64)
    runs = {n: (replay_record(scorer, args.folder / n), reference_events(args.folder / n))
            for n in names}  # fmt: skip
    weightless = _weightless_scorer()  # the term apart from the score, as choose_weight does
    parts_by = {}
    for k in KS:
        history.nearest_term = kth_term(k)
        try:
            parts_by[k] = {n: record_parts(weightless, n) for n in names}
        finally:
            history.nearest_term = SHIPPED_NEAREST
        print(f"k = {k}: terms done ({time.time() - t_start:.0f} s)", flush=True)
    cfg = AlertConfig()
    results: dict = {"records": names, "folds": [list(f) for f in folds], "rows": {}}
    for v in ("none", *KS):
        results["rows"][str(v)] = held_out_row(
            parts_by[1 if v == "none" else v], runs, names, folds, v != "none", args.target, cfg,
            ("v_runs", "v_runs_alerted", "false_per_hour", "af_alerted", "af_episodes"),
        )  # fmt: skip
    print(
        f"\n{'k':6s} pooled S     V     F     10s  | fold means pooled S V | V runs  false/h | weights"
    )
    for v, r in results["rows"].items():
        o, sp, a = r["oof"], r["spread"], r["alerts"]
        print(f"{v:6s} " + " ".join(f"{o[m]:.3f}" for m in ("beat", "S", "V", "F", "window_10s"))
              + " | " + " ".join(f"{sp[m]['mean']:.3f}+-{sp[m]['std']:.3f}" for m in ("beat", "S", "V"))
              + f" | {a['v_runs_alerted']}/{a['v_runs']} {a['false_per_hour']:.2f} | "
              + " ".join(f"{f['w']:.3g}" for f in r["folds"])
              + f" | missed {r['v_runs_missed_by_record']}")  # fmt: skip
    results["seconds"] = time.time() - t_start
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")


def _weightless_scorer() -> Scorer:
    """A scorer of the shipped model with history weight 1 (the term apart from the score), as
    ``choose_weight.main`` makes it."""
    import shutil
    import tempfile

    from ecgstream.runtime.model_file import read_spec, update_spec

    tmp = Path(tempfile.mkdtemp(prefix="knn-bank-"))
    model = tmp / "history.onnx"
    shutil.copy(MODEL, model)
    gate = (read_spec(MODEL).history or {}).get("gate")
    update_spec(model, history={"kind": "snippets", "weight": 1.0, "gate": gate})
    return Scorer(model, batch_size=64)


if __name__ == "__main__":
    main()
