"""``SegmentConsensus``: the detector's graph, assembled from its descriptor and optional terms.

``forward(windows (B, L, T)) -> (point_score (B, T), window_score (B,))``. The segment score
is the in-window term (:mod:`~ecgstream.models.consensus.descriptor`) plus the terms the config
turns on (noise floor, rhythm, nearest-neighbour reference), placed at each segment's centre and
interpolated to every sample; the population reference adds one value per window; the score
refiner, when there is one, places the point scores. The window score is the mean of the top
``topk_frac`` point scores before the refiner.
"""

from __future__ import annotations

import torch
from torch import nn

from ecgstream.models.consensus import descriptor as d
from ecgstream.models.consensus.config import ConsensusConfig
from ecgstream.models.consensus.descriptor import NeighbourTerm
from ecgstream.models.consensus.noise import NoiseTerm
from ecgstream.models.consensus.population import PopulationReference
from ecgstream.models.consensus.reference import NearestReference
from ecgstream.models.consensus.rhythm import RhythmTerm
from ecgstream.models.consensus.stream import stream_layout
from ecgstream.models.refiner import ScoreRefiner

__all__ = ["SegmentConsensus"]

#: state-dict keys of checkpoints written before the terms were modules -> their keys now
LEGACY_KEYS = {
    **{f"pop_{k}": f"population.level.{k}" for k in ("mean", "basis", "sd", "residual", "scale")},
    **{f"spec_{k}": f"population.band.{k}" for k in ("mean", "basis", "sd", "residual", "scale")},
    "ref_desc": "reference.desc",
    "ref_norm": "reference.norm",
}


class SegmentConsensus(nn.Module):
    """The in-window consensus detector; no trained weights except the optional score refiner's."""

    def __init__(self, cfg: ConsensusConfig):
        super().__init__()
        self.cfg = cfg
        #: a :meth:`stream_layout`: ``forward`` also returns each window's carry for the
        #: stream step (set while exporting a model that has one)
        self.carry_outputs: dict | None = None
        if cfg.level_every > 1:
            sub = torch.arange(0, cfg.n_segments, cfg.level_every)
            self.register_buffer("level_sub", sub, persistent=False)
        self.noise = NoiseTerm(cfg) if cfg.noise_weight > 0 else None
        self.neighbours = NeighbourTerm(cfg) if cfg.neighbours > 0 else None
        self.rhythm = RhythmTerm(cfg) if cfg.rhythm_weight > 0 else None
        self.population = PopulationReference(cfg) if cfg.population_components > 0 else None
        self.reference = NearestReference(cfg) if cfg.reference_size > 0 else None
        self.refiner: ScoreRefiner | None = None
        if cfg.refiner_channels > 0:
            self.refiner = ScoreRefiner(
                cfg.n_leads,
                cfg.refiner_channels,
                cfg.refiner_dilations,
                cfg.refiner_kernel,
                cfg.refiner_weight,
                cfg.refiner_floor,
                cfg.refiner_level_scale,
            )
        self.register_load_state_dict_pre_hook(_legacy_keys)

    def segments(self, windows: torch.Tensor) -> torch.Tensor:
        """The sliding segments of windows ``(B, L, T)`` as ``(B, L, n_segments, segment)``."""
        cfg = self.cfg
        return d.frames(windows, cfg.segment, cfg.stride, cfg.n_segments)

    def descriptors(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted, median-centred segments and sorted sample-to-sample steps,
        ``(B, L, n_segments, .)``."""
        seg = self.segments(windows)
        return d.centred(torch.sort(seg, dim=-1).values), d.sorted_steps(seg)

    def level_consensus(self, level: torch.Tensor) -> torch.Tensor:
        """The consensus of the level descriptors ``level``, ``(B, L, 1, segment)``.

        With ``level_every`` k > 1 the median is taken over every k-th segment only (k times
        fewer values to select from); every segment is still scored against it.
        """
        if self.cfg.level_every == 1:
            return d.median_over_segments(level, self.cfg.n_segments)
        return d.median_over_segments(level.index_select(2, self.level_sub), len(self.level_sub))

    def segment_levels(self, ordered: torch.Tensor) -> torch.Tensor:
        """Each segment's median (mV) ``(B, L, n_segments)`` from its sorted values."""
        return ordered[..., self.cfg.segment // 2]

    def spread(self, seg_score: torch.Tensor) -> torch.Tensor:
        """Segment scores ``(B, n_segments)`` as point scores ``(B, T)``."""
        return d.spread(seg_score, self.cfg)

    def window_score(self, point: torch.Tensor) -> torch.Tensor:
        """The window score ``(B,)``: the mean of the top ``topk_frac`` point scores."""
        return d.window_score(point, self.cfg)

    def sorted_terms(
        self,
        ordered: torch.Tensor,
        floors: torch.Tensor | None,
        consensus: torch.Tensor | None = None,
        floor_consensus: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The segment scores ``(B, n_segments)`` of the terms that need only the sorted segments
        ``ordered`` and the noise floors ``floors`` (what the stream step has); also the level
        descriptors and the consensus. The two medians over the segments are selected here
        unless given."""
        cfg = self.cfg
        level = d.centred(ordered)
        if consensus is None:
            consensus = self.level_consensus(level)
        seg_score = d.in_window_score(level, consensus, self.neighbours)
        if cfg.consensus_weight != 1.0:
            seg_score = cfg.consensus_weight * seg_score
        if self.noise is not None:
            seg_score = seg_score + cfg.noise_weight * self.noise(floors, floor_consensus)
        return seg_score, level, consensus

    def with_rhythm(self, seg_score: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Segment scores plus the weighted rhythm term of ``windows`` (unchanged without it)."""
        if self.rhythm is None:
            return seg_score
        return seg_score + self.cfg.rhythm_weight * self.rhythm(windows)

    def scored_segments(
        self, windows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Segment scores ``(B, n_segments)`` of windows ``(B, L, T)`` (before the refiner), the
        sorted segments, their noise floors (None without the noise term) and the consensus."""
        seg = self.segments(windows)
        ordered = torch.sort(seg, dim=-1).values
        floors = self.noise.floors(seg) if self.noise is not None else None
        seg_score, level, consensus = self.sorted_terms(ordered, floors)
        seg_score = self.with_rhythm(seg_score, windows)
        if self.reference is not None:
            near = self.reference(level, d.sorted_steps(seg))
            seg_score = seg_score + self.cfg.reference_weight * near
        return seg_score, ordered, floors, consensus

    def outputs(
        self, point: torch.Tensor, seg_score: torch.Tensor, ordered: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph's point and window scores from its point scores ``point`` ``(B, T)``: the
        window score is always the detector's; with the refiner, the point scores are its
        refined segment scores (``seg_score``, levels from the sorted segments ``ordered``)."""
        window = self.window_score(point)
        if self.refiner is not None:
            point = self.spread(self.refiner(seg_score, self.segment_levels(ordered)))
        return point, window

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic scores of windows ``(B, L, T)``: point ``(B, T)`` and window ``(B,)``."""
        cfg = self.cfg
        seg_score, ordered, floors, consensus = self.scored_segments(windows)
        point = self.spread(seg_score)
        if self.population is not None:
            point = point + cfg.population_weight * self.population(consensus, windows)[:, None]
        point, window = self.outputs(point, seg_score, ordered)
        lay = self.carry_outputs
        if lay is not None and floors is not None:  # also the carry for the stream step
            new = cfg.n_segments - lay["carry"]
            keep = floors.shape[2] - lay["carry_floors"]
            return point, window, ordered[:, :, new:], floors[:, :, keep:]  # type: ignore[return-value]
        return point, window

    def stream_layout(self, hop: int) -> dict | None:
        """How a window ``hop`` samples after another reuses its sorts (:func:`stream_layout`)."""
        return stream_layout(self, hop)

    def fit_population(self, windows: torch.Tensor) -> None:
        """Fit the population reference on normal training windows ``(N, L, T)``.

        ``pca`` needs N > ``population_components``; ``shrunk`` keeps at most that many
        directions (set it at least N for the exact shrunk Mahalanobis distance) and needs N > 1.
        """
        if self.population is None:
            return
        k = self.cfg.population_components
        need = 1 if self.cfg.population_covariance == "shrunk" else k
        if len(windows) <= need:
            raise ValueError(
                f"need more than {need} normal windows to fit {k} components, got {len(windows)}"
            )
        with torch.no_grad():
            parts = torch.split(windows, 256)
            cons = torch.cat([self.level_consensus(self.descriptors(w)[0]) for w in parts])
            self.population.fit(cons, windows)

    def fit_reference(self, windows: torch.Tensor, seed: int = 0) -> int:
        """Store up to ``reference_size`` segment descriptors of normal windows ``(N, L, T)``
        (:meth:`NearestReference.fit`); returns the number of distinct descriptors seen."""
        if self.reference is None:
            return 0
        ref = self.reference
        with torch.no_grad():
            rows = torch.cat([ref.rows(*self.descriptors(w)).reshape(-1, ref.desc.shape[1])
                              for w in torch.split(windows, 256)])  # fmt: skip
        return ref.fit(rows, seed)


def _legacy_keys(module: SegmentConsensus, state: dict, prefix: str, *args) -> None:
    """Rename the keys of a checkpoint written before the terms were modules; drop the ones
    ``module`` has no buffer for (the empty population buffers every such checkpoint held)."""
    own = set(module.state_dict())
    for old, new in LEGACY_KEYS.items():
        if prefix + old in state:
            value = state.pop(prefix + old)
            if new in own:
                state[prefix + new] = value
