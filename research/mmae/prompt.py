"""MMAE-ECG prompted with the patient's own rhythm: does copying the aligned beat lift masked R²?

Hypothesis (issue 22 item 2, inside the window): a hidden segment is mostly QRS that its
neighbours do not show, but the same patient's beat one or two periods away does. So give the
network, for every token, the signal one and two beat periods before and after it (``x(t -+ jP)``,
``j = 1..k``), each with its own visibility mask, computed from the VISIBLE samples only:

1. the window's period ``P``: dissimilarity of the visible envelope (``|x|`` averaged over 5
   samples, 20 Hz) with itself over lags 0.3-1.5 s, hidden samples zeroed and each lag's overlap
   normalised; the first minimum within 1.3 times the lowest
   (:func:`ecgstream.models.consensus.rhythm.first_period`, the consensus detector's pick);
2. per token and direction, the lag within ``jP +- refine`` samples (step ``refine_step``) whose
   shifted signal best matches the visible samples in the token's span and ``margin`` samples
   around it (beat-to-beat variation of the RR interval);
3. the aligned prompt values and masks enter each token's embedding (visible tokens and the
   decoder's hidden queries), and the mean of the available aligned values is added to the
   output heads' prediction (a copy path the heads correct).

Everything is argmin/argmax, gathers and pooling (exports to ONNX). This is MMAE-ECG's
``prompt_periods`` option (``ecgstream/models/mmae.py``), whose output heads start at zero (the
network starts from the copy). The rows in ``results/prompt.log`` were produced at commit
29f2c84, where this script held the same prompt as a subclass whose heads started at random
values (same figures for the copy-only rows). Trains a few hundred steps on
normal windows of the DEV training records (108 109 112 115 116 122 203 207 208 230) and reports
masked R² per scale on normal windows of the validation records (114 118 124 205 220) against
predicting zero and the visible mean (``ecgstream.models.mmae.masked_r2``), for the current model,
the prompted one, and the prompted one with one segment in four hidden; ``copy-only`` rows are
the same networks with zero output heads (the prompt copy alone, no learning).

    PYTHONPATH=. nice -n 10 python research/mmae/prompt.py --steps 300 > research/mmae/results/prompt.log
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ecgstream.models.mmae import MMAE, MMAEConfig, masked_r2
from research.mmae.data import VAL, load_dev
from research.mmae.plateau import SPARSE, fit_steps, windows

VARIANTS = {
    # name: (prompt periods (0 = current model), config overrides, lr)
    "current-seg40": (0, {"segment": 40}, 2e-3),
    "prompt2-seg40": (2, {"segment": 40}, 2e-3),
    "prompt2-seg20-mask0.25": (2, SPARSE, 2e-3),
}


def zero_heads(model: MMAE) -> None:
    with torch.no_grad():
        for head in (model.head_global, model.head_local):
            head.weight.zero_()
            head.bias.zero_()


def run(name: str, steps: int, train: np.ndarray, val: np.ndarray, batch: int = 64) -> list[dict]:
    periods, over, lr = VARIANTS[name]
    torch.manual_seed(0)
    cfg = MMAEConfig(**over, prompt_periods=periods)
    model = MMAE(cfg)
    v = torch.from_numpy(val)
    rows = []
    if periods:  # the copy path alone, before any training
        zero_heads(model)
        r2 = masked_r2(model, v, batch=8)
        rows.append({"variant": name + " copy-only", **{k: round(x, 4) for k, x in r2.items()}})
        torch.manual_seed(0)
        model = MMAE(cfg)
    seconds = fit_steps(model, train, steps, lr, batch)
    row = {"variant": name, "steps": steps, "seconds": round(seconds, 1)}
    row.update({k: round(x, 4) for k, x in masked_r2(model, v, batch=8).items()})
    rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--val-windows", type=int, default=256)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine
    recs = load_dev()
    train = windows(recs, [k for k in recs if k not in VAL], 4096, 0)
    val = windows(recs, VAL, args.val_windows, 1)
    for name in args.only or VARIANTS:
        for row in run(name, args.steps, train, val):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
