"""Is what training adds to MMAE-ECG's copy more than the draw of windows? A paired bootstrap.

For a checkpoint with the rhythm prompt: per validation window (normal 10 s windows of records
114 118 124 205 220, the windows of ``masked_r2.py``) and per scale, the squared error of the
trained reconstruction, of the same network with zero heads and gates (its copy alone) and of
predicting zero, on the samples each pass hides. The masked R² gain of training over the copy is
``(SSE_copy - SSE_trained) / SSE_zero``; its 95 % interval resamples the windows (2,000 draws).

    PYTHONPATH=. python research/mmae/paired_r2.py /tmp/mmae_v5/ck/model.pt
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from research.mmae.data import VAL, load_dev, trained_model
from research.mmae.plateau import windows


def per_window_sse(model, x: torch.Tensor, batch: int = 16) -> dict[str, np.ndarray]:
    """Per window ``(N,)``: SSE of the reconstruction and of zero on each scale's hidden samples."""
    model.eval()
    out: dict[str, list] = {}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xn, pred_g, pred_l = model.reconstruct(x[i : i + batch])
            t = xn.unsqueeze(2)
            for scale, pred, mask in (("global", pred_g, model.mask_global),
                                      ("local", pred_l, model.mask_local)):  # fmt: skip
                out.setdefault(f"{scale}_pred", []).append(
                    (((pred - t) ** 2) * mask).sum((1, 2, 3)).numpy()
                )
                out.setdefault(f"{scale}_zero", []).append(
                    ((t.expand_as(pred) ** 2) * mask).sum((1, 2, 3)).numpy()
                )
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--windows", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = trained_model(args.checkpoint)
    x = torch.from_numpy(windows(load_dev(), VAL, args.windows, 1))
    trained = per_window_sse(model, x)
    with torch.no_grad():
        for name in ("head_global", "head_local", "gate_global", "gate_local"):
            if hasattr(model, name):
                getattr(model, name).weight.zero_()
                getattr(model, name).bias.zero_()
    copy = per_window_sse(model, x)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(x), size=(2000, len(x)))
    out = {}
    for scale in ("global", "local"):
        sp, sc, sz = trained[f"{scale}_pred"], copy[f"{scale}_pred"], trained[f"{scale}_zero"]
        gain = (sc.sum() - sp.sum()) / sz.sum()
        boot = (sc[draws].sum(1) - sp[draws].sum(1)) / sz[draws].sum(1)
        out[scale] = {
            "r2_trained": round(float(1 - sp.sum() / sz.sum()), 4),
            "r2_copy": round(float(1 - sc.sum() / sz.sum()), 4),
            "gain": round(float(gain), 4),
            "gain_95": [round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])],
            "windows_better": round(float((sp < sc).mean()), 3),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
