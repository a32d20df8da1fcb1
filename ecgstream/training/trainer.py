"""Training MMAE-ECG on normal material, with validation on held-out records, checkpoints and resume.

:func:`train_mmae` is the whole run: read and preprocess records, split them by record (or PTB-XL
patient), train on normal windows only, validate every epoch on the held-out records, keep the
best epoch by the validation figure, calibrate scores on validation normals and (optionally)
export the ONNX model with its card. Runs are reproducible: the data order and the masks of
epoch ``e`` depend only on ``(seed, e)``, so a resumed run gives the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgstream.runtime.model_file import ModelSpec
from ecgstream.signals.preprocess import PreprocessConfig
from ecgstream.signals.windows import frame, overlap_average, to_record_rate, window_starts
from ecgstream.training.calibration import calibrate
from ecgstream.training.config import TrainConfig
from ecgstream.training.data import (
    NoNormalWindowsError,
    TrainingRecord,
    collect_records,
    load_record,
    normal_starts,
    split_records,
)

__all__ = [
    "TrainResult",
    "build_model",
    "preprocess_config",
    "prepare_data",
    "score_torch",
    "validate",
    "train_mmae",
    "load_checkpoint",
]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of a run: the best model (eval mode), its calibrated spec, and the epoch history."""

    model: object
    spec: ModelSpec
    history: list[dict] = field(default_factory=list)
    model_path: Path | None = None
    seconds: float = 0.0


def preprocess_config(cfg: TrainConfig) -> PreprocessConfig:
    return PreprocessConfig(fs=cfg.fs, highpass_hz=cfg.highpass_hz, lowpass_hz=cfg.lowpass_hz)


def mmae_config(cfg: TrainConfig):
    """The :class:`~ecgstream.models.mmae.MMAEConfig` of ``cfg``: its ``[model]`` table with its
    leads and window."""
    if cfg.model != "mmae":
        raise ValueError(f"not an MMAE-ECG training config: model = {cfg.model!r}")
    return cfg.model_config()


def build_model(cfg: TrainConfig):
    """A fresh MMAE-ECG for ``cfg`` (raises ``ValueError`` on inconsistent sizes)."""
    from ecgstream.models.mmae import MMAE

    return MMAE(mmae_config(cfg))


def prepare_data(
    cfg: TrainConfig, paths: list[str | Path], progress: bool = False
) -> tuple[list[TrainingRecord], list[TrainingRecord]]:
    """Read and preprocess the training and validation records named by ``paths`` and ``cfg``.

    PTB-XL records are split by ``strat_fold`` (train folds, NORM-only; validation folds, all
    labelled); other records by name (``val_records``, else a seeded ``val_fraction`` of them).
    """
    from tqdm import tqdm

    items = collect_records(paths, cfg.ptbxl_resolution)
    if cfg.records:
        keep = set(cfg.records)
        items = [(p, m) for p, m in items if p.name in keep]
    if cfg.exclude:
        drop = set(cfg.exclude)
        items = [(p, m) for p, m in items if p.name not in drop]
    if not items:
        raise ValueError(f"no records selected from {[str(p) for p in paths]}")
    ptb = [(p, m) for p, m in items if m]
    plain = [(p, m) for p, m in items if not m]
    train_items, val_items = [], []
    if ptb:
        val_folds, train_folds = set(cfg.ptbxl_val_folds), set(cfg.ptbxl_train_folds)
        train_items += [(p, m) for p, m in ptb if m["fold"] in train_folds and m["label"] == 0]
        val_items += [(p, m) for p, m in ptb if m["fold"] in val_folds and m["label"] >= 0]
    if plain:
        names = [p.name for p, _ in plain]
        if cfg.val_records:
            unknown = sorted(set(cfg.val_records) - set(names))
            if unknown:
                raise ValueError(f"validation records {unknown} are not among the selected records")
            val_names = set(cfg.val_records)
        else:
            val_names = set(split_records(names, cfg.val_fraction, cfg.seed)[1])
        train_items += [(p, m) for p, m in plain if p.name not in val_names]
        val_items += [(p, m) for p, m in plain if p.name in val_names]
    if not train_items:
        raise NoNormalWindowsError("no training records left after the validation split")
    if not val_items:
        raise ValueError("no validation records: pass --val-records or more records")
    pre = preprocess_config(cfg)

    def load(group: list) -> list[TrainingRecord]:
        out = []
        for p, m in tqdm(
            group, desc="reading records", unit="rec", disable=not progress, leave=False
        ):
            out.append(load_record(p, cfg.leads, pre, cfg.window, cfg.normal_margin_s,
                                   m.get("label"), m.get("patient", "")))  # fmt: skip
        return out

    return load(train_items), load(val_items)


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch + 1])


def sample_windows(
    recs: list[TrainingRecord],
    starts: list[np.ndarray],
    n: int,
    window: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n`` random normal windows ``(n, leads, window)``: a record uniformly, then a start in it."""
    usable = [i for i, s in enumerate(starts) if len(s)]
    which = rng.choice(usable, size=n)
    out = np.empty((n, recs[0].x.shape[1], window), np.float32)
    for j, i in enumerate(which):
        s = int(starts[i][rng.integers(len(starts[i]))])
        out[j] = recs[i].x[s : s + window].T
    return out


def score_torch(
    model, rec: TrainingRecord, window: int, hop: int, batch: int = 256, max_s: float | None = None
) -> dict:
    """Score one preprocessed record with the eager model, as the ONNX :class:`Scorer` would.

    Returns raw ``point`` scores at the record rate, window ``starts`` (model rate), raw window
    ``scores`` and window bounds at the record rate. ``max_s`` scores only the first seconds
    (NaN after them), for quick per-epoch validation.
    """
    import torch

    x = rec.x if max_s is None else rec.x[: max(window, int(max_s * rec.fs_model))]
    starts = window_starts(len(x), window, hop)
    windows = frame(x, starts, window)
    points, scores = [], []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            p, w = model(torch.from_numpy(windows[i : i + batch]))
            points.append(p.numpy())
            scores.append(w.numpy())
    point_raw = np.concatenate(points)
    fs_model = rec.fs_model
    point = to_record_rate(overlap_average(point_raw, starts, len(x)), fs_model, rec.fs_record,
                           rec.n_record, rec.delay_s)  # fmt: skip
    w_start = np.clip(np.rint((starts / fs_model - rec.delay_s) * rec.fs_record), 0, rec.n_record)
    w_end = np.clip(
        np.rint(((starts + window) / fs_model - rec.delay_s) * rec.fs_record), 0, rec.n_record
    )
    return {"point": point, "scores": np.concatenate(scores), "w_start": w_start.astype(np.int64),
            "w_end": w_end.astype(np.int64)}  # fmt: skip


def _window_normal(rec: TrainingRecord, w_start: np.ndarray, w_end: np.ndarray) -> np.ndarray:
    """Per window: 0 normal, 1 abnormal, -1 unknown (no beats), from beats or the record label."""
    from ecgstream.signals.labels import BeatAnnotations, window_labels

    if rec.beat_samples is not None:
        beats = BeatAnnotations(rec.beat_samples, np.array([]), rec.beat_abnormal, rec.fs_record)
        return window_labels(beats, w_start, w_end)
    label = 0 if rec.record_label is None else rec.record_label
    return np.full(len(w_start), label, np.int8)


def validate(
    model,
    cfg: TrainConfig,
    val_recs: list[TrainingRecord],
    val_windows: np.ndarray,
    max_s: float | None = None,
) -> dict:
    """Validation figures: loss on normal windows, beat and record AUROC, normal window scores.

    ``max_s`` limits scoring to the first seconds of each record (per-epoch validation).
    """
    import torch

    from ecgstream.evaluation.metrics import auroc, beat_scores

    model.eval()
    gen = torch.Generator().manual_seed(12345)
    losses = []
    if hasattr(model, "loss"):  # training-free detectors have no loss
        with torch.no_grad():
            losses = [float(model.loss(torch.from_numpy(val_windows[i : i + 256]), gen))
                      for i in range(0, len(val_windows), 256)]  # fmt: skip
    out: dict = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
    beat_y, beat_s, rec_y, rec_s, normal_scores = [], [], [], [], []
    for rec in val_recs:
        res = score_torch(model, rec, cfg.window, cfg.hop, max_s=max_s)
        labels = _window_normal(rec, res["w_start"], res["w_end"])
        normal_scores.append(res["scores"][labels == 0])
        if rec.beat_samples is not None and len(rec.beat_samples):
            bs = beat_scores(res["point"], rec.beat_samples, rec.fs_record)
            ok = np.isfinite(bs)
            beat_y.append(rec.beat_abnormal[ok])
            beat_s.append(bs[ok])
        if rec.record_label is not None:
            rec_y.append(rec.record_label)
            rec_s.append(float(np.max(res["scores"])))
    if beat_y:
        y = np.concatenate(beat_y)
        if 0 < y.sum() < len(y):
            out["beat_auroc"] = float(auroc(y, np.concatenate(beat_s)))
    if rec_y and 0 < sum(rec_y) < len(rec_y):
        out["record_auroc"] = float(auroc(np.array(rec_y), np.array(rec_s)))
    out["normal_scores"] = np.concatenate(normal_scores) if normal_scores else np.zeros(0)
    return out


def _select(cfg: TrainConfig, figures: dict) -> tuple[str, float]:
    """The model-selection figure (larger is better) and its name."""
    metric = cfg.select_metric
    if metric == "auto":
        metric = next((m for m in ("beat_auroc", "record_auroc") if m in figures), "val_loss")
    if metric not in figures:
        raise ValueError(f"selection metric {metric!r} is not available on this validation set")
    value = figures[metric]
    return metric, (-value if metric == "val_loss" else value)


def _plain(obj):
    """``obj`` with numpy scalars and paths as Python values, so ``torch.load(weights_only=True)``
    reads it back (tensors, containers and Python scalars only; no pickled classes)."""
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _checkpoint(path: Path, **state) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(_plain(state), tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by :func:`train_mmae` (``last.pt``, ``best.pt`` or ``model.pt``).

    Read with ``weights_only=True``: tensors and plain containers only, so a crafted file
    cannot run code when it is loaded.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def train_mmae(
    cfg: TrainConfig,
    paths: list[str | Path],
    progress: bool = True,
    resume: bool = False,
    data: tuple[list[TrainingRecord], list[TrainingRecord]] | None = None,
) -> TrainResult:
    """Train, select, calibrate and (if ``cfg.model_out``) export one MMAE-ECG model."""
    import torch
    from tqdm import tqdm

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    train_recs, val_recs = data if data is not None else prepare_data(cfg, paths, progress)
    window = cfg.window
    starts = [normal_starts(r, window) for r in train_recs]
    n_train_windows = int(sum(len(s) for s in starts))
    if n_train_windows == 0:
        raise NoNormalWindowsError(
            f"no {cfg.window_s:g} s window of the {len(train_recs)} training records "
            f"({', '.join(r.name for r in train_recs[:5])}{', ...' if len(train_recs) > 5 else ''}) "
            "is free of abnormal beats; use shorter windows or other records"
        )
    val_starts = [normal_starts(r, window) for r in val_recs]
    if sum(len(s) for s in val_starts):
        val_windows = sample_windows(
            val_recs, val_starts, cfg.val_windows, window, _rng(cfg.seed, -1)
        )
    else:
        val_windows = np.zeros((0, len(cfg.leads), window), np.float32)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    warm = max(1, cfg.steps_per_epoch // 2)
    sched = torch.optim.lr_scheduler.LambdaLR(  # plain floats: checkpoints load weights_only
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total))))
        ),
    )
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    best = {"value": -np.inf, "epoch": -1, "state": None, "metric": ""}
    start_epoch = 0
    if resume:
        if not ckpt_dir or not (ckpt_dir / "last.pt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint last.pt in {ckpt_dir}")
        state = load_checkpoint(ckpt_dir / "last.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        torch.set_rng_state(state["torch_rng"])

    bar = tqdm(total=total, initial=start_epoch * cfg.steps_per_epoch, desc="training", unit="step",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    stale = 0 if not history else start_epoch - 1 - best["epoch"]
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        model.train()
        rng = _rng(cfg.seed, epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        losses = []
        for _ in range(cfg.steps_per_epoch):
            x = torch.from_numpy(sample_windows(train_recs, starts, cfg.batch_size, window, rng))
            loss = model.loss(x, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
        figures = validate(model, cfg, val_recs, val_windows, cfg.val_max_s or None)
        metric, value = _select(cfg, figures)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
               **{k: v for k, v in figures.items() if k != "normal_scores"}}  # fmt: skip
        history.append(row)
        if value > best["value"]:
            best = {"value": value, "epoch": epoch, "metric": metric,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}  # fmt: skip
            stale = 0
        else:
            stale += 1
        post = {
            "epoch": epoch + 1,
            "loss": f"{row['train_loss']:.4f}",
            "val_loss": f"{row['val_loss']:.4f}",
        }
        post[metric] = f"{figures[metric]:.3f}"
        bar.set_postfix(**post, best=best["epoch"] + 1)
        log.info("epoch %d: %s", epoch + 1, row)
        if ckpt_dir:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "history": history, "best": best, "epoch": epoch, "config": cfg.to_dict(),
                     "torch_rng": torch.get_rng_state()}  # fmt: skip
            _checkpoint(ckpt_dir / "last.pt", **state)
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    figures = validate(model, cfg, val_recs, val_windows)
    normal_scores = figures.pop("normal_scores")
    score_norm, thresholds = calibrate(normal_scores, cfg.false_alarm)
    spec = make_spec(
        cfg,
        model,
        train_recs,
        val_recs,
        n_train_windows,
        history,
        best,
        figures,
        score_norm,
        thresholds,
    )
    seconds = time.perf_counter() - t0
    spec.training["train_seconds"] = round(seconds, 1)
    if ckpt_dir:
        _checkpoint(
            ckpt_dir / "model.pt",
            model=model.state_dict(),
            spec=spec.to_json(),
            config=cfg.to_dict(),
        )
    result = TrainResult(model, spec, history, None, seconds)
    if cfg.model_out:
        from ecgstream.training.export import export_model

        result.model_path = export_model(model, spec, cfg.model_out)
    return result


def make_spec(
    cfg, model, train_recs, val_recs, n_windows, history, best, figures, score_norm, thresholds
) -> ModelSpec:
    """The :class:`ModelSpec` of a trained MMAE-ECG, with its training summary."""
    from ecgstream.models.mmae import count_parameters, estimate_macs

    def rnd(v):
        return round(float(v), 4) if isinstance(v, float) else v

    return record_spec(
        cfg,
        "mmae",
        train_recs,
        val_recs,
        score_norm,
        thresholds,
        training={
            "windows": n_windows,
            "epochs": len(history),
            "best_epoch": best["epoch"] + 1,
            "selection_metric": best["metric"],
            "seed": cfg.seed,
            "validation": {k: rnd(v) for k, v in figures.items()},
        },
        params={
            **model.cfg.to_dict(),
            "parameters": count_parameters(model),
            "macs_per_window": estimate_macs(model),
        },
    )


def record_spec(
    cfg: TrainConfig,
    kind: str,
    train_recs: list[TrainingRecord],
    val_recs: list[TrainingRecord],
    score_norm: dict,
    thresholds: dict,
    training: dict,
    params: dict,
    name: str | None = None,
    **extra,
) -> ModelSpec:
    """The :class:`ModelSpec` of a model trained on WFDB records: rate, window, leads,
    preprocessing and calibration from ``cfg``, and a training summary that always names the
    training and validation records and the configuration (``training`` adds to it)."""
    return ModelSpec(
        name=name or cfg.name,
        version=cfg.version,
        kind=kind,
        leads=list(cfg.leads),
        window=cfg.window,
        hop=cfg.hop,
        preprocessing=preprocess_config(cfg).to_dict(),
        score_norm=score_norm,
        thresholds=thresholds,
        training={
            "records": [r.name for r in train_recs],
            "val_records": [r.name for r in val_recs],
            **training,
            "config": cfg.to_dict(),
        },
        params=params,
        history=cfg.history_spec(thresholds),
        **extra,
    )
