"""The one token-reconstruction core shared by MMAE-ECG and the UniAD-style image head.

A model cuts its input into tokens ``(B, N, D)`` (segments of a window, patches of a spectrogram),
adds positional embeddings, hides some tokens and reconstructs them from the rest. The residual
between reconstruction and target is the anomaly score. Three ways to hide are supported:

- **random** (training of a masked autoencoder): :func:`random_split` draws, per row, which tokens
  are hidden (``hide_idx``) and which stay visible (``keep_idx``), with fixed counts so a batch
  stays rectangular; tokens can be excluded from both sets.
- **fixed complementary patterns** (deterministic inference): :func:`complementary_masks` gives
  ``k`` boolean patterns in which every token is hidden at least once. Models store the index
  sets as buffers, so the exported ONNX graph has no data-dependent control flow.
- **neighbour-masked attention** (UniAD): nothing is removed, but :func:`neighbour_mask` forbids a
  token (or query) to attend to its own neighbourhood, so it cannot simply copy itself.

Building blocks:

- :class:`Block`: pre-norm Transformer block (self-attention, or cross-attention to a memory)
  with an optional boolean attention mask (``True`` = may not attend).
- :class:`TokenCore`: a light encoder over the visible tokens and a decoder (``decoder_depth``
  blocks, one by default) that reconstructs hidden tokens from a learned mask token plus their
  positional embeddings (MAE style). :meth:`TokenCore.forward` does gather, encode and decode.
- :class:`QueryDecoder`: per-layer learned queries that cross-attend to encoded tokens (UniAD's
  layer-wise query decoder); use it with a neighbour mask.
- :class:`NeighbourQueryHead`: the set-up the UniAD and OneNIP heads share (token projection,
  positions, neighbour-masked encoder, query decoder, output projection).
- :func:`gather_tokens`, :func:`residual_score` (mean squared residual over the feature axis).

Everything exports with ``torch.onnx.export(..., dynamo=False, opset_version=17)``.

>>> import torch
>>> core = TokenCore(dim=16, depth=1, heads=2)
>>> x, pos = torch.randn(3, 10, 16), torch.randn(1, 10, 16)
>>> hide, keep = random_split(3, 10, n_hide=4, generator=torch.Generator().manual_seed(0))
>>> core(x, pos, keep, hide).shape          # reconstructed hidden tokens
torch.Size([3, 4, 16])
>>> complementary_masks(10, 3).sum(0).min().item()   # every token hidden at least once
1
>>> neighbour_mask((10,), radius=1)[4, 3:6].tolist()  # token 4 may not see 3, 4, 5
[True, True, True]
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "TokenCore",
    "QueryDecoder",
    "NeighbourQueryHead",
    "random_split",
    "complementary_masks",
    "neighbour_mask",
    "gather_tokens",
    "residual_score",
]

#: Additive attention bias for forbidden pairs (finite, so fully masked rows give no NaN).
_NEG = -1.0e4


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Tokens ``x[b, idx[b, j]]``: ``x`` is ``(B, N, D)``, ``idx`` ``(B, M)`` or ``(1, M)`` long."""
    if idx.shape[0] == 1:  # shared indices (a buffer): one Gather, batch stays dynamic
        return torch.index_select(x, 1, idx[0])
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def random_split(
    batch: int,
    n_tokens: int,
    n_hide: int,
    generator: torch.Generator | None = None,
    exclude: torch.Tensor | None = None,
    n_keep: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random hidden / visible token indices per row: ``(B, n_hide)`` and ``(B, n_keep)`` long.

    ``exclude`` (bool ``(B, N)``, ``True`` = neither hidden nor visible) removes tokens from both
    sets; ``n_keep`` defaults to every remaining token. Counts are fixed, so every row must have at
    least ``n_hide + n_keep`` usable tokens.
    """
    noise = torch.rand(batch, n_tokens, generator=generator, device=device)
    if exclude is not None:
        noise = noise + exclude.to(noise.dtype) * 2.0  # excluded tokens sort last
        usable = int((~exclude).sum(1).min())
    else:
        usable = n_tokens
    n_keep = usable - n_hide if n_keep is None else n_keep
    if n_hide + n_keep > usable or n_hide < 0 or n_keep < 0:
        raise ValueError(f"cannot hide {n_hide} and keep {n_keep} of {usable} usable tokens")
    order = torch.argsort(noise, dim=1)
    return order[:, :n_hide], order[:, n_hide : n_hide + n_keep]


def complementary_masks(n_tokens: int, k: int, offset: int = 0) -> torch.Tensor:
    """``k`` fixed interleaved masks ``(k, N)`` bool: token ``i`` is hidden in mask ``(i + offset) % k``.

    Every token is hidden exactly once and its direct neighbours stay visible (for ``k >= 2``).
    """
    if k < 1:
        raise ValueError(f"need at least one mask, got {k}")
    i = torch.arange(n_tokens)
    return (i[None, :] + offset) % k == torch.arange(k)[:, None]


def neighbour_mask(grid: tuple[int, ...], radius: int | tuple[int, ...] = 1) -> torch.Tensor:
    """``(N, N)`` bool over a 1-D or 2-D token grid: ``True`` where ``|pos_i - pos_j| <= radius``.

    Used as an attention mask it keeps every token from seeing its own neighbourhood (itself
    included), the UniAD remedy against reconstructing anomalies by copying them.
    """
    radii = (radius,) * len(grid) if isinstance(radius, int) else tuple(radius)
    axes = torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")
    coords = torch.stack([a.reshape(-1) for a in axes], 1)  # (N, dims)
    near = torch.ones(coords.shape[0], coords.shape[0], dtype=torch.bool)
    for d, r in enumerate(radii):
        near &= (coords[:, None, d] - coords[None, :, d]).abs() <= r
    return near


def residual_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared residual over the last (feature) axis: ``(..., F) -> (...)``."""
    return ((pred - target) ** 2).mean(-1)


class Attention(nn.Module):
    """Multi-head attention written with plain matmuls (exports to any ONNX opset >= 13)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Queries ``x`` ``(B, Nq, D)`` attend to ``memory`` ``(B, Nk, D)``; ``mask`` ``(Nq, Nk)`` bool."""
        b, nq, _ = x.shape
        h, hd = self.heads, self.head_dim
        q = self.q(x).reshape(b, nq, h, hd).transpose(1, 2)
        kv = self.kv(memory).reshape(b, -1, 2, h, hd).permute(2, 0, 3, 1, 4)
        att = q @ kv[0].transpose(-2, -1) * (1.0 / math.sqrt(hd))
        if mask is not None:
            att = att + mask.to(att.dtype) * _NEG
        att = self.drop(att.softmax(-1))
        y = (att @ kv[1]).transpose(1, 2).reshape(b, nq, h * hd)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm Transformer block: attention (self, or to ``memory``) then an MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_mem = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.norm1(x)
        mem = h if memory is None else self.norm_mem(memory)
        x = x + self.attn(h, mem, mask)
        return x + self.mlp(self.norm2(x))


class TokenCore(nn.Module):
    """Masked token reconstruction: encoder over visible tokens, light decoder for hidden ones.

    ``dim`` is the token width, ``depth`` the encoder blocks, ``decoder_depth`` the decoder blocks
    (one, as in MMAE-ECG). Output tokens have width ``dim``; the owning model maps them to its
    targets with its own head(s).
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        decoder_depth: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.encoder = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.enc_norm = nn.LayerNorm(dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dropout) for _ in range(decoder_depth)
        )
        self.dec_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode tokens ``(B, N, D)`` that already carry their positional embeddings."""
        for block in self.encoder:
            tokens = block(tokens, mask=mask)
        return self.enc_norm(tokens)

    def decode(self, memory: torch.Tensor, hidden_pos: torch.Tensor) -> torch.Tensor:
        """Reconstruct hidden tokens ``(B, Nh, D)`` from encoded visible ``memory`` ``(B, Nv, D)``.

        ``hidden_pos`` ``(B or 1, Nh, D)`` are the positional embeddings of the hidden tokens;
        the decoder sees ``[memory, mask_token + hidden_pos]`` and returns the hidden part.
        """
        queries = (self.mask_token + hidden_pos).expand(memory.shape[0], -1, -1)
        x = torch.cat([memory, queries], 1)
        for block in self.decoder:
            x = block(x)
        return self.dec_norm(x[:, memory.shape[1] :])

    def forward(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        keep_idx: torch.Tensor,
        hide_idx: torch.Tensor,
    ) -> torch.Tensor:
        """Tokens ``(B, N, D)`` and positions ``(B or 1, N, D)`` -> reconstructed hidden tokens.

        ``keep_idx`` ``(B or 1, Nv)`` and ``hide_idx`` ``(B or 1, Nh)`` index the token axis.
        """
        pos = pos.expand(tokens.shape[0], -1, -1)
        visible = gather_tokens(tokens + pos, keep_idx)
        memory = self.encode(visible)
        return self.decode(memory, gather_tokens(pos, hide_idx))


class QueryDecoder(nn.Module):
    """UniAD-style decoder: each layer adds its own learned queries, then attends to ``memory``.

    ``n_queries`` learned query vectors per layer (one per output token); pass a neighbour mask
    ``(n_queries, N_memory)`` so query ``i`` cannot read the memory tokens around position ``i``.
    """

    def __init__(
        self, dim: int, n_queries: int, depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0
    ):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(depth, 1, n_queries, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, memory: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``memory`` ``(B, N, D)`` -> reconstructed tokens ``(B, n_queries, D)``."""
        x = self.queries[0].expand(memory.shape[0], -1, -1)
        for layer, block in enumerate(self.blocks):
            x = block(x if layer == 0 else x + self.queries[layer], memory=memory, mask=mask)
        return self.norm(x)


class NeighbourQueryHead(nn.Module):
    """Base of the neighbour-masked token reconstruction heads (UniAD, OneNIP).

    ``feat_dim`` is the token width of the frozen encoder, ``grid`` its ``(rows, cols)`` token
    grid, ``dim`` the transformer width, ``radius`` the neighbourhood (in tokens) hidden from each
    token, ``jitter`` the noise scale of feature jitter relative to the (standardised) token
    scale. Subclasses build their memory from :meth:`encode` and reconstruct with
    ``self.out(self.decoder(memory, mask))``.
    """

    #: add ``prompt_type``, a learned embedding that marks memory tokens taken from a normal
    #: reference rather than from the window itself
    prompt: bool = False

    def __init__(
        self,
        feat_dim: int,
        grid: tuple[int, int],
        dim: int = 64,
        depth: int = 1,
        decoder_depth: int = 2,
        heads: int = 4,
        radius: int = 1,
        jitter: float = 0.2,
    ):
        super().__init__()
        self.grid, self.jitter = tuple(grid), jitter
        n = self.grid[0] * self.grid[1]
        self.inp = nn.Linear(feat_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        if self.prompt:
            self.prompt_type = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.core = TokenCore(dim, depth=depth, heads=heads, decoder_depth=0)
        self.decoder = QueryDecoder(dim, n, depth=decoder_depth, heads=heads)
        self.out = nn.Linear(dim, feat_dim)
        self.register_buffer("near", neighbour_mask(self.grid, radius))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen tokens ``(B, N, feat_dim)`` -> neighbour-masked encoding ``(B, N, dim)``."""
        return self.core.encode(self.inp(tokens) + self.pos, mask=self.near)
