"""In-window consensus detector: each part of a window against the window's own typical beat.

ECG repeats itself. Inside one window (10 s, about ten beats) the typical cycle of *this*
patient is known from the window itself, so a part that differs from it is anomalous no matter
how the patient differs from other patients. This is the per-stream reference that
cross-patient detection needs (see ``docs/model-consensus.md``), computed without R-peak
detection:

1. **Sliding segments.** Every ``stride`` samples (0.1 s) a segment of ``segment`` samples (about
   one beat, 0.8 s at 100 Hz) is cut from each lead.
2. **Shift-invariant descriptor.** Each segment minus its median, sorted: the segment's
   amplitude distribution (quantile function) in mV. It does not depend on where inside the
   segment a beat falls, so segments taken at any phase of the cardiac cycle are comparable;
   it keeps amplitude, width (how many samples are far from the baseline) and polarity.
3. **Consensus.** The element-wise median of the descriptors of all segments of the window:
   the window's typical segment, robust to a minority of abnormal beats.
4. **Score.** Mean squared difference (mV^2, averaged over leads and descriptor entries) between a
   segment's descriptor and the consensus, placed at the segment's centre and interpolated
   linearly to every sample: ``point_score`` ``(B, window)``. ``window_score`` ``(B,)`` is the
   mean of the top ``topk_frac`` point scores. Optional terms, off by default: the noise floor
   (``noise_weight``), a level term (``level_weight``: a segment's median above or below both
   segments one beat away, which sees a short baseline shift), erosion (``erode``: each
   segment score partly lowered to the minimum of its neighbours, so a short anomaly is not
   spread over a whole segment length around it), the neighbours of a segment that holds less
   than the consensus (``neighbours``) and the rhythm term (``rhythm_weight``: a segment's
   middle against the signal one beat period before and after it, which sees a beat out of
   step with the window's rhythm).

5. **Population reference** (optional, ``population_components > 0``). The window's consensus
   is compared with the consensus of normal training windows of other people (PCA, fitted by
   :meth:`SegmentConsensus.fit_population`), and that distance is added to every point score
   (weight ``population_weight``). This sees what step 4 cannot: an abnormality present in
   every beat (infarction, bundle branch block, hypertrophy in a 12-lead resting ECG). It also
   raises every score of a patient who differs from the training population, so it is off for
   beat-level monitoring models. Options: a Ledoit-Wolf shrunk covariance in place of the PCA
   (``population_covariance``), each lead scaled by its training spread
   (``population_lead_scale``), and the same distance for each lead's band spectrum
   (``population_spectrum_frame``), which keeps the heart rate and wave timing.

6. **Nearest-neighbour reference** (optional, ``reference_size > 0``; used for generic series).
   Up to ``reference_size`` segment descriptors of normal data (a coreset, fitted by
   :meth:`SegmentConsensus.fit_reference`; ``reference_quantiles`` entries each, optionally
   followed by the sorted steps times ``reference_slope_scale``) are stored in the graph, and
   each segment's distance to the nearest one is added to its score (weight
   ``reference_weight``; ``consensus_weight`` scales the in-window term). A single event in a
   long series is then measured against everything normal seen before.

A premature beat makes the segments around it hold two QRS complexes instead of one, a
ventricular beat a wider and taller one, a flat line none: all move the descriptor away from the
consensus. What it cannot see is an abnormality present in every beat of the window (the
consensus then is abnormal too); that needs a population reference.

Without the population reference and the score refiner the graph has no fitted values at all:
segment indices and the median are fixed buffers and sorts, so it exports to ONNX like the
learned models and streams the same way. The optional score refiner
(:mod:`ecgstream.models.refiner`, ``refiner_channels > 0``) is a small convolution over the
segment scores, trained on synthetic anomalies; it raises point scores where it sees an anomaly
and leaves the window score alone.

>>> import torch
>>> model = SegmentConsensus(ConsensusConfig(n_leads=1, window=400, segment=40, stride=5))
>>> point, window = model(torch.randn(2, 1, 400))
>>> tuple(point.shape), tuple(window.shape)
((2, 400), (2,))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ecgstream.models.refiner import ScoreRefiner

__all__ = ["ConsensusConfig", "SegmentConsensus"]


@dataclass
class ConsensusConfig:
    """Sizes in samples at the model rate: ``segment`` (about one beat) and ``stride`` between segments."""

    n_leads: int = 1
    window: int = 1000
    segment: int = 80
    stride: int = 10
    slope_weight: float = 0.0
    noise_weight: float = 0.0
    noise_quantile: float = 0.7
    noise_summary: str = "sorted"
    noise_every: int = 1
    level_every: int = 1
    level_weight: float = 0.0
    level_reach: int = 8
    erode: int = 0
    erode_share: float = 1.0
    neighbours: int = 0
    rhythm_weight: float = 0.0
    rhythm_span: int = 80
    rhythm_min_lag: int = 30
    rhythm_max_period: int = 150
    rhythm_tolerance: float = 0.1
    rhythm_excess: float = 2.0
    rhythm_decimate: int = 5
    rhythm_every: int = 2
    rhythm_gate: float = 0.0
    #: compare the signed window (full rate) at lags within the tolerance of the period found,
    #: instead of the envelope at every lag
    rhythm_signed: bool = False
    #: samples averaged before the signed comparison (2: 50 Hz at 100 Hz, a quarter of the cost)
    rhythm_signed_decimate: int = 1
    #: add the rhythm term to the point scores only, after the refiner: neither the refiner nor
    #: the window score sees it
    rhythm_after_refiner: bool = False
    population_components: int = 0
    population_weight: float = 1.0
    population_covariance: str = "pca"
    population_lead_scale: bool = False
    population_spectrum_frame: int = 0
    population_spectrum_bands: int = 0
    population_spectrum_band_bins: int = 1
    topk_frac: float = 0.1
    consensus_weight: float = 1.0
    reference_size: int = 0
    reference_quantiles: int = 0
    reference_weight: float = 1.0
    reference_slope_scale: float = 0.0
    #: the score refiner (:mod:`ecgstream.models.refiner`): 0 channels = none
    refiner_channels: int = 0
    refiner_dilations: tuple[int, ...] = (1, 2, 4, 8)
    refiner_kernel: int = 3
    refiner_weight: float = 0.5
    refiner_floor: float = -6.0
    refiner_level_scale: float = 5.0
    refiner_min_gain: float = 1.0
    #: >0: the refiner also reads the window's waveform through convolutions this wide
    refiner_waveform_channels: int = 0
    #: the waveform the refiner reads is averaged over this many samples first
    refiner_waveform_decimate: int = 1

    @property
    def n_segments(self) -> int:
        return (self.window - self.segment) // self.stride + 1

    def validate(self) -> None:
        if not 2 <= self.segment <= self.window:
            raise ValueError(f"segment {self.segment} must be in [2, window={self.window}] samples")
        if self.stride < 1:
            raise ValueError(f"stride must be at least 1 sample, got {self.stride}")
        if self.n_segments < 3:
            raise ValueError(
                f"window {self.window} holds only {self.n_segments} segments of {self.segment} "
                f"samples every {self.stride}; the consensus needs at least 3"
            )
        if self.slope_weight < 0:
            raise ValueError(f"slope_weight must be >= 0, got {self.slope_weight}")
        if self.noise_weight < 0 or not 0 < self.noise_quantile <= 1:
            raise ValueError(
                f"noise_weight must be >= 0 and noise_quantile in (0, 1], got "
                f"{self.noise_weight} and {self.noise_quantile}"
            )
        if self.noise_every < 1:
            raise ValueError(f"noise_every must be at least 1 segment, got {self.noise_every}")
        if self.level_every < 1:
            raise ValueError(f"level_every must be at least 1 segment, got {self.level_every}")
        if self.noise_summary not in ("sorted", "mean"):
            raise ValueError(
                f"noise_summary must be 'sorted' or 'mean', got {self.noise_summary!r}"
            )
        if self.erode < 0 or not 0 <= self.erode_share <= 1:
            raise ValueError(
                f"erode must be >= 0 segments and erode_share in [0, 1], got {self.erode} and "
                f"{self.erode_share}"
            )
        if self.neighbours < 0:
            raise ValueError(f"neighbours must be >= 0 segments, got {self.neighbours}")
        if self.rhythm_weight < 0:
            raise ValueError(f"rhythm_weight must be >= 0, got {self.rhythm_weight}")
        if self.rhythm_weight > 0 and not (
            1 <= self.rhythm_span <= self.segment
            and 1 <= self.rhythm_min_lag < self.rhythm_max_period
            and 0 <= self.rhythm_tolerance < 1
            and self.rhythm_excess >= 0
            and self.rhythm_decimate >= 1
            and self.rhythm_every >= 1
            and self.rhythm_gate >= 0
            and self.stride % self.rhythm_decimate == 0
            and self.window % self.rhythm_decimate == 0
            and self.rhythm_span % self.stride == 0
            and self.rhythm_max_lag + self.rhythm_span < self.window // 2
        ):
            raise ValueError(
                f"the rhythm term needs a span in [1, segment={self.segment}] samples, "
                f"a multiple of the stride ({self.stride}), 1 <= min_lag < max_period, a "
                f"tolerance in [0, 1), excess >= 0, the longest "
                f"lag plus span under half the window ({self.window // 2} samples) and a "
                f"decimation that divides the stride and the window; got span "
                f"{self.rhythm_span}, lags {self.rhythm_min_lag}..{self.rhythm_max_period}, "
                f"tolerance {self.rhythm_tolerance}, excess {self.rhythm_excess}, decimation "
                f"{self.rhythm_decimate}"
            )
        sd = self.rhythm_signed_decimate
        span_start = (self.segment - self.rhythm_span) // 2
        lengths = (self.stride, self.window, self.rhythm_span, span_start)
        signed = self.rhythm_weight > 0 and self.rhythm_signed
        if signed and (sd < 1 or any(v % sd for v in lengths)):
            raise ValueError(
                f"the signed rhythm term's decimation ({sd} samples) must divide the stride "
                f"({self.stride}), the window ({self.window}), the span ({self.rhythm_span}) "
                f"and where the span starts in its segment ({span_start})"
            )
        if self.level_weight < 0 or self.level_reach < 1:
            raise ValueError(
                f"level_weight must be >= 0 and level_reach >= 1 segment, got "
                f"{self.level_weight} and {self.level_reach}"
            )
        if self.population_components < 0:
            raise ValueError(
                f"population_components must be >= 0, got {self.population_components}"
            )
        if self.population_covariance not in ("pca", "shrunk"):
            raise ValueError(
                f"population_covariance must be 'pca' or 'shrunk', got {self.population_covariance!r}"
            )
        if self.population_spectrum_frame:
            bins = 1 + self.population_spectrum_bands * self.population_spectrum_band_bins
            if not (
                self.population_components > 0
                and 4 <= self.population_spectrum_frame <= self.window
                and self.population_spectrum_bands >= 1
                and self.population_spectrum_band_bins >= 1
                and bins <= self.population_spectrum_frame // 2 + 1
            ):
                raise ValueError(
                    f"the population spectrum needs population_components > 0, a frame in "
                    f"[4, window={self.window}] samples and bands x band_bins + 1 <= frame // 2 + 1 "
                    f"DFT bins, got frame {self.population_spectrum_frame}, "
                    f"{self.population_spectrum_bands} bands of "
                    f"{self.population_spectrum_band_bins} bins"
                )
        if not 0 < self.topk_frac <= 1:
            raise ValueError(f"topk_frac must be in (0, 1], got {self.topk_frac}")
        if min(self.consensus_weight, self.reference_weight, self.reference_slope_scale) < 0:
            raise ValueError(
                "consensus_weight, reference_weight and reference_slope_scale must be >= 0"
            )
        if self.refiner_channels < 0 or (
            self.refiner_channels > 0 and self.population_components > 0
        ):
            raise ValueError(
                f"refiner_channels must be >= 0 and the refiner cannot be combined with a "
                f"population reference; got {self.refiner_channels} channels and "
                f"{self.population_components} population components"
            )
        if self.reference_size < 0 or not 0 <= self.reference_quantiles <= self.segment:
            raise ValueError(
                f"reference_size must be >= 0 and reference_quantiles in [0, segment="
                f"{self.segment}], got {self.reference_size} and {self.reference_quantiles}"
            )

    @property
    def rhythm_max_lag(self) -> int:
        """The longest lag (samples) the rhythm term compares: the longest period plus tolerance."""
        return int(math.ceil(self.rhythm_max_period * (1 + self.rhythm_tolerance)))

    @property
    def reference_dims(self) -> int:
        """Descriptor entries per lead kept for the nearest-neighbour reference."""
        q = self.reference_quantiles or self.segment
        return 2 * q if self.reference_slope_scale > 0 else q

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ConsensusConfig:
        kept = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "refiner_dilations" in kept:  # a list once stored as JSON
            kept["refiner_dilations"] = tuple(int(v) for v in kept["refiner_dilations"])
        return cls(**kept)


class SegmentConsensus(nn.Module):
    """``forward(windows (B, L, T)) -> (point_score (B, T), window_score (B,))``; no trained
    weights except the optional score refiner's."""

    def __init__(self, cfg: ConsensusConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        #: a :meth:`stream_layout`: ``forward`` also returns each window's carry for the
        #: stream step (set while exporting a model that has one)
        self.carry_outputs: dict | None = None
        if cfg.noise_every > 1:
            self._init_noise_grid()
        if cfg.level_every > 1:
            sub = torch.arange(0, cfg.n_segments, cfg.level_every)
            self.register_buffer("level_sub", sub, persistent=False)
        if cfg.neighbours > 0:
            # segments that share samples are never each other's neighbours
            i = torch.arange(cfg.n_segments)
            j = i[:: cfg.level_every]  # the candidates: the segments the consensus is taken over
            overlap = (i[:, None] - j[None, :]).abs() * cfg.stride < cfg.segment
            self.register_buffer("overlap_penalty", overlap.float() * 1e6, persistent=False)
        if cfg.rhythm_weight > 0:
            self._init_rhythm()
        k, dims = cfg.population_components, cfg.n_leads * cfg.segment
        self.register_buffer("pop_mean", torch.zeros(dims))
        self.register_buffer("pop_basis", torch.zeros(k, dims))
        self.register_buffer("pop_sd", torch.ones(k))
        self.register_buffer("pop_residual", torch.ones(()))
        if cfg.population_lead_scale:
            self.register_buffer("pop_scale", torch.ones(dims))
        if cfg.population_spectrum_frame:
            self._init_spectrum()
        self.refiner: ScoreRefiner | None = None
        if cfg.refiner_channels > 0:
            self.refiner = ScoreRefiner(
                cfg.n_leads,
                cfg.refiner_channels,
                tuple(cfg.refiner_dilations),
                cfg.refiner_kernel,
                cfg.refiner_weight,
                cfg.refiner_floor,
                cfg.refiner_level_scale,
                cfg.refiner_min_gain,
                cfg.refiner_waveform_channels,
                cfg.segment,
                cfg.stride,
                cfg.refiner_waveform_decimate,
            )
        if cfg.reference_size > 0:
            n_q = cfg.reference_quantiles or cfg.segment
            q = torch.linspace(0, cfg.segment - 1, n_q).round().long()
            self.register_buffer("ref_index", q, persistent=False)
            q_slope = torch.linspace(0, cfg.segment - 2, n_q).round().long()
            self.register_buffer("ref_slope_index", q_slope, persistent=False)
            dims = cfg.n_leads * cfg.reference_dims
            self.register_buffer("ref_desc", torch.zeros(cfg.reference_size, dims))
            self.register_buffer("ref_norm", torch.zeros(cfg.reference_size))

    def segments(self, windows: torch.Tensor) -> torch.Tensor:
        """The sliding segments of windows ``(B, L, T)`` as ``(B, L, n_segments, segment)``."""
        cfg = self.cfg
        return _frames(windows, cfg.segment, cfg.stride, cfg.n_segments)

    def descriptors(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted, median-centred segments and sorted sample-to-sample steps, ``(B, L, n_segments, .)``."""
        seg = self.segments(windows)
        return self.centred(torch.sort(seg, dim=-1).values), self.sorted_steps(seg)

    @staticmethod
    def sorted_steps(seg: torch.Tensor) -> torch.Tensor:
        """Each segment's sample-to-sample steps, sorted: the slope descriptor."""
        return torch.sort(seg[..., 1:] - seg[..., :-1], dim=-1).values

    def centred(self, ordered: torch.Tensor) -> torch.Tensor:
        """Sorted segments ``ordered`` minus their medians: the level descriptor."""
        mid = self.cfg.segment // 2
        return ordered - ordered[..., mid : mid + 1]

    def window_score(self, point: torch.Tensor) -> torch.Tensor:
        """The window score ``(B,)``: the mean of the top ``topk_frac`` point scores."""
        top = max(1, int(round(self.cfg.topk_frac * self.cfg.window)))
        return torch.topk(point, top, dim=1, sorted=False).values.mean(1)

    def noise_floor(self, seg: torch.Tensor) -> torch.Tensor:
        """The smallest ``noise_quantile`` of each segment's absolute sample-to-sample steps, sorted
        (``noise_summary = "sorted"``, ``(B, L, n_segments, keep)``) or their mean (``"mean"``,
        ``(B, L, n_segments, 1)``, a third of the cost in ONNX Runtime: no sort).

        ``seg`` is :meth:`segments`' output. QRS slopes sit in the largest steps; the rest is the
        segment's noise floor, which a burst of noise or interference raises without changing
        the amplitude distribution much.
        """
        cfg = self.cfg
        keep = self.noise_keep
        steps = (seg[..., 1:] - seg[..., :-1]).abs()
        if cfg.noise_summary == "mean":
            smallest = torch.topk(steps, keep, dim=-1, largest=False, sorted=False).values
            return smallest.mean(dim=-1, keepdim=True)
        return torch.topk(steps, keep, dim=-1, largest=False, sorted=True).values

    @property
    def noise_keep(self) -> int:
        """How many of a segment's ``segment - 1`` steps its noise floor keeps (the smallest)."""
        return max(1, int((self.cfg.segment - 1) * self.cfg.noise_quantile))

    def level_bump(self, level: torch.Tensor) -> torch.Tensor:
        """How far each segment's median (``level``, mV ``(B, L, n_segments)``) stands out of its neighbours'.

        The neighbours are the segments ``level_reach`` strides before and after (the window's
        ends are repeated); about one beat apart, they sit at the same phase of the cycle. A
        segment whose median lies between theirs, as on a slow drift of the baseline, scores 0;
        one above both or below both scores its distance to the nearer one. A baseline shift of under two seconds, which the median-centred descriptor cannot
        see, raises the segments it covers over their neighbours.
        """
        cfg = self.cfg
        reach = min(cfg.level_reach, cfg.n_segments - 1)
        padded = F.pad(level, (reach, reach), mode="replicate")
        before, after = padded[..., : cfg.n_segments], padded[..., 2 * reach :]
        high, low = torch.maximum(before, after), torch.minimum(before, after)
        return F.relu(level - high) + F.relu(low - level)

    def erode_scores(self, seg_score: torch.Tensor) -> torch.Tensor:
        """Each segment score ``(B, n_segments)`` lowered to the minimum within ``erode`` segments.

        A segment overlapping an anomaly by a few samples scores almost as high as one centred
        on it, so the linear placement spreads a short anomaly over its length plus one segment.
        The minimum over the ``2 * erode + 1`` nearest segments trims ``erode`` strides off each
        side of that spread while keeping anything longer than it.
        """
        r = min(self.cfg.erode, self.cfg.n_segments - 1)
        padded = F.pad(seg_score[:, None], (r, r), mode="replicate")
        return -F.max_pool1d(-padded, 2 * r + 1, stride=1)[:, 0]

    def _spread(self, seg_score: torch.Tensor) -> torch.Tensor:
        """Segment scores ``(B, n_segments)`` at their centres, linearly interpolated to ``(B, T)``."""
        cfg = self.cfg
        inner = (cfg.n_segments - 1) * cfg.stride + 1
        line = F.interpolate(seg_score[:, None], size=inner, mode="linear", align_corners=True)
        left = cfg.segment // 2
        return F.pad(line, (left, cfg.window - inner - left), mode="replicate")[:, 0]

    def _init_noise_grid(self) -> None:
        """Every ``noise_every``-th segment, and linear interpolation weights back to all of them."""
        for name, value in zip(
            ("sub", "left", "right", "frac"),
            _grid(self.cfg.n_segments, self.cfg.noise_every),
            strict=True,
        ):
            self.register_buffer(f"noise_{name}", value, persistent=False)

    def noise_score(self, seg: torch.Tensor) -> torch.Tensor:
        """The noise-floor term ``(B, n_segments)``: each segment's floor against the window's.

        With ``noise_every`` k > 1 the floors of every k-th segment are compared (k times less
        sorting) and the term is interpolated linearly to the segments between them.
        """
        return self.noise_term(self.noise_floors(seg))

    def noise_floors(self, seg: torch.Tensor) -> torch.Tensor:
        """The noise floors of every ``noise_every``-th segment of ``seg``."""
        if self.cfg.noise_every == 1:
            return self.noise_floor(seg)
        return self.noise_floor(seg.index_select(2, self.noise_sub))

    def noise_term(self, floor: torch.Tensor, median: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`noise_score` from the floors of every ``noise_every``-th segment (and their
        ``median`` over the segments, when it is computed outside the graph)."""
        if median is None:
            median = self.consensus(floor, floor.shape[2])
        dev = self._deviation(floor, median)
        if self.cfg.noise_every == 1:
            return dev
        left, right = dev.index_select(1, self.noise_left), dev.index_select(1, self.noise_right)
        return left + self.noise_frac * (right - left)

    def stream_layout(self, hop: int) -> dict | None:
        """How a window ``hop`` samples after another reuses that window's sorts, or None.

        The window's first ``carry`` segments are the previous window's last ones (the same
        samples), so their sorted values and noise floors can be handed over instead of sorted
        again (:class:`StreamStep`). Only for the terms :class:`StreamStep` computes: the sorted
        descriptor and the noise floor, with floors of segments the shift keeps on their grid.
        """
        cfg = self.cfg
        if hop <= 0 or hop % cfg.stride or cfg.noise_weight <= 0:
            return None
        shift = hop // cfg.stride  # segments the next window starts later
        carry = cfg.n_segments - shift
        k = cfg.noise_every
        other_terms = (
            cfg.slope_weight > 0 or cfg.reference_size > 0 or cfg.population_components > 0
        )
        if carry <= 0 or shift % k or other_terms:
            return None
        carry_floors = -(-carry // k)  # grid segments 0, k, 2k, ... below carry
        floor_offset = (-carry) % k  # first grid segment among the new ones
        return {
            "carry": carry,
            "carry_floors": carry_floors,
            "span": cfg.window - carry * cfg.stride,
            "floor_offset": floor_offset,
            "segment": cfg.segment,
            "floor_width": self.noise_keep if cfg.noise_summary == "sorted" else 1,
            "stride": cfg.stride,
            "new": shift,
            "new_floors": len(range(floor_offset, shift, k)),
            "floor_every": k,
            "noise_keep": self.noise_keep,
            "floor_mean": int(cfg.noise_summary == "mean"),
            "level_every": cfg.level_every,
            # the step takes the whole window (the rhythm term, a refiner reading the waveform)
            "rhythm": int(cfg.rhythm_weight > 0 or cfg.refiner_waveform_channels > 0),
        }

    def consensus(self, desc: torch.Tensor, n_segments: int | None = None) -> torch.Tensor:
        """The window's median descriptor ``(B, L, 1, .)`` (element-wise over the ``n_segments``
        segments of ``desc``, by default all of them)."""
        middle = (n_segments or self.cfg.n_segments) // 2
        # the largest of the smallest middle + 1 is the median; unsorted selection is half the
        # cost of sorting them in ONNX Runtime and gives the same value
        lower = torch.topk(desc, middle + 1, dim=2, largest=False, sorted=False).values
        return lower.amax(dim=2, keepdim=True)

    def level_consensus(self, level: torch.Tensor) -> torch.Tensor:
        """The consensus of the sorted-segment descriptors ``level``, ``(B, L, 1, segment)``.

        With ``level_every`` k > 1 the median is taken over every k-th segment only (k times
        fewer values to select from); every segment is still scored against it.
        """
        if self.cfg.level_every == 1:
            return self.consensus(level)
        return self.consensus(level.index_select(2, self.level_sub), len(self.level_sub))

    def neighbour_score(self, level: torch.Tensor) -> torch.Tensor:
        """Each segment's mean squared distance ``(B, n_segments)`` to its ``neighbours`` nearest
        segments of the window, leaving out the segments it overlaps. The candidates are the
        segments the consensus is taken over (every ``level_every``-th)."""
        cfg = self.cfg
        b, leads, n, width = level.shape
        x = level.permute(0, 2, 1, 3).reshape(b, n, leads * width)
        c = x if cfg.level_every == 1 else x.index_select(1, self.level_sub)
        sq = (x * x).sum(-1)
        sq_c = sq if cfg.level_every == 1 else sq.index_select(1, self.level_sub)
        d = (sq[:, :, None] + sq_c[:, None, :] - 2 * x @ c.transpose(1, 2)) / (leads * width)
        d = d.clamp_min(0) + self.overlap_penalty
        if cfg.neighbours == 1:
            return d.amin(dim=2)
        k = min(cfg.neighbours, d.shape[2])
        return torch.topk(d, k, dim=2, largest=False, sorted=False).values.mean(2)

    def _init_rhythm(self) -> None:
        """The lags and the valid comparisons of :meth:`rhythm_score`, at its rate."""
        cfg = self.cfg
        d = cfg.rhythm_decimate
        lags = torch.arange(-(-cfg.rhythm_min_lag // d), cfg.rhythm_max_lag // d + 1)
        sub, left, right, frac = _grid(cfg.n_segments, cfg.rhythm_every)
        lo = self.rhythm_first + sub * (cfg.stride // d)
        hi = lo + cfg.rhythm_span // d
        back_ok = (lo[None] - lags[:, None]) >= 0
        fwd_ok = (hi[None] + lags[:, None]) <= cfg.window // d
        self.rhythm_lag_list = lags.tolist()
        buffers = {
            "rhythm_lags": lags.float(),
            "rhythm_back_ok": back_ok.float(),
            "rhythm_back_off": (~back_ok).float() * 1e6,
            "rhythm_fwd_off": (~fwd_ok).float() * 1e6,
            "rhythm_not_period": (lags * d > cfg.rhythm_max_period).float() * 1e6,
            "rhythm_left": left,
            "rhythm_right": right,
            "rhythm_frac": frac,
        }
        if cfg.rhythm_signed:  # the lag offsets and span starts at the signed signal's rate
            sd = cfg.rhythm_signed_decimate
            reach = int(math.ceil(cfg.rhythm_tolerance * cfg.rhythm_max_period / sd))
            starts = (cfg.segment - cfg.rhythm_span) // 2 + sub * cfg.stride
            buffers["rhythm_offsets"] = torch.arange(-reach, reach + 1).float()
            buffers["rhythm_span_starts"] = starts.float() / sd
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    @property
    def rhythm_first(self) -> int:
        """Where the first segment's middle ``rhythm_span`` samples start, at the term's rate."""
        cfg = self.cfg
        return (cfg.segment - cfg.rhythm_span) // 2 // cfg.rhythm_decimate

    def rhythm_score(self, windows: torch.Tensor) -> torch.Tensor:
        """How far each segment's middle is from the signal one beat before or after it,
        ``(B, n_segments)``, beyond ``rhythm_excess`` times the window's median.

        The window's beat period is the lag (``rhythm_min_lag``..``rhythm_max_period`` samples)
        at which the signal best matches itself, on average over the segments: the first
        minimum of that profile within 1.3 times its lowest value, so not a multiple of it.
        Each segment's middle ``rhythm_span`` samples are then compared with the samples one
        period (within ``rhythm_tolerance``) before and after; the squared difference is divided
        by the two spans' energy, and the better of the two directions counts. A beat out of
        step with the rhythm (premature, a pause, the junction of a pasted stretch, a time warp)
        matches neither; a regular beat matches at least one.

        The signal compared is the rectified window averaged over ``rhythm_decimate`` samples
        (an envelope at 20 Hz for 5 samples at 100 Hz; lags at that resolution): where the
        waves are, not their sign, which is what timing needs, at a twenty-fifth of the cost
        of every lag at the full rate. With ``rhythm_every`` k > 1 every k-th segment is
        compared and the segments between are interpolated linearly. With ``rhythm_gate`` g > 0
        the term is multiplied by ``max(0, 1 - median / g)``: it fades out in a window whose
        typical segment matches the signal one period away no better than g (an irregular
        rhythm such as atrial fibrillation, whose normal beats are all out of step).
        """
        cfg = self.cfg
        d = cfg.rhythm_decimate
        x = F.avg_pool1d(windows.abs(), d) if d > 1 else windows.abs()  # (B, L, T / d)
        span, step = cfg.rhythm_span // d, cfg.stride // d * cfg.rhythm_every
        t, top, first = x.shape[2], self.rhythm_lag_list[-1], self.rhythm_first
        n = len(range(0, cfg.n_segments, cfg.rhythm_every))  # segments compared
        lags = self.rhythm_lag_list
        before, after = F.pad(x, (top, 0)), F.pad(x, (0, top))
        width = (n - 1) * step + span

        def energy(v: torch.Tensor) -> torch.Tensor:
            """The sum of squares over the leads of every ``span`` samples of ``v``, ``(B, 1, .)``."""
            return F.avg_pool1d((v * v).sum(1, keepdim=True), span, 1) * span

        def at(e: torch.Tensor, offsets: list[int]) -> torch.Tensor:
            """``e`` at each segment's span start plus each offset, ``(B, len(offsets), n)``."""
            return torch.cat([e[..., o : o + (n - 1) * step + 1 : step] for o in offsets], 1)

        def cross(other: torch.Tensor) -> torch.Tensor:
            """Each segment's span of the window times ``other`` ``(B, L, n_lags, t)``, summed."""
            v = (x[:, :, None] * other).sum(1)[..., first : first + width]
            return F.avg_pool1d(v, span, step) * span

        # every lagged copy of the window, samples u - lag and u + lag: (B, L, n_lags, t)
        past = torch.stack([before[..., top - lag : top - lag + t] for lag in lags], 2)
        e_before = energy(before)
        own = at(e_before, [top + first])  # (B, 1, n)
        floor = 1e-3 * span  # flat lines are not divided by ~0
        total = own + at(e_before, [top + first - lag for lag in lags])
        back = (total - 2 * cross(past)).clamp_min(0) / (total + floor)
        n_lags = back.shape[1]
        ok = self.rhythm_back_ok
        profile = (back * ok).sum(2) / ok.sum(1) + self.rhythm_not_period
        first_low = profile <= 1.3 * profile.amin(1, keepdim=True)
        start = first_low.float().argmax(1, keepdim=True)
        last = torch.ones_like(profile[:, :1], dtype=torch.bool)
        rising = torch.cat([profile[:, 1:] >= profile[:, :-1], last], dim=1)
        after_start = torch.arange(n_lags, device=windows.device)[None] >= start
        period = self.rhythm_lags[(rising & after_start).float().argmax(1)][:, None]
        if cfg.rhythm_signed:  # the envelope gave the period; the signed window is compared
            score = self.signed_rhythm(windows, period * d)
        else:
            future = torch.stack([after[..., lag : lag + t] for lag in lags], 2)
            total = own + at(energy(after), [first + lag for lag in lags])
            fwd = (total - 2 * cross(future)).clamp_min(0) / (total + floor)
            off = (self.rhythm_lags[None] - period).abs() > cfg.rhythm_tolerance * period
            off = off.float()[:, :, None] * 1e6
            score = torch.minimum(
                (back + self.rhythm_back_off + off).amin(1),
                (fwd + self.rhythm_fwd_off + off).amin(1),
            )
        median = torch.topk(score, n // 2 + 1, dim=1, largest=False, sorted=False).values
        median = median.amax(1, keepdim=True)
        score = F.relu(score - cfg.rhythm_excess * median)
        if cfg.rhythm_gate > 0:  # fades out as the window's rhythm loses its period
            score = score * F.relu(1 - median / cfg.rhythm_gate)
        if cfg.rhythm_every == 1:
            return score
        left, right = (
            score.index_select(1, self.rhythm_left),
            score.index_select(1, self.rhythm_right),
        )
        return left + self.rhythm_frac * (right - left)

    def signed_rhythm(self, windows: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
        """Each compared segment's middle ``rhythm_span`` samples of the signed window against
        the samples one ``period`` ``(B, 1)`` (samples) before and after, at every lag within
        ``rhythm_tolerance`` of it, ``(B, n compared)``.

        The squared difference divided by the two spans' energy; the best lag, then the better
        direction. Only the stretch of the window near one period away is gathered (per window),
        and the lags are static slices of it, so the signed signal at the full rate costs a
        fraction of comparing every lag; the sign sees an inverted beat, the full rate a beat a
        few samples out of step.
        """
        cfg = self.cfg
        sd = cfg.rhythm_signed_decimate
        if sd > 1:  # the signed signal averaged over sd samples; lengths and lags at its rate
            windows, period = F.avg_pool1d(windows, sd), torch.round(period / sd)
        t = windows.shape[2]
        span, step = cfg.rhythm_span // sd, cfg.stride * cfg.rhythm_every // sd
        starts = self.rhythm_span_starts  # (n,)
        n, k = starts.shape[0], self.rhythm_offsets.shape[0]
        reach = (k - 1) // 2
        first, width = (cfg.segment - cfg.rhythm_span) // 2 // sd, (n - 1) * step + span
        pad = -(-cfg.rhythm_max_lag // sd) + reach
        energy = (windows * windows).sum(1, keepdim=True)  # (B, 1, T)
        every_span = F.avg_pool1d(energy, span, 1) * span  # energy of the span at each start
        padded = F.pad(windows, (pad, pad))  # (B, L, T + 2 pad)
        lags = period + self.rhythm_offsets[None]  # (B, K)
        near = (self.rhythm_offsets[None].abs() <= cfg.rhythm_tolerance * period)[..., None]
        run = torch.arange(t + 2 * reach, device=windows.device)

        def span_sums(v: torch.Tensor) -> torch.Tensor:
            """Sums of ``v`` ``(B, K, T)`` over each compared span, ``(B, K, n)``."""
            return F.avg_pool1d(v[..., first : first + width], span, step) * span

        own = span_sums(energy)  # (B, 1, n)
        floor = 1e-3 * span
        best = []
        for sign in (-1, 1):
            # the window from one period away, ``reach`` samples either side: sample u of the
            # slab is sample u - reach + sign x period of the window (zero outside it)
            begin = (pad - reach + sign * period).long()  # (B, 1)
            index = (begin + run[None])[:, None].expand(-1, padded.shape[1], -1)
            slab = torch.gather(padded, 2, index)  # (B, L, T + 2 reach)
            # lag period + offset o is the slice starting at reach + sign x o
            order = range(k) if sign > 0 else range(k - 1, -1, -1)
            other = torch.stack([slab[..., i : i + t] for i in order], 2)  # (B, L, K, T)
            cross = span_sums((windows[:, :, None] * other).sum(1))
            lo = starts[None, None] + sign * lags[..., None]  # where the other span starts
            inside = (lo >= 0) & (lo + span <= t) & near
            at = lo.clamp(0, t - span).long().reshape(lo.shape[0], 1, -1)
            total = own + every_span.gather(2, at).reshape(lo.shape)
            dist = (total - 2 * cross).clamp_min(0) / (total + floor)
            best.append((dist + (~inside).float() * 1e6).amin(1))
        return torch.minimum(best[0], best[1])

    def in_window_score(self, level: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
        """Each segment's descriptor ``level`` against the window's ``consensus``, ``(B, n_segments)``.

        The mean squared difference. With ``neighbours`` > 0 it has two parts. Where the segment
        holds more than the consensus (sorted values further from its median: a taller, wider or
        inverted complex, noise) it counts in full. Where it holds less (a missing or smaller
        QRS) it counts only as far as no other segment of the window looks like this one
        (:meth:`neighbour_score`). When the beats are further apart than a segment, the segments
        between them hold no QRS. The median (which holds one) scores all of them high, although
        every gap between beats looks the same.
        """
        dev = (level - consensus) ** 2
        if self.cfg.neighbours <= 0:
            return dev.mean(dim=(1, 3))
        excess = torch.where(level.abs() > consensus.abs(), dev, torch.zeros(())).mean(dim=(1, 3))
        deficit = dev.mean(dim=(1, 3)) - excess
        return excess + torch.minimum(deficit, self.neighbour_score(level))

    def sorted_terms(
        self,
        ordered: torch.Tensor,
        floors: torch.Tensor | None,
        consensus: torch.Tensor | None = None,
        floor_consensus: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The segment scores ``(B, n_segments)`` of the terms that need only the sorted segments
        ``ordered`` and the noise floors ``floors`` (what :class:`StreamStep` has), before erosion;
        also the level descriptors and the consensus. The two medians over the segments are
        selected here unless given."""
        cfg = self.cfg
        level = self.centred(ordered)
        if consensus is None:
            consensus = self.level_consensus(level)
        seg_score = self.in_window_score(level, consensus)
        if cfg.consensus_weight != 1.0:
            seg_score = cfg.consensus_weight * seg_score
        if cfg.noise_weight > 0:
            seg_score = seg_score + cfg.noise_weight * self.noise_term(floors, floor_consensus)
        if cfg.level_weight > 0:
            bump = self.level_bump(ordered[..., cfg.segment // 2])
            seg_score = seg_score + cfg.level_weight * (bump**2).mean(dim=1)
        return seg_score, level, consensus

    def eroded(self, seg_score: torch.Tensor) -> torch.Tensor:
        """``seg_score`` with ``erode_share`` of :meth:`erode_scores` (unchanged without erosion)."""
        cfg = self.cfg
        if cfg.erode <= 0 or cfg.erode_share <= 0:
            return seg_score
        eroded = self.erode_scores(seg_score)
        if cfg.erode_share == 1.0:
            return eroded
        return seg_score + cfg.erode_share * (eroded - seg_score)

    @staticmethod
    def _deviation(desc: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
        """Mean squared distance ``(B, n_segments)`` of each descriptor to the consensus."""
        return ((desc - consensus) ** 2).mean(dim=(1, 3))

    def _init_spectrum(self) -> None:
        """Fixed buffers of the spectral population term: frame indices, Hann-windowed DFT, bands."""
        cfg = self.cfg
        n, nb = cfg.population_spectrum_frame, cfg.population_spectrum_bands
        width = cfg.population_spectrum_band_bins
        t = torch.arange(n, dtype=torch.float64)[:, None]
        freq = torch.arange(1, 1 + nb * width, dtype=torch.float64)[None]
        hann = torch.hann_window(n, periodic=False, dtype=torch.float64)[:, None]
        angle = 2 * torch.pi * t * freq / n
        self.register_buffer("spec_cos", (hann * torch.cos(angle)).float(), persistent=False)
        self.register_buffer("spec_sin", (hann * torch.sin(angle)).float(), persistent=False)
        bands = torch.kron(torch.eye(nb), torch.full((width, 1), 1.0 / width))
        self.register_buffer("spec_bands", bands, persistent=False)
        k, dims = cfg.population_components, cfg.n_leads * nb
        self.register_buffer("spec_mean", torch.zeros(dims))
        self.register_buffer("spec_scale", torch.ones(dims))
        self.register_buffer("spec_basis", torch.zeros(min(k, dims), dims))
        self.register_buffer("spec_sd", torch.ones(min(k, dims)))
        self.register_buffer("spec_residual", torch.ones(()))

    def spectrum(self, windows: torch.Tensor) -> torch.Tensor:
        """Log power of each lead in ``population_spectrum_bands`` bands, ``(B, L * bands)``.

        Welch estimate: Hann frames of ``population_spectrum_frame`` samples every half frame,
        DFT bins from 1 (fs / frame Hz) on, ``population_spectrum_band_bins`` bins per band,
        power in mV^2 averaged over frames and bins, then ``log(power + 1e-4)``. It sees the
        heart rate and each lead's waveform timing, which the sorted descriptor drops.
        """
        cfg = self.cfg
        n = cfg.population_spectrum_frame
        step = max(1, n // 2)
        frames = _frames(windows, n, step, (cfg.window - n) // step + 1)
        power = (frames @ self.spec_cos) ** 2 + (frames @ self.spec_sin) ** 2
        bands = power.mean(2) @ self.spec_bands
        return torch.log(bands + 1e-4).reshape(windows.shape[0], -1)

    def _distance(
        self, z: torch.Tensor, basis: torch.Tensor, sd: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """Population distance ``(B,)`` of centred, scaled descriptors ``z`` ``(B, D)``."""
        proj = z @ basis.T
        outside = ((z - proj @ basis) ** 2).sum(1) / residual
        inside = (proj / sd) ** 2
        if self.cfg.population_covariance == "shrunk":
            return outside + inside.sum(1)
        return outside + inside.mean(1)

    def population_score(
        self, consensus: torch.Tensor, windows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """How far a window's typical segment is from normal windows of other people, ``(B,)``.

        ``pca``: residual outside the ``population_components`` principal directions of the
        training consensus descriptors (relative to its median on the training windows) plus the
        mean squared standardised projection inside them. ``shrunk``: Mahalanobis distance under
        the Ledoit-Wolf shrunk covariance, relative to its median on the training windows (about
        1 for a typical normal window). With ``population_lead_scale`` each lead is first divided
        by its spread over the training windows, so tall precordial leads do not dominate. With
        ``population_spectrum_frame`` (needs ``windows``) the same distance of the window's band
        spectrum (:meth:`spectrum`) is added.
        """
        x = consensus.reshape(consensus.shape[0], -1)
        if self.cfg.population_lead_scale:
            x = x / self.pop_scale
        score = self._distance(x - self.pop_mean, self.pop_basis, self.pop_sd, self.pop_residual)
        if self.cfg.population_spectrum_frame and windows is not None:
            zs = self.spectrum(windows) / self.spec_scale - self.spec_mean
            score = score + self._distance(zs, self.spec_basis, self.spec_sd, self.spec_residual)
        return score

    def fit_population(self, windows: torch.Tensor) -> None:
        """Fit the population reference on normal training windows ``(N, L, T)``.

        ``pca`` needs N > ``population_components``; ``shrunk`` keeps at most that many
        directions (set it at least N for the exact shrunk Mahalanobis distance) and needs N > 1.
        """
        cfg = self.cfg
        k = cfg.population_components
        if k == 0:
            return
        shrunk = cfg.population_covariance == "shrunk"
        need = 1 if shrunk else k
        if len(windows) <= need:
            raise ValueError(
                f"need more than {need} normal windows to fit {k} components, got {len(windows)}"
            )
        with torch.no_grad():
            parts = torch.split(windows, 256)
            cons = torch.cat([self.level_consensus(self.descriptors(w)[0]) for w in parts])
            x = cons.reshape(len(cons), -1).to(torch.float64)
            scale = _lead_scale(x, cfg.n_leads) if cfg.population_lead_scale else None
            fitted = _fit_gaussian(x if scale is None else x / scale, k, shrunk)
            _copy(fitted, self.pop_mean, self.pop_basis, self.pop_sd, self.pop_residual)
            if scale is not None:
                self.pop_scale.copy_(scale.float())
            if cfg.population_spectrum_frame:
                spec = torch.cat([self.spectrum(w) for w in parts]).to(torch.float64)
                scale = _lead_scale(spec, cfg.n_leads) if cfg.population_lead_scale else None
                rows = len(self.spec_basis)
                fitted = _fit_gaussian(spec if scale is None else spec / scale, rows, shrunk)
                _copy(fitted, self.spec_mean, self.spec_basis, self.spec_sd, self.spec_residual)
                if scale is not None:
                    self.spec_scale.copy_(scale.float())

    def _reference_rows(self, level: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        """Descriptors ``(B, L, S, .)`` as reference rows ``(B, S, L * reference_dims)``.

        With ``reference_slope_scale`` the sorted steps (times that scale) follow the values.
        """
        b, leads, n, _ = level.shape
        q = torch.index_select(level, 3, self.ref_index)
        if self.cfg.reference_slope_scale > 0:
            steps = torch.index_select(slope, 3, self.ref_slope_index)
            q = torch.cat([q, self.cfg.reference_slope_scale * steps], dim=3)
        return q.permute(0, 2, 1, 3).reshape(b, n, leads * self.cfg.reference_dims)

    def reference_score(self, level: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        """Mean squared distance ``(B, n_segments)`` of each segment to its nearest reference descriptor.

        The reference (:meth:`fit_reference`) holds descriptors of normal data, e.g. the
        anomaly-free prefix of a series, so a segment unlike anything seen there stands out
        even when it is the window's majority.
        """
        rows = self._reference_rows(level, slope)
        cross = torch.matmul(rows, self.ref_desc.T)
        dist = (rows**2).sum(-1, keepdim=True) + self.ref_norm - 2 * cross
        return dist.min(-1).values.clamp_min(0) / rows.shape[-1]

    def fit_reference(self, windows: torch.Tensor, seed: int = 0) -> int:
        """Store up to ``reference_size`` segment descriptors of normal windows ``(N, L, T)``.

        Descriptors are pooled over all windows, exact duplicates dropped, and a greedy
        farthest-point subset (coreset) kept so rare normal shapes stay covered. Returns the
        number of distinct descriptors seen.
        """
        size = self.cfg.reference_size
        if size == 0:
            return 0
        with torch.no_grad():
            rows = torch.cat([self._reference_rows(*self.descriptors(w)).reshape(-1, self.ref_desc.shape[1])
                              for w in torch.split(windows, 256)])  # fmt: skip
        rows = torch.unique(rows, dim=0)
        keep = _coreset(rows, size, seed)
        chosen = rows[keep]
        if len(chosen) < size:  # repeat rows: the minimum distance is unchanged
            chosen = chosen[torch.arange(size) % len(chosen)]
        self.ref_desc.copy_(chosen)
        self.ref_norm.copy_((chosen**2).sum(1))
        return len(rows)

    def scored_segments(
        self, windows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Segment scores ``(B, n_segments)`` of windows ``(B, L, T)`` after erosion (before the
        refiner), the sorted segments, their noise floors (None without the noise term) and the
        consensus."""
        cfg = self.cfg
        seg = self.segments(windows)
        ordered = torch.sort(seg, dim=-1).values
        floors = self.noise_floors(seg) if cfg.noise_weight > 0 else None
        seg_score, level, consensus = self.sorted_terms(ordered, floors)
        seg_score = self.with_rhythm(seg_score, windows)
        if cfg.slope_weight > 0 or cfg.reference_size > 0:
            slope = self.sorted_steps(seg)
            if cfg.slope_weight > 0:
                slope_dev = self._deviation(slope, self.consensus(slope))
                seg_score = seg_score + cfg.slope_weight * slope_dev
            if cfg.reference_size > 0:
                seg_score = seg_score + cfg.reference_weight * self.reference_score(level, slope)
        return self.eroded(seg_score), ordered, floors, consensus

    def with_rhythm(self, seg_score: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Segment scores plus the weighted rhythm term of ``windows``, where the term goes
        before the refiner (otherwise :meth:`outputs` adds it last)."""
        cfg = self.cfg
        if cfg.rhythm_weight > 0 and not cfg.rhythm_after_refiner:
            return seg_score + cfg.rhythm_weight * self.rhythm_score(windows)
        return seg_score

    def segment_levels(self, ordered: torch.Tensor) -> torch.Tensor:
        """Each segment's median (mV) ``(B, L, n_segments)`` from its sorted values."""
        return ordered[..., self.cfg.segment // 2]

    def outputs(
        self,
        point: torch.Tensor,
        seg_score: torch.Tensor,
        ordered: torch.Tensor,
        windows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph's point and window scores from its point scores ``point`` ``(B, T)``: the
        window score is always the detector's; with the refiner, the point scores are its
        refined segment scores (``seg_score``, levels from the sorted segments ``ordered``).
        With ``rhythm_after_refiner`` the rhythm term of ``windows`` is added to the point
        scores last."""
        cfg = self.cfg
        window = self.window_score(point)
        late = cfg.rhythm_weight > 0 and cfg.rhythm_after_refiner
        if self.refiner is not None:
            refined = self.refiner(seg_score, self.segment_levels(ordered), windows)
            if late:
                refined = refined + cfg.rhythm_weight * self.rhythm_score(windows)
            point = self._spread(refined)
        elif late:
            point = point + self._spread(cfg.rhythm_weight * self.rhythm_score(windows))
        return point, window

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic scores of windows ``(B, L, T)``: point ``(B, T)`` and window ``(B,)``.

        With the refiner, the window score is the detector's and the point scores are refined.
        """
        cfg = self.cfg
        seg_score, ordered, floors, consensus = self.scored_segments(windows)
        point = self._spread(seg_score)
        if cfg.population_components > 0:
            pop = self.population_score(consensus, windows)
            point = point + cfg.population_weight * pop[:, None]
        point, window = self.outputs(point, seg_score, ordered, windows)
        lay = self.carry_outputs
        if lay is not None and floors is not None:  # also the carry for the stream step
            new = cfg.n_segments - lay["carry"]
            keep = floors.shape[2] - lay["carry_floors"]
            return point, window, ordered[:, :, new:], floors[:, :, keep:]  # type: ignore[return-value]
        return point, window


class StreamStep(nn.Module):
    """A window's scores from the sorts of its new segments and the sorts it shares with the
    previous window (:meth:`SegmentConsensus.stream_layout`).

    Inputs: the sorted values ``(B, L, new, segment)`` and noise floors
    ``(B, L, new_floors, floor_width)`` of the window's ``new`` last segments, the previous
    window's last ``carry`` sorted segments ``(B, L, carry, segment)`` and floors
    ``(B, L, carry_floors, floor_width)``, and the window's two medians over its segments: the
    consensus ``(B, L, 1, segment)`` and the consensus floor ``(B, L, 1, floor_width)``; with
    the rhythm term also the whole window ``(B, L, window)``, which that term compares with
    itself (it needs no sort, so nothing of it is carried). The sorts and medians are computed
    outside the graph (:mod:`ecgstream.runtime.stream_sorts`: numpy sorts and selects several
    times faster than ONNX Runtime's ``TopK``).
    Outputs: point and window scores, equal to :class:`SegmentConsensus` on the whole window.
    What the next window takes over is the tail of the new sorts.
    """

    def __init__(self, model: SegmentConsensus, layout: dict):
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(
        self,
        sorted_new: torch.Tensor,
        floors_new: torch.Tensor,
        carried: torch.Tensor,
        carried_floors: torch.Tensor,
        consensus: torch.Tensor,
        floor_consensus: torch.Tensor,
        windows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        ordered = torch.cat([carried, sorted_new], dim=2)
        floors = torch.cat([carried_floors, floors_new], dim=2)
        seg_score = m.sorted_terms(ordered, floors, consensus, floor_consensus)[0]
        seg_score = m.eroded(m.with_rhythm(seg_score, windows))
        return m.outputs(m._spread(seg_score), seg_score, ordered, windows)


def _grid(n: int, k: int) -> tuple[torch.Tensor, ...]:
    """Every ``k``-th of ``n`` segments, and for each segment its two neighbours on that grid and
    its linear interpolation weight between them: ``(sub, left, right, frac)``."""
    sub = torch.arange(0, n, k)
    pos = torch.arange(n, dtype=torch.float32) / k
    left = pos.floor().long().clamp(max=len(sub) - 1)
    right = (left + 1).clamp(max=len(sub) - 1)
    frac = torch.where(right > left, pos - left, torch.zeros(()))
    return sub, left, right, frac


def _frames(x: torch.Tensor, size: int, step: int, count: int) -> torch.Tensor:
    """``count`` frames of ``size`` samples every ``step`` samples of ``x`` ``(B, L, T)``, as
    ``(B, L, count, size)``.

    When ``step`` divides ``size`` a frame is ``size / step`` consecutive blocks of ``step``
    samples, and slices of the blocks side by side copy the same values about 6x faster than a
    ``Gather`` in ONNX Runtime.
    """
    b, leads, _ = x.shape
    if size % step == 0:
        n_blocks = count - 1 + size // step
        blocks = x[..., : n_blocks * step].reshape(b, leads, n_blocks, step)
        return torch.cat([blocks[:, :, j : j + count] for j in range(size // step)], dim=-1)
    index = (torch.arange(count)[:, None] * step + torch.arange(size)[None]).reshape(-1)
    return torch.index_select(x, 2, index).reshape(b, leads, count, size)


def _lead_scale(x: torch.Tensor, n_leads: int) -> torch.Tensor:
    """Each lead's RMS deviation from the mean over rows ``(N, L * D)``, repeated per entry."""
    dev = (x - x.mean(0)).reshape(len(x), n_leads, -1)
    rms = (dev**2).mean(dim=(0, 2)).sqrt().clamp_min(1e-9)
    return rms.repeat_interleave(dev.shape[2])


def _ledoit_wolf(z: torch.Tensor) -> float:
    """Ledoit-Wolf shrinkage intensity of centred rows ``z`` ``(N, D)`` towards a scaled identity.

    The same estimate as scikit-learn's ``ledoit_wolf_shrinkage``, computed with the ``N x N``
    Gram matrix since N is far below D here.
    """
    n, d = z.shape
    z2 = z**2
    trace = z2.sum() / n
    mu = trace / d
    beta_ = (z2.sum(1) ** 2).sum()
    delta_ = ((z @ z.T) ** 2).sum() / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * trace + d * mu**2) / d
    beta = torch.minimum(beta, delta)
    return 0.0 if float(beta) <= 0 else float(beta / delta)


def _fit_gaussian(
    x: torch.Tensor, k: int, shrunk: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, basis (k, D), sd (k,), residual)`` of rows ``x`` ``(N, D)`` for :meth:`_distance`.

    ``pca``: the top ``k`` directions, their standard deviations and the median squared residual.
    ``shrunk``: up to ``k`` directions of the Ledoit-Wolf covariance ``(1 - a) S + a mu I``, the
    variance ``a mu`` outside them, both scaled by the median training distance.
    """
    mean = x.mean(0)
    z = x - mean
    _, sv, vt = torch.linalg.svd(z, full_matrices=False)
    keep = min(k, len(sv))
    basis = torch.zeros(k, x.shape[1], dtype=x.dtype)
    basis[:keep] = vt[:keep]
    if not shrunk:
        proj = z @ basis.T
        residual = ((z - proj @ basis) ** 2).sum(1).median().clamp_min(1e-9)
        sd = (sv[:k] / max(1, len(x) - 1) ** 0.5).clamp_min(1e-6)
        return mean, basis, sd, residual
    n, d = z.shape
    a = _ledoit_wolf(z)
    mu = float((z**2).sum()) / (n * d)
    outside = max(a * mu, 1e-12)
    var = torch.full((k,), outside, dtype=x.dtype)
    var[:keep] = ((1 - a) * sv[:keep] ** 2 / n + a * mu).clamp_min(1e-12)
    proj = z @ basis.T
    raw = ((z - proj @ basis) ** 2).sum(1) / outside + (proj**2 / var).sum(1)
    med = float(raw.median().clamp_min(1e-12))
    return mean, basis, (var * med).sqrt(), torch.tensor(outside * med, dtype=x.dtype)


def _copy(fitted: tuple, mean: torch.Tensor, basis: torch.Tensor, sd: torch.Tensor,
          residual: torch.Tensor) -> None:  # fmt: skip
    for buf, value in zip((mean, basis, sd, residual), fitted, strict=True):
        buf.copy_(value.to(buf.dtype))


def _coreset(rows: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of a greedy farthest-point subset of ``rows`` ``(N, D)``, at most ``size``."""
    n = len(rows)
    if n <= size:
        return torch.arange(n)
    if n > 50 * size:  # bound the fitting time on very long series
        pool = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: 50 * size]
        return pool[_coreset(rows[pool], size, seed)]
    x = rows.to(torch.float64)
    norm = (x**2).sum(1)
    chosen = [int(torch.argmin(((x - x.median(0).values) ** 2).sum(1)))]
    dist = torch.full((n,), float("inf"), dtype=torch.float64)
    for _ in range(size - 1):
        last = chosen[-1]
        dist = torch.minimum(dist, (norm + norm[last] - 2 * x @ x[last]).clamp_min(0))
        chosen.append(int(torch.argmax(dist)))
    return torch.tensor(chosen)
