"""How much of a hidden ECG segment the visible rest of a 10 s window can tell (no training of
MMAE-ECG): the ceiling that any masked reconstruction faces, on DEV validation normals.

Windows: 256 (96 for the beat copy) normal 10 s windows of the DEV validation records
(114 118 124 205 220), 100 Hz, centred. Segments of 0.1, 0.2 and 0.4 s; R² = 1 - SSE / SSE of
predicting zero, over hidden samples.

- ``linear``: ridge regression from the two adjacent segments (fitted on DEV training records).
- ``mlp``: a 2-layer MLP from the two adjacent segments on each side (DEV training records).
- ``copy``: the hidden segment copied from the signal one and two beats earlier and later
  (period from the visible signal's autocorrelation, offset refined within +-15 samples by the
  match of the adjacent segments); ``honest`` uses only visible samples (as a model must),
  ``oracle`` also copies and compares hidden ones (what no model can do). Every ``k``-th segment is
  hidden (k = 2 is MMAE-ECG's interleaved inference pattern).

    PYTHONPATH=. nice -n 10 python research/mmae/predictability.py > research/mmae/results/predictability.json
"""

from __future__ import annotations

import json

import numpy as np
import torch

from research.mmae.data import VAL, load_dev
from research.mmae.plateau import windows

T = 1000


def neighbours(a: np.ndarray, seg: int, nb: int) -> tuple[np.ndarray, np.ndarray]:
    s = a.reshape(len(a), -1, seg)
    n = s.shape[1]
    x = [np.concatenate([s[:, i - nb : i].reshape(len(a), -1),
                         s[:, i + 1 : i + 1 + nb].reshape(len(a), -1)], 1)
         for i in range(nb, n - nb)]  # fmt: skip
    return np.stack(x, 1).reshape(-1, 2 * nb * seg), s[:, nb : n - nb].reshape(-1, seg)


def linear_r2(tr, va, seg):
    x, y = neighbours(tr, seg, 1)
    w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ y)
    xv, yv = neighbours(va, seg, 1)
    return 1 - ((xv @ w - yv) ** 2).sum() / (yv**2).sum()


def mlp_r2(tr, va, seg, steps=1500):
    x, y = map(torch.tensor, neighbours(tr, seg, 2))
    xv, yv = map(torch.tensor, neighbours(va, seg, 2))
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(),
                            torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, seg))  # fmt: skip
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    for _ in range(steps):
        i = torch.randint(0, len(x), (256,))
        loss = ((m(x[i]) - y[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return 1 - float(((m(xv) - yv) ** 2).sum() / (yv**2).sum())


def copy_r2(va, seg, k):
    sums = {"honest": [0.0, 0.0], "oracle": [0.0, 0.0]}
    lags = np.arange(30, 150)
    for x in va:
        vis = np.ones(T)
        for i in range(0, T // seg, k):
            vis[i * seg : (i + 1) * seg] = 0
        xv = x * vis
        ac = [(xv[:-lag] * xv[lag:]).sum() / max(1, (vis[:-lag] * vis[lag:]).sum()) for lag in lags]
        period = lags[int(np.argmax(ac))]
        for i in range(0, T // seg, k):
            t = i * seg
            tgt = x[t : t + seg]
            ctx = np.r_[max(0, t - seg) : t, t + seg : min(T, t + 2 * seg)]
            for mode in sums:
                num, den = np.zeros(seg), np.zeros(seg)
                for m in (-2, -1, 1, 2):
                    best = None
                    for s in range(m * period - 15, m * period + 16):
                        c = ctx + s
                        ok = (c >= 0) & (c < T)
                        if ok.sum() < 3 or t + s < 0 or t + s + seg > T:
                            continue
                        w = np.ones(ok.sum()) if mode == "oracle" else vis[c[ok]]
                        if w.sum() < 3:
                            continue
                        e = (w * (x[c[ok]] - x[ctx[ok]]) ** 2).sum() / w.sum()
                        if best is None or e < best[0]:
                            best = (e, s)
                    if best:
                        src = np.arange(t, t + seg) + best[1]
                        w = np.ones(seg) if mode == "oracle" else vis[src]
                        num += w * x[src]
                        den += w
                pred = num / np.maximum(den, 1)
                sums[mode][0] += ((pred - tgt) ** 2).sum()
                sums[mode][1] += (tgt**2).sum()
    return {m: round(1 - a / b, 3) for m, (a, b) in sums.items()}


def main() -> None:
    torch.set_num_threads(1)
    recs = load_dev()
    tr = windows(recs, [r for r in recs if r not in VAL], 4096, 0)[:, 0]
    va = windows(recs, VAL, 256, 1)[:, 0]
    tr, va = tr - tr.mean(1, keepdims=True), va - va.mean(1, keepdims=True)
    out = {}
    for seg in (10, 20, 40):
        row = {"segment_s": seg / 100, "linear": round(float(linear_r2(tr, va, seg)), 3),
               "mlp": round(mlp_r2(tr, va, seg), 3)}  # fmt: skip
        for k in (2, 3, 4):
            row[f"copy_hide_1_in_{k}"] = copy_r2(va[:96], seg, k)
        out[str(seg)] = row
        print(json.dumps(row), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
