"""Can training add to MMAE-ECG's aligned beat copy? Closed-form copies, then short trainings.

Version 4 (``prompt_periods = 2``, 0.2 s tokens, 1 in 4 hidden) adds the plain mean of the
aligned copies (-P, +P, -2P, +2P) to output heads that start at zero; its trained heads add
nothing measurable to that copy (masked R² 0.563 trained vs 0.560 copy alone, global scale).
Decided before the results (docs/research/mmae-prompt.md, "Does training add to the copy?"):

* ``closed`` (no training; every row the same network with zero heads, so the copy alone): the
  plain mean of the copies (version 4), the cost-weighted copy (weights ``exp(-cost / tau)`` from
  each direction's match cost on the visible samples around the token, ``tau`` in 0.03 / 0.1 /
  0.3, chosen on windows of the TRAINING records), the same with the lag refined to +-1 sample
  (``prompt_refine_step = 1``), and two oracles that read the hidden samples (not allowed in a
  model; an upper bound on what a gate and a gain could reach): per hidden token the single
  direction whose copy is closest, and the plain mean scaled by its least-squares gain.
* ``train``: the same short training (``plateau.fit_steps``: AdamW, one-cycle, batch 64) from
  the copy for ``prompt_gate`` = mean (version 4), cost (fixed weights, the heads correct) and
  learned (the network also corrects the weights and a gain per copy from the token's state and
  the copies' costs and gains, starting at the cost weights).

Training windows: normal 10 s windows of the DEV training records (108 109 112 115 116 122 203
207 208 230); figures: masked R² per scale on normal windows of the validation records (114 118
124 205 220) against zero (``ecgstream.models.mmae.masked_r2``; the visible-mean predictor's R²
is derived from the two figures it returns). Never reads the DS1 TEST records.

    PYTHONPATH=. nice -n 10 python research/mmae/gate.py closed > research/mmae/results/gate_closed.log
    PYTHONPATH=. nice -n 10 python research/mmae/gate.py train --steps 300 \
        > research/mmae/results/gate_train.log
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ecgstream.models.mmae import MMAE, MMAEConfig, masked_r2
from ecgstream.models.token_core import gather_tokens
from research.mmae.data import VAL, load_dev
from research.mmae.plateau import SPARSE, fit_steps, windows
from research.mmae.prompt import zero_heads as _zero

BASE = {**SPARSE, "prompt_periods": 2}


def zero_heads(model: MMAE) -> MMAE:
    """``model`` with zero output heads (the copy alone)."""
    _zero(model)
    return model


def r2_row(name: str, r2: dict, **extra) -> dict:
    """Masked R² of a predictor, with the visible-mean predictor's R² vs zero derived from it."""
    row = {"variant": name, **extra, **{k: round(v, 4) for k, v in r2.items()}}
    for scale in ("global", "local"):
        # SSE_mean / SSE_zero = (1 - r2_zero) / (1 - r2_mean)
        row[f"{scale}_visible_mean_r2_zero"] = round(
            1 - (1 - r2[f"{scale}_r2_zero"]) / (1 - r2[f"{scale}_r2_mean"]), 4
        )
    return row


class Oracle(MMAE):
    """Zero heads; per hidden token the copy chosen with the hidden samples (an upper bound).

    ``mode = "direction"``: the single direction whose copy is closest to the hidden token
    (falls back to the plain mean where that direction is not visible); ``mode = "gain"``: the
    plain mean times its least-squares gain on the hidden token (clamped to 0-3)."""

    mode = "direction"

    def _prompted(self, xn, vis, keep, hide_g, hide_l):
        cfg = self.cfg
        xv = xn * vis[:, None]
        _, prompts = self.prompt_tokens(xv, vis)
        out = []
        for prompt, hide, seg in zip(prompts, (hide_g, hide_l), (cfg.segment, cfg.local_segment),
                                     strict=True):  # fmt: skip
            truth = gather_tokens(self.segments(xn, seg), hide)  # reads hidden samples
            mean = self.copy(prompt, hide, seg)
            if self.mode == "gain":
                g = (truth * mean).sum(-1, keepdim=True) / ((mean**2).sum(-1, keepdim=True) + 1e-6)
                out.append(mean * g.clamp(0.0, 3.0))
                continue
            pv, pm, cost, gain = prompt
            best, best_err = mean, ((mean - truth) ** 2).sum(-1)
            for c in range(cost.shape[1]):
                only = torch.full_like(cost, 1e3)
                only[:, c] = 0.0
                cand = self._one(prompt, only, hide, seg)
                covered = gather_tokens(pm[:, c].reshape(pm.shape[0], -1, seg), hide).amin(-1)
                err = ((cand - truth) ** 2).sum(-1) + (covered < 1) * 1e9
                better = err < best_err
                best = torch.where(better[..., None], cand, best)
                best_err = torch.where(better, err, best_err)
            out.append(best)
        return out[0], out[1]

    def _one(self, prompt, cost, hide, seg):
        gate = self.cfg.prompt_gate
        self.cfg.prompt_gate = "cost"
        try:
            return self.copy((prompt[0], prompt[1], cost, prompt[3]), hide, seg)
        finally:
            self.cfg.prompt_gate = gate


def closed(val: torch.Tensor, train: torch.Tensor) -> None:
    def copy_r2(x, **over):
        model = zero_heads(MMAE(MMAEConfig(**{**BASE, **over})))
        return masked_r2(model, x, batch=8)

    variants = {}
    for step in (2, 1):
        variants[f"plain mean, lag step {step}"] = {"prompt_refine_step": step}
        for tau in (0.03, 0.1, 0.3):
            variants[f"cost-weighted tau {tau}, lag step {step}"] = {
                "prompt_refine_step": step, "prompt_gate": "cost", "prompt_tau": tau}  # fmt: skip
    on_train = {}
    for name, over in variants.items():
        on_train[name] = copy_r2(train, **over)
        print(json.dumps(r2_row("TRAINING records: copy " + name, on_train[name])), flush=True)
    pick = max(on_train, key=lambda n: on_train[n]["global_r2_zero"] + on_train[n]["local_r2_zero"])
    print(json.dumps({"chosen_on_training_records": pick}), flush=True)
    for name, over in variants.items():
        print(json.dumps(r2_row("copy " + name, copy_r2(val, **over))), flush=True)
    for step in (2, 1):
        for mode in ("direction", "gain"):
            oracle = zero_heads(Oracle(MMAEConfig(**BASE, prompt_refine_step=step)))
            oracle.mode = mode
            r2 = masked_r2(oracle, val, batch=8)
            print(json.dumps(r2_row(f"ORACLE (reads hidden samples): best {mode}, lag step "
                                    f"{step}", r2)), flush=True)  # fmt: skip


def subsample(val: torch.Tensor, train: torch.Tensor, tau: float) -> None:
    """Lag step 1 with and without the sub-sample refinement (training records first)."""
    for name, x in (("TRAINING records: ", train), ("", val)):
        for sub in (False, True):
            for gate in ("mean", "cost"):
                over = {"prompt_refine_step": 1, "prompt_subsample": sub, "prompt_gate": gate,
                        "prompt_tau": tau}  # fmt: skip
                r2 = masked_r2(zero_heads(MMAE(MMAEConfig(**BASE, **over))), x, batch=8)
                label = f"{name}copy {gate}{f' tau {tau}' if gate == 'cost' else ''}, lag step 1"
                print(json.dumps(r2_row(label + (", sub-sample" if sub else ""), r2)), flush=True)


def visible_gain(val: torch.Tensor, train: torch.Tensor, tau: float) -> None:
    """The chosen copy (cost-weighted, lag step 1, sub-sample) with each copy scaled by
    ``1 + alpha * (gain - 1)``, ``gain`` its least-squares gain on the visible samples around the
    token (clamped 0-3): the learned gate with fixed weights, no training."""
    over = {"prompt_refine_step": 1, "prompt_subsample": True, "prompt_gate": "learned",
            "prompt_tau": tau}  # fmt: skip
    for name, x in (("TRAINING records: ", train), ("", val)):
        for alpha in (0.0, 0.25, 0.5, 1.0):
            model = zero_heads(MMAE(MMAEConfig(**BASE, **over)))
            ch, d = 2 * model.cfg.prompt_periods, model.cfg.dim
            with torch.no_grad():
                for gate in (model.gate_global, model.gate_local):
                    for c in range(ch):
                        gate.weight[ch + c, d + ch + c] = alpha
                        gate.bias[ch + c] = -alpha
            r2 = masked_r2(model, x, batch=8)
            print(json.dumps(r2_row(f"{name}copy cost tau {tau}, lag step 1, sub-sample, "
                                    f"visible gain alpha {alpha}", r2)), flush=True)  # fmt: skip


def train(val: torch.Tensor, train_x, steps: int, variants: list[str], tau: float,
          over: dict) -> None:  # fmt: skip
    for gate in variants:
        torch.manual_seed(0)
        model = MMAE(MMAEConfig(**BASE, **over, prompt_gate=gate, prompt_tau=tau))
        before = masked_r2(model, val, batch=8)
        print(json.dumps(r2_row(f"{gate}: copy alone (step 0)", before)), flush=True)
        t0 = time.perf_counter()
        fit_steps(model, train_x, steps, 2e-3, 64)
        seconds = round(time.perf_counter() - t0, 1)
        r2 = masked_r2(model, val, batch=8)
        print(json.dumps(r2_row(f"{gate}: trained", r2, steps=steps, seconds=seconds, **over)),
              flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["closed", "subsample", "gain", "train"])
    ap.add_argument("--refine-step", type=int, default=1)
    ap.add_argument("--subsample", action="store_true")
    ap.add_argument("--no-heads", action="store_true", help="prompt_heads = False")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--val-windows", type=int, default=256)
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--only", nargs="*", default=["mean", "cost", "learned"])
    args = ap.parse_args()
    torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine
    recs = load_dev()
    train_names = [k for k in recs if k not in VAL]
    val = torch.from_numpy(windows(recs, VAL, args.val_windows, 1))
    if args.what in ("closed", "subsample", "gain"):
        tr = torch.from_numpy(windows(recs, train_names, args.val_windows, 2))
        {"closed": closed, "subsample": subsample, "gain": visible_gain}[args.what](
            val, tr, *(() if args.what == "closed" else (args.tau,))
        )
    else:
        over = {"prompt_refine_step": args.refine_step, "prompt_subsample": args.subsample,
                "prompt_heads": not args.no_heads}  # fmt: skip
        train(val, windows(recs, train_names, 4096, 0), args.steps, args.only, args.tau, over)


if __name__ == "__main__":
    main()
