"""Masked R² per scale of a trained MMAE-ECG checkpoint on normal windows of the DEV validation
records (114 118 124 205 220), against predicting zero and the visible mean; the same figure for
the network with zero output heads (and zero gates) in the same run (the segment-energy score;
with the rhythm prompt, the aligned beat copy alone), for version 4's copy (plain mean, lags in
steps of 2 samples) when the checkpoint makes its copy otherwise, and the visible mean's R²
against zero.

    PYTHONPATH=. python research/mmae/masked_r2.py CHECKPOINT_DIR/model.pt
"""

from __future__ import annotations

import argparse
import json

import torch

from ecgstream.models.mmae import MMAE, MMAEConfig, masked_r2
from research.mmae.data import VAL, load_dev, trained_model
from research.mmae.plateau import windows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--windows", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = trained_model(args.checkpoint)
    x = torch.from_numpy(windows(load_dev(), VAL, args.windows, 1))
    out = {"model": {k: round(v, 4) for k, v in masked_r2(model, x, batch=16).items()}}
    for scale in ("global", "local"):  # SSE_mean / SSE_zero = (1 - r2_zero) / (1 - r2_mean)
        r2z, r2m = out["model"][f"{scale}_r2_zero"], out["model"][f"{scale}_r2_mean"]
        out.setdefault("visible_mean", {})[f"{scale}_r2_zero"] = round(1 - (1 - r2z) / (1 - r2m), 4)
    with torch.no_grad():
        for head in (model.head_global, model.head_local, *(
            getattr(model, g) for g in ("gate_global", "gate_local") if hasattr(model, g)
        )):  # fmt: skip
            head.weight.zero_()
            head.bias.zero_()
    # zero heads (and gates): the segment energy, or with the rhythm prompt the aligned copy alone
    name = "copy_only" if model.cfg.prompt_periods else "zero_output"
    out[name] = {k: round(v, 4) for k, v in masked_r2(model, x, batch=16).items()}
    mc = model.cfg
    if mc.prompt_periods and (mc.prompt_gate, mc.prompt_refine_step, mc.prompt_subsample) != (
        "mean",
        2,
        False,
    ):  # version 4's copy: plain mean of the copies, lags in steps of 2 samples
        v4 = MMAEConfig(**{**mc.to_dict(), "prompt_gate": "mean", "prompt_refine_step": 2,
                           "prompt_subsample": False})  # fmt: skip
        copy_v4 = MMAE(v4)
        copy_v4.load_state_dict(model.state_dict(), strict=False)
        out["copy_v4"] = {k: round(v, 4) for k, v in masked_r2(copy_v4, x, batch=16).items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
