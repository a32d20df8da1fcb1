"""``ConsensusConfig``: every setting of the consensus detector, declared and validated here once.

Lengths are in samples at the model rate (``fs`` of ``[train]``; 100 Hz in the shipped models),
so 80 samples are 0.8 s there. The ``[model]`` table of a training TOML is parsed straight into
this class (:func:`ecgstream.training.config.model_config`); ``n_leads`` and ``window`` come
from ``[train]`` (``leads``, ``window_s``). A bad value raises :class:`ValueError` whose message
starts with the field's name.

>>> ConsensusConfig(window=400, segment=40, stride=5).n_segments
73
>>> ConsensusConfig(noise_quantile=1.5)
Traceback (most recent call last):
...
ValueError: noise_quantile: must be in (0, 1] (the share of the smallest steps), got 1.5
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

__all__ = ["ConsensusConfig", "REMOVED_SWITCHES", "spectrum_sizes"]

#: switches no shipped model used, removed with their code (docs/research/removed-switches.md);
#: each with the value that left the model unchanged, so a stored config holding that value
#: still loads and one that used the switch is refused
REMOVED_SWITCHES = {
    "slope_weight": 0.0,
    "noise_summary": "sorted",
    "level_weight": 0.0,
    "level_reach": None,
    "erode": 0,
    "erode_share": None,
    "rhythm_signed": False,
    "rhythm_signed_decimate": None,
    "rhythm_after_refiner": False,
    "refiner_min_gain": 1.0,
    "refiner_waveform_channels": 0,
    "refiner_waveform_decimate": None,
}


@dataclass
class ConsensusConfig:
    """The detector's sizes (samples at the model rate) and terms; validated on construction.

    Terms: the in-window consensus (always; ``consensus_weight``), the noise floor
    (``noise_weight``), the neighbours of a segment holding less than the consensus
    (``neighbours``), the rhythm term (``rhythm_weight``), the population reference
    (``population_components``), the nearest-neighbour reference (``reference_size``) and the
    score refiner (``refiner_channels``). A weight or size of 0 turns its term off.
    """

    n_leads: int = 1
    #: window length (samples), from ``[train]`` ``window_s``
    window: int = 1000
    #: segment length (samples): about one beat
    segment: int = 80
    #: samples between the starts of consecutive segments
    stride: int = 10
    noise_weight: float = 0.0
    #: share of a segment's smallest |steps| that is its noise floor
    noise_quantile: float = 0.7
    #: noise floor of every n-th segment, interpolated between them
    noise_every: int = 1
    #: the consensus (median descriptor) over every n-th segment only
    level_every: int = 1
    #: >0: a segment holding less than the consensus is compared with its k nearest segments
    neighbours: int = 0
    rhythm_weight: float = 0.0
    #: the middle samples of each segment the rhythm term compares
    rhythm_span: int = 80
    #: shortest beat period looked for (samples; 30 = 200 per minute at 100 Hz)
    rhythm_min_lag: int = 30
    #: longest beat period looked for (samples; 150 = 40 per minute at 100 Hz)
    rhythm_max_period: int = 150
    #: share of the period a beat may come early or late
    rhythm_tolerance: float = 0.1
    #: the term counts above this times the window's median
    rhythm_excess: float = 2.0
    #: the rhythm envelope is |x| averaged over this many samples
    rhythm_decimate: int = 5
    #: the rhythm term of every n-th segment, interpolated between
    rhythm_every: int = 2
    #: >0: fade the rhythm term out as the window's median nears this
    rhythm_gate: float = 0.0
    #: >0: principal directions (or shrunk covariance rank) of the population reference
    population_components: int = 0
    population_weight: float = 1.0
    #: "pca" or "shrunk" (Ledoit-Wolf Mahalanobis)
    population_covariance: str = "pca"
    #: divide each lead by its spread on the training windows
    population_lead_scale: bool = False
    #: >0: also the band spectrum, Welch frames of this many samples (:func:`spectrum_sizes`)
    population_spectrum_frame: int = 0
    population_spectrum_bands: int = 0
    #: DFT bins per band
    population_spectrum_band_bins: int = 1
    #: the window score is the mean of the top ``topk_frac`` point scores
    topk_frac: float = 0.1
    #: weight of the in-window term
    consensus_weight: float = 1.0
    #: >0: descriptors of normal data kept for the nearest-neighbour reference (series)
    reference_size: int = 0
    #: descriptor entries per lead kept for it (0: all ``segment``)
    reference_quantiles: int = 0
    reference_weight: float = 1.0
    #: >0: the reference rows also hold the sorted steps times this
    reference_slope_scale: float = 0.0
    #: the score refiner (:mod:`ecgstream.models.refiner`): 0 channels = none
    refiner_channels: int = 0
    refiner_dilations: tuple[int, ...] = (1, 2, 4, 8)
    #: the refiner's convolution width (segments; odd)
    refiner_kernel: int = 3
    #: point score x exp(refiner_weight x (logit - refiner_floor)), at least x1
    refiner_weight: float = 0.5
    refiner_floor: float = -6.0
    #: the refiner reads segment levels (mV) times this, about unit size
    refiner_level_scale: float = 5.0

    def __post_init__(self) -> None:
        self.refiner_dilations = tuple(int(d) for d in self.refiner_dilations)
        for problem in _problems(self):
            raise ValueError(problem)

    @property
    def n_segments(self) -> int:
        return (self.window - self.segment) // self.stride + 1

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
        """A config from a stored one (a model file's ``params``): other keys are ignored, and a
        removed switch is accepted only at the value that left the model unchanged."""
        used = {k: d[k] for k in REMOVED_SWITCHES if k in d and _used(k, d[k])}
        if used:
            raise ValueError(
                f"this model uses switches that were removed (docs/research/removed-switches.md): "
                f"{used}; re-export it with an ecgstream version that still has them"
            )
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _used(name: str, value) -> bool:
    """Whether a stored value of the removed switch ``name`` changed the model."""
    neutral = REMOVED_SWITCHES[name]
    return neutral is not None and value != neutral


def _problems(c: ConsensusConfig):
    """Each broken rule of ``c`` as a message that starts with the field it names."""
    if c.n_leads < 1:
        yield f"n_leads: must be at least 1, got {c.n_leads}"
    if not 2 <= c.segment <= c.window:
        yield f"segment: {c.segment} must be in [2, window={c.window}] samples"
    if c.stride < 1:
        yield f"stride: must be at least 1 sample, got {c.stride}"
    if c.n_segments < 3:
        yield (
            f"segment: window {c.window} holds only {c.n_segments} segments of {c.segment} "
            f"samples every {c.stride}; the consensus needs at least 3"
        )
    for name in ("noise_weight", "rhythm_weight", "population_weight", "consensus_weight",
                 "reference_weight", "reference_slope_scale", "rhythm_excess", "rhythm_gate",
                 "refiner_weight", "refiner_level_scale"):  # fmt: skip
        if getattr(c, name) < 0:
            yield f"{name}: must be >= 0, got {getattr(c, name)}"
    if not 0 < c.noise_quantile <= 1:
        yield f"noise_quantile: must be in (0, 1] (the share of the smallest steps), got {c.noise_quantile}"
    for name in ("noise_every", "level_every", "rhythm_every", "rhythm_decimate"):
        if getattr(c, name) < 1:
            yield f"{name}: must be at least 1, got {getattr(c, name)}"
    for name in ("neighbours", "population_components", "reference_size", "refiner_channels"):
        if getattr(c, name) < 0:
            yield f"{name}: must be >= 0, got {getattr(c, name)}"
    if c.rhythm_weight > 0:
        yield from _rhythm_problems(c)
    if c.population_covariance not in ("pca", "shrunk"):
        yield f"population_covariance: must be 'pca' or 'shrunk', got {c.population_covariance!r}"
    if c.population_spectrum_frame:
        bins = 1 + c.population_spectrum_bands * c.population_spectrum_band_bins
        if not (
            c.population_components > 0
            and 4 <= c.population_spectrum_frame <= c.window
            and c.population_spectrum_bands >= 1
            and c.population_spectrum_band_bins >= 1
            and bins <= c.population_spectrum_frame // 2 + 1
        ):
            yield (
                f"population_spectrum_frame: the population spectrum needs "
                f"population_components > 0, a frame in [4, window={c.window}] samples and "
                f"bands x band_bins + 1 <= frame // 2 + 1 DFT bins, got frame "
                f"{c.population_spectrum_frame}, {c.population_spectrum_bands} bands of "
                f"{c.population_spectrum_band_bins} bins"
            )
    if not 0 < c.topk_frac <= 1:
        yield f"topk_frac: must be in (0, 1], got {c.topk_frac}"
    if not 0 <= c.reference_quantiles <= c.segment:
        yield f"reference_quantiles: must be in [0, segment={c.segment}], got {c.reference_quantiles}"
    if c.refiner_channels > 0:
        if c.population_components > 0:
            yield (
                f"refiner_channels: the refiner cannot be combined with a population reference; "
                f"got {c.refiner_channels} channels and {c.population_components} components"
            )
        if not c.refiner_dilations or min(c.refiner_dilations) < 1:
            yield f"refiner_dilations: need at least one, each >= 1, got {c.refiner_dilations}"
        if c.refiner_kernel < 1 or c.refiner_kernel % 2 == 0:
            yield f"refiner_kernel: must be odd and >= 1, got {c.refiner_kernel}"


def _rhythm_problems(c: ConsensusConfig):
    """The rhythm term's rules (only checked when it is on)."""
    if not 1 <= c.rhythm_span <= c.segment or c.rhythm_span % c.stride:
        yield (
            f"rhythm_span: must be in [1, segment={c.segment}] samples and a multiple of the "
            f"stride ({c.stride}), got {c.rhythm_span}"
        )
    if not 1 <= c.rhythm_min_lag < c.rhythm_max_period:
        yield (
            f"rhythm_min_lag: need 1 <= rhythm_min_lag < rhythm_max_period, got "
            f"{c.rhythm_min_lag} and {c.rhythm_max_period}"
        )
    if not 0 <= c.rhythm_tolerance < 1:
        yield f"rhythm_tolerance: must be in [0, 1), got {c.rhythm_tolerance}"
    if c.rhythm_decimate >= 1 and (c.stride % c.rhythm_decimate or c.window % c.rhythm_decimate):
        yield (
            f"rhythm_decimate: {c.rhythm_decimate} samples must divide the stride ({c.stride}) "
            f"and the window ({c.window})"
        )
    if c.rhythm_max_lag + c.rhythm_span >= c.window // 2:
        yield (
            f"rhythm_max_period: the longest lag ({c.rhythm_max_lag} samples with the tolerance) "
            f"plus the span ({c.rhythm_span}) must stay under half the window "
            f"({c.window // 2} samples)"
        )


def spectrum_sizes(frame_s: float, top_hz: float, fs: float) -> dict:
    """Welch frame (samples), band count and DFT bins per 1 Hz band of a population spectrum of
    ``frame_s`` seconds up to ``top_hz`` at ``fs`` Hz, as ``population_spectrum_*`` fields.

    Bands start at the first DFT bin (1 / frame_s Hz) and stop below ``top_hz``.

    >>> spectrum_sizes(2.0, 30.0, 100.0)
    {'population_spectrum_frame': 200, 'population_spectrum_bands': 29, 'population_spectrum_band_bins': 2}
    """
    frame = int(round(frame_s * fs))
    if frame <= 0:
        return {}
    width = max(1, int(round(frame / fs)))
    top = min(top_hz * frame / fs, frame // 2 + 1e-9)
    bands = max(1, int((top - 1) // width))
    return {
        "population_spectrum_frame": frame,
        "population_spectrum_bands": bands,
        "population_spectrum_band_bins": width,
    }
