"""Train the consensus detector's score refiner on synthetic anomalies.

Each training record gives ``refiner_excerpts`` excerpts of 60 s. Into each, the
Perlin synthesiser (:mod:`ecgstream.signals.synth`) injects one anomaly, or with probability
``refiner_many`` 2-12 of them (so several anomalies in one window are not taught to be
unusual). The excerpt is preprocessed and scored by the detector like any record, and each
segment is labelled by whether the anomaly covers its centre. The refiner learns those labels
(weighted binary cross-entropy). Segments within ``normal_margin_s`` (0.5 s; the margin that
keeps training windows clear of abnormal beats) of a real abnormal beat have no weight: only the
records' normal material and the synthetic anomalies teach it, never their labels.
"""

from __future__ import annotations

import time

import numpy as np

from ecgstream.signals.labels import BeatAnnotations, normal_mask
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.synth import inject_1d, inject_many
from ecgstream.signals.windows import frame, window_starts
from ecgstream.training.config import TrainConfig
from ecgstream.training.data import TrainingRecord, read_leads, to_model_rate

__all__ = ["EXCERPT_S", "fit_refiner", "synthetic_material"]

#: length of each synthetic excerpt (s), as in the localisation protocol
EXCERPT_S = 60.0


def _usable(rec: TrainingRecord, margin_s: float) -> np.ndarray:
    """Samples of ``rec`` at the record rate at least ``margin_s`` seconds from any real
    abnormal beat (its annotations as :func:`~ecgstream.training.data.load_record` read them)."""
    if rec.beat_samples is None or rec.beat_abnormal is None:
        return np.ones(rec.n_record, bool)
    symbols = np.full(len(rec.beat_samples), "", dtype=object)  # normal_mask does not read them
    beats = BeatAnnotations(rec.beat_samples, symbols, rec.beat_abnormal, rec.fs_record)
    return normal_mask(beats, rec.n_record, margin_s)


def synthetic_material(
    model, cfg: TrainConfig, records: list[TrainingRecord], rng: np.random.Generator, progress=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refiner features ``(N, 1 + leads, segments)``, labels and weights ``(N, segments)``.

    ``model`` is the :class:`~ecgstream.models.consensus.SegmentConsensus` the refiner belongs
    to; its segment scores and levels of the synthetic windows are the features.
    """
    import torch

    from ecgstream.training.trainer import preprocess_config

    pre = preprocess_config(cfg)
    mcfg = model.cfg
    centres = mcfg.segment // 2 + mcfg.stride * np.arange(mcfg.n_segments)
    feats, labels, weights = [], [], []
    for rec in records:
        raw = read_leads(rec.path, cfg.leads)
        usable = _usable(rec, cfg.normal_margin_s)
        n = min(int(round(EXCERPT_S * raw.fs)), raw.n_samples)
        for _ in range(cfg.refiner_excerpts):
            start = int(rng.integers(0, raw.n_samples - n + 1))
            part = raw.signal[start : start + n]
            if rng.random() < cfg.refiner_many:
                out, mask, _ = inject_many(part, raw.fs, rng, count=int(rng.integers(2, 13)))
            else:
                out, mask, _ = inject_1d(part, raw.fs, rng)
            x, delay_s = preprocess(out, raw.fs, pre)
            starts = window_starts(len(x), mcfg.window, cfg.hop)
            if len(starts) == 0:
                continue
            at = starts[:, None] + centres[None, :]  # the segment centres (model samples)
            label = to_model_rate(mask, raw.fs, pre.fs, len(x), delay_s)[at]
            ok = to_model_rate(usable[start : start + n] | mask, raw.fs, pre.fs, len(x), delay_s)
            # a centre before the excerpt's first sample (the filter delay) shows nothing of it
            keep = ok[at] & (at / pre.fs >= delay_s)
            labels.append(label.astype(np.float32))
            weights.append(keep.astype(np.float32))
            cut = frame(x, starts, mcfg.window)
            with torch.no_grad():
                seg_score, ordered, _, _ = model.scored_segments(torch.from_numpy(cut))
                f = model.refiner.features(seg_score, model.segment_levels(ordered))
            feats.append(f.numpy())
        if progress is not None:
            progress.update(1)
    if not feats:
        raise ValueError("no synthetic window could be cut from the training records")
    return np.concatenate(feats), np.concatenate(labels), np.concatenate(weights)


def fit_refiner(
    model, cfg: TrainConfig, records: list[TrainingRecord], progress: bool = True
) -> dict:
    """Train ``model.refiner`` in place on synthetic anomalies in ``records``; returns a summary."""
    import torch
    from torch.nn import functional as F
    from tqdm import tqdm

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    # the refiner's first weights come from the seed too, not from whatever the global torch
    # generator held when the model was built
    for layer in model.refiner.modules():
        if isinstance(layer, torch.nn.Conv1d):
            layer.reset_parameters()
    rng = np.random.default_rng([cfg.seed, 7])
    with tqdm(total=len(records), desc="refiner material", unit="record",
              disable=not progress) as bar:  # fmt: skip
        x, y, w = synthetic_material(model, cfg, records, rng, bar)
    refiner = model.refiner
    refiner.train()
    opt = torch.optim.Adam(refiner.parameters(), lr=3e-3)
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)

    loss_value = float("nan")
    bar = tqdm(range(cfg.refiner_epochs), desc="refiner", unit="epoch",
               disable=not progress)  # fmt: skip
    for _ in bar:
        order = torch.randperm(len(xt))
        total, count = 0.0, 0.0
        for i in range(0, len(order), cfg.batch_size):
            j = order[i : i + cfg.batch_size]
            bce = F.binary_cross_entropy_with_logits(refiner.logits(xt[j]), yt[j], reduction="none")
            loss = (bce * wt[j]).sum() / wt[j].sum().clamp_min(1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * float(wt[j].sum())
            count += float(wt[j].sum())
        loss_value = total / max(count, 1.0)
        bar.set_postfix(loss=f"{loss_value:.4f}")
    refiner.eval()
    if cfg.refiner_floor_quantile > 0:
        with torch.no_grad():
            logit = torch.cat([refiner.logits(xt[i : i + 1024]) for i in range(0, len(xt), 1024)])
        normal = (wt > 0) & (yt < 0.5)
        floor = float(torch.quantile(logit[normal], cfg.refiner_floor_quantile))
        refiner.floor = model.cfg.refiner_floor = round(floor, 4)
    return {
        "floor": refiner.floor,
        "windows": int(len(x)),
        "positive_share": round(float((y * w).sum() / max(w.sum(), 1.0)), 4),
        "loss": round(loss_value, 5),
        "seconds": round(time.perf_counter() - t0, 1),
    }
