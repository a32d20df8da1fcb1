"""The learned, frozen feature space of the image methods, and the detector that wraps a head.

No pretrained backbone can be downloaded, so :class:`PatchEncoder`, a small CNN, is trained on
normal images as a masked reconstructor (random token-sized patches of the image are zeroed and
:class:`MaskedReconstructor` must fill them in), then frozen. Its output grid
``(B, dim, rows', cols')`` is the token grid of every image head (UniAD-, PBAS-, OneNIP-style).

:class:`ImageDetector` is the exported graph: front end -> frozen encoder -> token
standardisation -> head score map ``(B, rows', cols')`` -> point score per input sample (max over
rows, linear upsampling along time, tapered to a tenth at the window ends) and window score
(max of the 3x3-averaged map). It has the
graph interface of every ecgstream model (see :mod:`ecgstream.runtime.model_file`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "PatchEncoder",
    "MaskedReconstructor",
    "SelfReference",
    "ImageDetector",
    "patch_mask",
]


ENCODER_NORMS = ("batch", "group")


def _norm(kind: str, channels: int) -> nn.Module:
    """``batch``: statistics of the training images, a fixed affine map once the encoder is
    frozen, so an image's overall level (the log-energy of a spectrogram) reaches the tokens;
    ``group``: each image normalised by itself (the first version; it hides level changes)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown encoder norm {kind!r}; choose from {', '.join(ENCODER_NORMS)}")


def _stage(
    c_in: int, c_out: int, rows: int, stride_rows: int, stride_cols: int, norm: str = "group"
) -> nn.Sequential:
    kh = 3 if rows >= 3 else 1
    return nn.Sequential(
        nn.Conv2d(
            c_in,
            c_out,
            (kh, 3),
            stride=(stride_rows, stride_cols),
            padding=(kh // 2, 1),
            padding_mode="replicate",
        ),
        _norm(norm, c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, (kh, 3), padding=(kh // 2, 1), padding_mode="replicate"),
        nn.GELU(),
    )


class PatchEncoder(nn.Module):
    """Small CNN: image ``(B, C, rows, cols)`` -> feature grid ``(B, dim, rows', cols')``.

    Two stages, each halving the columns (time) and, when there are at least 8 rows, the rows.
    ``width`` is the first stage's channel count, ``dim`` the token width, ``norm`` the
    normalisation after each stage's first convolution (:func:`_norm`).
    """

    def __init__(
        self,
        in_channels: int,
        rows: int,
        cols: int,
        width: int = 32,
        dim: int = 64,
        stages: int = 2,
        norm: str = "group",
    ):
        super().__init__()
        self.in_channels, self.rows, self.cols, self.dim = in_channels, rows, cols, dim
        layers, c, r = [], in_channels, rows
        self.stride_rows, self.stride_cols = 1, 1
        for i in range(stages):
            sr = 2 if r >= 8 else 1
            out = dim if i == stages - 1 else width
            layers.append(_stage(c, out, r, sr, 2, norm))
            c, r = out, -(-r // sr)
            self.stride_rows *= sr
            self.stride_cols *= 2
        self.net = nn.Sequential(*layers).eval()
        with torch.no_grad():
            self.grid = tuple(self.net(torch.zeros(1, in_channels, rows, cols)).shape[-2:])
        self.net.train()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def patch_mask(
    batch: int, grid: tuple[int, int], ratio: float, size: tuple[int, int], generator=None
) -> torch.Tensor:
    """Random token-cell mask ``(B, 1, rows, cols)`` (1 = hidden) upsampled from ``grid`` to ``size``."""
    cells = (torch.rand(batch, 1, *grid, generator=generator) < ratio).float()
    return F.interpolate(cells, size=size, mode="nearest")


class MaskedReconstructor(nn.Module):
    """Encoder plus a light decoder that reconstructs the image from the encoder's grid.

    Training hides random token-sized patches; the loss is the squared error on hidden pixels
    (plus a small weight on visible ones), so the features must carry context, not just copy.
    """

    def __init__(self, encoder: PatchEncoder):
        super().__init__()
        self.encoder = encoder
        c = encoder.in_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.dim, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, c, 3, padding=1)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feat = self.encoder(image)
        up = F.interpolate(feat, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(up)

    def loss(self, image: torch.Tensor, ratio: float = 0.4, generator=None) -> torch.Tensor:
        m = patch_mask(image.shape[0], self.encoder.grid, ratio, image.shape[-2:], generator)
        rec = self(image * (1 - m))
        err = (rec - image) ** 2
        hidden = (err * m).sum() / m.sum().clamp_min(1.0) / image.shape[1]
        return hidden + 0.1 * err.mean()


class SelfReference(nn.Module):
    """Each image column compared with the rest of its own window: a per-window self-reference.

    Image ``(B, C, rows, cols)`` -> ``(B, cols)``: the RMS distance between the patch of
    ``patch`` columns centred on each column (all channels and rows) and its nearest patch of
    the same image more than ``exclude`` columns away. A beat whose like occurs elsewhere in the
    window scores low whatever the patient's morphology; an odd beat scores high. The patches are
    unfolded by a strided ``Conv1d`` with fixed identity kernels; distances are one matrix
    product, so the graph stays static for ONNX.
    """

    def __init__(self, channels: int, rows: int, cols: int, patch: int, exclude: int):
        super().__init__()
        if patch < 1 or exclude < 0 or exclude + 1 >= cols:
            raise ValueError(
                f"self-reference patch {patch} / exclusion {exclude} columns do not fit an image "
                f"of {cols} columns"
            )
        self.patch, self.exclude, self.size = patch, exclude, channels * rows * patch
        eye = torch.eye(self.size).reshape(self.size, channels * rows, patch)
        self.register_buffer("unfold", eye)
        idx = torch.arange(cols)
        near = (idx[:, None] - idx[None, :]).abs() <= exclude
        self.register_buffer("near", near.float() * 1e9)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, c, r, t = image.shape
        x = F.pad(image.reshape(b, c * r, t), (self.patch // 2, (self.patch - 1) // 2), "replicate")
        v = F.conv1d(x, self.unfold).transpose(1, 2)  # (B, cols, C * rows * patch)
        sq = (v * v).sum(-1)
        d2 = sq[:, :, None] + sq[:, None, :] - 2 * v @ v.transpose(1, 2) + self.near
        return (d2.min(-1).values.clamp_min(0) / self.size).sqrt()


class ImageDetector(nn.Module):
    """Front end + frozen encoder + head, with the ecgstream graph interface.

    ``head`` must provide ``score_map(tokens (B, N, D), grid) -> (B, N)`` on standardised tokens.
    ``feat_mean`` / ``feat_std`` (``(D,)``) standardise encoder features, fitted on normal windows.
    ``self_ref``: an optional :class:`SelfReference` on the front end's image; its column score
    is added to the head's, each in units of its mean on normal windows (``term_scale``, fitted by
    :meth:`fit_term_scale`), so the head's population view and the window's comparison with
    itself count alike.
    """

    def __init__(
        self,
        frontend: nn.Module,
        encoder: PatchEncoder,
        head: nn.Module,
        window: int,
        self_ref: SelfReference | None = None,
    ):
        super().__init__()
        self.frontend, self.encoder, self.head, self.window = frontend, encoder, head, window
        self.self_ref = self_ref
        if self_ref is not None:
            # mean column score of the head and of the self-reference on normal windows
            self.register_buffer("term_scale", torch.ones(2))
        # point-score weight along the window: 1 in the middle, 0.1 at the ends (Hann-shaped), so
        # window edges (less context, padding) count less where windows overlap
        taper = 0.55 - 0.45 * torch.cos(2 * torch.pi * (torch.arange(window) + 0.5) / window)
        self.register_buffer("taper", taper)
        self.register_buffer("feat_mean", torch.zeros(encoder.dim))
        self.register_buffer("feat_std", torch.ones(encoder.dim))
        for p in list(self.frontend.parameters()) + list(self.encoder.parameters()):
            p.requires_grad_(False)

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    def tokens(self, windows: torch.Tensor) -> torch.Tensor:
        """Standardised frozen tokens ``(B, rows' * cols', D)`` of windows ``(B, L, W)``."""
        return self._image_tokens(self.frontend(windows))

    def _image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        tok = self.encoder(image).flatten(2).transpose(1, 2)
        return (tok - self.feat_mean) / self.feat_std

    @torch.no_grad()
    def fit_token_norm(self, windows: torch.Tensor, batch: int = 256) -> None:
        """Fit the token standardisation on normal windows (call after the encoder is trained)."""
        self.feat_mean.zero_()
        self.feat_std.fill_(1.0)
        toks = torch.cat(
            [self.tokens(windows[i : i + batch]) for i in range(0, len(windows), batch)]
        )
        flat = toks.reshape(-1, toks.shape[-1])
        self.feat_mean.copy_(flat.mean(0))
        self.feat_std.copy_(flat.std(0).clamp_min(1e-4))

    def _upsample(self, per_col: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            per_col.unsqueeze(1), size=self.window, mode="linear", align_corners=False
        )[:, 0]

    def maps_to_scores(
        self, smap: torch.Tensor, self_cols: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score map ``(B, rows', cols')`` (and the self-reference's column score ``(B, cols)``)
        -> point score ``(B, window)`` and window score ``(B,)``."""
        per_col = smap.max(1).values  # (B, cols')
        pooled = F.avg_pool2d(smap.unsqueeze(1), 3, stride=1, padding=1, count_include_pad=False)
        point, window = self._upsample(per_col), pooled.flatten(1).max(1).values
        if self_cols is not None:
            point = point / self.term_scale[0] + self._upsample(self_cols) / self.term_scale[1]
            smooth = F.avg_pool1d(self_cols.unsqueeze(1), 3, 1, 1, count_include_pad=False)[:, 0]
            window = window / self.term_scale[0] + smooth.max(1).values / self.term_scale[1]
        return point * self.taper, window

    def score_map_of_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid
        return self.head.score_map(tokens).reshape(tokens.shape[0], rows, cols)

    def terms(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head score map ``(B, rows', cols')`` and self-reference column score ``(B, cols)`` (or None)."""
        image = self.frontend(windows)
        own = self.self_ref(image) if self.self_ref is not None else None
        return self.score_map_of_tokens(self._image_tokens(image)), own

    @torch.no_grad()
    def fit_term_scale(self, windows: torch.Tensor, batch: int = 256) -> None:
        """Put the head's and the self-reference's column scores in units of their mean on normal windows."""
        if self.self_ref is None:
            return
        head, own = [], []
        for i in range(0, len(windows), batch):
            smap, cols = self.terms(windows[i : i + batch])
            head.append(smap.max(1).values.mean())
            own.append(cols.mean())
        scale = torch.stack([torch.stack(head).mean(), torch.stack(own).mean()])
        self.term_scale.copy_(scale.clamp_min(1e-6))

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.maps_to_scores(*self.terms(windows))
