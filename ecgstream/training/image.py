"""Training of the image methods: front end fit, masked encoder pre-training, then one head.

Stages, all on normal windows ``(n, n_leads, window)`` at the model rate:

1. fit the front end's normalisation (per-frequency mean/scale of the log-spectrogram);
2. train the :class:`~ecgstream.models.encoder.PatchEncoder` as a masked reconstructor, freeze it,
   and fit the token standardisation;
3. train the head on the frozen tokens (cached once): UniAD-style with feature jitter, PBAS-style
   with feature-level synthesis, OneNIP-style with Perlin-corrupted windows
   (:mod:`ecgstream.signals.synth`) for its restoration stream and refiner.

Each stage runs for a number of steps or until its share of ``time_budget_s`` is spent, so
a generic-series model trains within a fixed time. Runs are seeded.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ecgstream.models.encoder import (
    ImageDetector,
    MaskedReconstructor,
    PatchEncoder,
    SelfReference,
)
from ecgstream.models.frontends import build_frontend
from ecgstream.models.onenip import OneNIPHead
from ecgstream.models.pbas import PBASHead
from ecgstream.models.uniad import UniADHead
from ecgstream.runtime.model_file import INPUT_NAME, OUTPUT_NAMES, ModelSpec, write_spec
from ecgstream.signals.synth import inject_1d

__all__ = [
    "IMAGE_KINDS",
    "ImageConfig",
    "ImageTrainResult",
    "fit_image_detector",
    "fit_records",
    "build_detector",
    "load_detector",
    "export_detector",
    "perlin_windows",
    "register_image_kind",
]

log = logging.getLogger(__name__)

IMAGE_KINDS = ("uniad", "pbas", "onenip")

#: ECG spectrograms keep the bins up to this frequency (Hz): the P-QRS-T energy; above it the
#: rows hold noise that dominated the score maps (docs/research/image-studies.md)
ECG_SPECTROGRAM_MAX_HZ = 20.0
#: ECG spectrograms: the self-reference compares patches of this length (s) with the window's
#: patches more than this far away (s): about a QRS complex, and beyond the beat itself
ECG_SELF_REF_PATCH_S, ECG_SELF_REF_EXCLUDE_S = 0.12, 0.3


@dataclass
class ImageConfig:
    """Settings of one image-method model (lengths in samples at the model rate)."""

    kind: str = "uniad"
    frontend: str = "spectrogram"  # spectrogram | channel_time
    n_fft: int = 32
    stft_hop: int = 4
    spec_scale: str = (
        "fixed"  # spectrogram: fixed (calibrated log-energy) | window (per-window z-score)
    )
    spec_rows: int = 0  # spectrogram: keep the lowest rows frequency bins (0: all)
    # per-window self-reference (image columns; 0: none): each patch of self_ref_patch columns
    # against its nearest patch of the window more than self_ref_exclude columns away
    self_ref_patch: int = 0
    self_ref_exclude: int = 0
    global_plane: bool = True  # channel_time: add the globally standardised plane (level changes)
    width: int = 32
    encoder_norm: str = "batch"  # batch (fixed once frozen: keeps image level) | group (per image)
    feat_dim: int = 64
    dim: int = 64
    radius: int = 1
    jitter: float = 0.2
    n_centres: int = 1024
    kmeans_iters: int = 0  # 0: centres are a random coreset of normal tokens (else k-means)
    encoder_steps: int = 600
    head_steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    mask_ratio: float = 0.4
    seed: int = 0
    time_budget_s: float | None = None  # wall-clock limit of the whole fit (None: step counts only)
    max_windows: int = 6000  # cap on cached training windows

    def to_dict(self) -> dict:
        return asdict(self)


def _frontend_params(cfg: ImageConfig) -> dict:
    if cfg.frontend == "spectrogram":
        return {
            "frontend": "spectrogram",
            "n_fft": cfg.n_fft,
            "hop": cfg.stft_hop,
            "scale": cfg.spec_scale,
            "rows": cfg.spec_rows,
        }
    return {"frontend": cfg.frontend, "global_plane": cfg.global_plane}


def _build_encoder(cfg: ImageConfig, shape: tuple[int, int, int]) -> PatchEncoder:
    """The (untrained) encoder of ``cfg`` for front-end images of ``(channels, rows, cols)``."""
    return PatchEncoder(*shape, cfg.width, cfg.feat_dim, norm=cfg.encoder_norm)


def _build_head(cfg: ImageConfig, grid: tuple[int, int], feat_dim: int) -> torch.nn.Module:
    if cfg.kind == "uniad":
        return UniADHead(feat_dim, grid, cfg.dim, radius=cfg.radius, jitter=cfg.jitter)
    if cfg.kind == "pbas":
        return PBASHead(feat_dim, n_centres=cfg.n_centres)
    if cfg.kind == "onenip":
        return OneNIPHead(feat_dim, grid, cfg.dim, radius=cfg.radius, jitter=cfg.jitter)
    raise ValueError(f"unknown image model kind {cfg.kind!r}; choose from {', '.join(IMAGE_KINDS)}")


def _build_self_ref(cfg: ImageConfig, frontend: torch.nn.Module) -> SelfReference | None:
    if cfg.self_ref_patch <= 0:
        return None
    c, rows, cols = frontend.image_shape()
    return SelfReference(c, rows, cols, cfg.self_ref_patch, cfg.self_ref_exclude)


def perlin_windows(
    windows: np.ndarray, rng: np.random.Generator, min_frac: float = 1 / 16, max_frac: float = 1 / 3
) -> tuple[np.ndarray, np.ndarray]:
    """A Perlin anomaly in each window ``(n, L, W)``: corrupted windows and masks ``(n, W)`` bool.

    Span lengths are ``min_frac..max_frac`` of the window.
    """
    n, _, w = windows.shape
    out = np.empty_like(windows, dtype=np.float32)
    masks = np.zeros((n, w), dtype=bool)
    lo, hi = max(2, int(w * min_frac)), max(3, int(w * max_frac))
    for i in range(n):
        y, m, _ = inject_1d(windows[i].T, 1.0, rng, min_len_s=lo, max_len_s=hi)
        out[i], masks[i] = y.T, m
    return out, masks


class _Clock:
    """Ends a stage after ``steps`` steps or at the ``deadline`` (``time.perf_counter()`` seconds)."""

    def __init__(self, steps: int, deadline: float | None):
        self.steps, self.deadline = steps, deadline

    def done(self, step: int) -> bool:
        # at least one step, so every part of the model has been trained a little
        late = self.deadline is not None and time.perf_counter() > self.deadline
        return step >= self.steps or (step > 0 and late)


def _pretrain_encoder(
    encoder: PatchEncoder, images: torch.Tensor, cfg: ImageConfig, deadline: float | None, gen
) -> float:
    recon = MaskedReconstructor(encoder)
    opt = torch.optim.AdamW(recon.parameters(), lr=cfg.lr, weight_decay=1e-4)
    clock, step, loss = _Clock(cfg.encoder_steps, deadline), 0, torch.tensor(0.0)
    while not clock.done(step):
        idx = torch.randint(len(images), (min(cfg.batch_size, len(images)),), generator=gen)
        loss = recon.loss(images[idx], cfg.mask_ratio, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    log.info("encoder: %d steps, masked loss %.4f", step, loss.item())
    return loss.item()


@torch.no_grad()
def _tokens(model: ImageDetector, windows: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model.tokens(windows[i : i + batch]) for i in range(0, len(windows), batch)])


def _token_masks(model: ImageDetector, masks: np.ndarray) -> torch.Tensor:
    """Sample masks ``(n, W)`` -> token masks ``(n, rows * cols)`` (a token is hit if any sample is)."""
    rows, cols = model.grid
    m = torch.as_tensor(masks, dtype=torch.float32)[:, None]
    per_col = F.adaptive_max_pool1d(m, cols)[:, 0]
    return per_col[:, None, :].expand(-1, rows, -1).reshape(len(masks), -1).contiguous()


def _train_head(
    model: ImageDetector, windows: torch.Tensor, cfg: ImageConfig, deadline: float | None, gen, rng
) -> None:
    head, kind = model.head, cfg.kind
    clock, step = _Clock(cfg.head_steps, deadline), 0
    tokens = _tokens(model, windows)
    n = len(tokens)
    bs = min(cfg.batch_size, n)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    if kind == "pbas":
        flat = tokens.reshape(-1, tokens.shape[-1])
        sub = flat[torch.randperm(len(flat), generator=gen)[:20000]]
        head.fit_centres(sub, gen, iters=cfg.kmeans_iters)
    if kind == "onenip":
        # enrolment prompt: the training window whose tokens are closest to the mean window
        mean = tokens.mean(0, keepdim=True)
        head.enrol.copy_(tokens[((tokens - mean) ** 2).sum((1, 2)).argmin()][None])
        # restoration / refiner pairs: a Perlin anomaly in each of up to 1024 training windows
        pairs = torch.from_numpy(np.sort(rng.choice(n, min(n, 1024), replace=False)))
        bad_windows, masks = perlin_windows(windows[pairs].numpy(), rng)
        bad_tokens = _tokens(model, torch.from_numpy(bad_windows))
        token_masks = _token_masks(model, masks)
    loss = torch.tensor(0.0)
    while not clock.done(step):
        idx = torch.randint(n, (bs,), generator=gen)
        if kind == "uniad":
            loss = head.loss(tokens[idx], gen)
        elif kind == "pbas":
            progress = min(1.0, step / max(cfg.head_steps, 1))
            loss = head.loss(tokens[idx].reshape(-1, tokens.shape[-1]), progress, gen)
        else:
            j = torch.randint(len(pairs), (bs,), generator=gen)
            loss = head.loss(tokens[pairs[j]], bad_tokens[j], token_masks[j], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if kind == "pbas" and step % 100 == 0:
            head.fit_centres(sub, gen, iters=cfg.kmeans_iters)
    if kind == "onenip":
        with torch.no_grad():
            few = tokens[torch.randperm(n, generator=gen)[:512]]
            res = torch.cat(
                [
                    ((head.reconstruct(few[i : i + 128]) - few[i : i + 128]) ** 2).mean(-1)
                    for i in range(0, len(few), 128)
                ]
            )
            head.residual_scale.copy_(res.median().clamp_min(1e-6))
    log.info("%s head: %d steps, loss %.4f", kind, step, loss.item())


def fit_image_detector(
    windows: np.ndarray, cfg: ImageConfig, base: ImageDetector | None = None
) -> ImageDetector:
    """Train an image-method detector on normal windows ``(n, n_leads, window)`` (model rate).

    ``base``: a detector trained on the same windows with the same front end and encoder settings
    whose fitted front end and frozen encoder are reused (only the head is trained): the encoder
    does not depend on the head, so several heads can share one pre-training.
    """
    if cfg.kind not in IMAGE_KINDS:
        raise ValueError(
            f"unknown image model kind {cfg.kind!r}; choose from {', '.join(IMAGE_KINDS)}"
        )
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim != 3 or len(windows) < 8:
        raise ValueError(
            f"need at least 8 normal windows (n, leads, window) to train, got shape {windows.shape}"
        )
    t0 = time.perf_counter()
    budget = cfg.time_budget_s
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if len(windows) > cfg.max_windows:
        windows = windows[np.sort(rng.choice(len(windows), cfg.max_windows, replace=False))]
    _, leads, w = windows.shape
    x = torch.from_numpy(windows)
    if base is not None:
        frontend, encoder = copy.deepcopy(base.frontend), copy.deepcopy(base.encoder)
    else:
        frontend = build_frontend(_frontend_params(cfg), leads, w)
        frontend.fit_norm(x)
        with torch.no_grad():
            images = torch.cat([frontend(x[i : i + 512]) for i in range(0, len(x), 512)])
        encoder = _build_encoder(cfg, tuple(images.shape[1:]))
        _pretrain_encoder(encoder, images, cfg, None if budget is None else t0 + 0.4 * budget, gen)
    encoder.eval()
    head = _build_head(cfg, encoder.grid, encoder.dim)
    model = ImageDetector(frontend, encoder, head, w, _build_self_ref(cfg, frontend))
    model.fit_token_norm(x)
    model.train()
    model.encoder.eval()
    _train_head(model, x, cfg, None if budget is None else t0 + 0.92 * budget, gen, rng)
    model.eval()
    model.fit_term_scale(x[torch.randperm(len(x), generator=gen)[:1024]])
    return model


def export_detector(
    model: torch.nn.Module, spec: ModelSpec, path: str | Path, opset: int = 17
) -> Path:
    """Export ``model`` with the ecgstream graph interface and ``spec`` as metadata.

    Uses the shared exporter (:func:`ecgstream.training.export.export_onnx`) when available.
    """
    path = Path(path)
    try:
        from ecgstream.training.export import export_onnx
    except ImportError:  # pragma: no cover - the shared exporter ships with the package
        export_onnx = None
    if export_onnx is not None:
        return Path(export_onnx(model, spec, path))
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, len(spec.leads), spec.window)
    model.eval()
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={
            INPUT_NAME: {0: "batch"},
            OUTPUT_NAMES[0]: {0: "batch"},
            OUTPUT_NAMES[1]: {0: "batch"},
        },
        opset_version=opset,
        dynamo=False,
    )
    write_spec(path, spec)
    return path


# --- ``ecgstream train --model uniad|pbas|onenip`` on WFDB records, and checkpoint reloading ---


@dataclass
class ImageTrainResult:
    """What :func:`fit_records` returns to ``ecgstream train``."""

    model: ImageDetector
    spec: ModelSpec
    model_path: Path | None
    seconds: float


def build_detector(spec: ModelSpec) -> ImageDetector:
    """An untrained :class:`ImageDetector` with the architecture recorded in ``spec.params``."""
    p = spec.params
    # files written before ``encoder_norm`` existed normalised each image by itself
    fields = {k: v for k, v in p.items() if k in ImageConfig.__dataclass_fields__}
    cfg = ImageConfig(**{"encoder_norm": "group", **fields})
    frontend = build_frontend(p, len(spec.leads), spec.window)
    encoder = _build_encoder(cfg, frontend.image_shape())
    if p.get("point_relative"):
        raise ValueError(
            "this model scores points relative to the window's median column, an option since "
            "removed (docs/research/image-studies.md); retrain it"
        )
    return ImageDetector(
        frontend,
        encoder,
        _build_head(cfg, encoder.grid, encoder.dim),
        spec.window,
        _build_self_ref(cfg, frontend),
    )


def load_detector(state: dict) -> ImageDetector:
    """Rebuild a trained detector from a checkpoint ``{"model": state_dict, "spec": json}``."""
    spec = ModelSpec.from_json(state["spec"])
    model = build_detector(spec)
    model.load_state_dict(state["model"])
    return model.eval()


def _record_windows(
    recs: list, window: int, max_windows: int, rng: np.random.Generator
) -> np.ndarray:
    from ecgstream.training.data import normal_starts

    per_rec = max(1, max_windows // max(1, len(recs)))
    out = []
    for rec in recs:
        starts = normal_starts(rec, window, stride=max(1, window // 8))
        if len(starts) > per_rec:
            starts = np.sort(rng.choice(starts, per_rec, replace=False))
        out.extend(rec.x[s : s + window].T for s in starts)
    if not out:
        from ecgstream.training.data import NoNormalWindowsError

        raise NoNormalWindowsError(f"no normal {window}-sample window in {[r.name for r in recs]}")
    return np.stack(out).astype(np.float32)


def fit_records(
    kind: str,
    cfg,
    paths: list,
    progress: bool = True,
    resume: bool = False,
    overrides: dict | None = None,
    data: tuple | None = None,
    base: ImageDetector | None = None,
) -> ImageTrainResult:
    """Train image-method ``kind`` on normal windows of WFDB records (``cfg``: a ``TrainConfig``).

    The log-spectrogram front end is used; validation records (never trained on) calibrate the
    score normalisation and thresholds on their normal windows. For studies: ``overrides``
    replaces :class:`ImageConfig` fields, ``data`` is ``prepare_data``'s output (read once for
    several heads) and ``base`` a detector whose front end and encoder are reused.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.threads)))
    try:
        return _fit_records(kind, cfg, paths, progress, overrides or {}, data, base)
    finally:
        torch.set_num_threads(threads)


def _fit_records(
    kind: str, cfg, paths: list, progress: bool, overrides: dict, data, base
) -> ImageTrainResult:
    from ecgstream.training.calibration import calibrate
    from ecgstream.training.trainer import prepare_data, record_spec

    t0 = time.perf_counter()
    train_recs, val_recs = data or prepare_data(cfg, paths, progress=progress)
    rng = np.random.default_rng(cfg.seed)
    windows = _record_windows(train_recs, cfg.window, 6000, rng)
    icfg = ImageConfig(
        kind=kind,
        frontend="spectrogram",
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        encoder_steps=4 * cfg.steps_per_epoch,
        head_steps=max(2 * cfg.steps_per_epoch, cfg.epochs * cfg.steps_per_epoch // 3),
    )
    icfg.spec_rows = int(ECG_SPECTROGRAM_MAX_HZ / (cfg.fs / icfg.n_fft)) + 1
    unknown = sorted(set(overrides) - set(ImageConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown image settings {unknown}")
    icfg = dataclasses.replace(icfg, **overrides)
    if "self_ref_patch" not in overrides:
        cols_per_s = cfg.fs / icfg.stft_hop
        icfg.self_ref_patch = max(1, round(ECG_SELF_REF_PATCH_S * cols_per_s))
        icfg.self_ref_exclude = round(ECG_SELF_REF_EXCLUDE_S * cols_per_s)
    model = fit_image_detector(windows, icfg, base)
    val = _record_windows(val_recs, cfg.window, 1500, rng)
    with torch.no_grad():
        val_scores = torch.cat(
            [model(torch.from_numpy(val[i : i + 256]))[1] for i in range(0, len(val), 256)]
        )
    score_norm, thresholds = calibrate(val_scores.numpy(), cfg.false_alarm)
    seconds = time.perf_counter() - t0
    spec = record_spec(
        cfg,
        kind,
        train_recs,
        val_recs,
        score_norm,
        thresholds,
        training={"n_windows": int(len(windows)), "seconds": round(seconds, 1)},
        params={
            **icfg.to_dict(),
            **model.frontend.params(),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        name=cfg.name if cfg.name != "mmae" else f"{kind}-spectrogram",
        frontend="spectrogram",
    )
    if cfg.checkpoint_dir is not None:
        Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": model.state_dict(), "spec": spec.to_json()},
            Path(cfg.checkpoint_dir) / "model.pt",
        )
    path = export_detector(model, spec, cfg.model_out) if cfg.model_out is not None else None
    return ImageTrainResult(model, spec, path, time.perf_counter() - t0)


DESCRIPTIONS = {
    "uniad": "UniAD-style neighbour-masked token reconstruction on a frozen CNN (spectrogram / channel x time)",
    "pbas": "PBAS-style normal centres + boundary-guided feature synthesis + discriminator (cheapest head)",
    "onenip": "OneNIP-style reconstruction prompted by a normal reference, with a refiner on Perlin anomalies",
}


def register_image_kind(kind: str) -> None:
    """Register ``kind`` with the model-kind registry (``ecgstream train --model KIND``)."""
    from ecgstream.training.registry import ModelKind, register

    def fit(cfg, paths, progress: bool = True, resume: bool = False):
        return fit_records(kind, cfg, paths, progress=progress, resume=resume)

    register(ModelKind(kind, fit, load_detector, DESCRIPTIONS[kind]))
