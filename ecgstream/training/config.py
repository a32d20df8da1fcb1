"""``TrainConfig``: every setting of ``ecgstream train`` in one dataclass (TOML section ``[train]``).

Lengths given in seconds here become samples at the model rate ``fs`` (Hz) when the model is
built. Load with :func:`ecgstream.config.load` (defaults < TOML < environment < flags).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Data, model, optimisation and calibration settings of one training run."""

    # model kind and naming
    model: str = "mmae"
    name: str = "mmae"
    version: str = "1"
    # data
    leads: list[str] = field(default_factory=lambda: ["MLII"])
    records: list[str] = field(default_factory=list)  # keep only these record names (empty: all)
    exclude: list[str] = field(default_factory=list)  # drop these record names
    val_records: list[str] = field(
        default_factory=list
    )  # record names (or PTB-XL patients) held out
    val_fraction: float = 0.25  # used when val_records is empty (split by record or patient)
    ptbxl_train_folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    ptbxl_val_folds: list[int] = field(default_factory=lambda: [6])
    ptbxl_resolution: str = "lr"
    normal_margin_s: float = 0.5  # training windows keep this far from abnormal beats (s)
    # preprocessing (model rate in Hz, band-pass edges in Hz)
    fs: float = 100.0
    highpass_hz: float = 0.5
    lowpass_hz: float = 40.0
    # windows (seconds)
    window_s: float = 10.0
    hop_s: float = 5.0
    # MMAE-ECG architecture (segment lengths in samples at fs; local_region in global segments)
    segment: int = 40
    local_region: int = 5
    mask_global: float = 0.5
    mask_local: float = 0.5
    infer_global_masks: int = 2
    infer_local_masks: int = 2
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    target_eps: float = 0.05
    local_weight: float = 1.0
    topk_frac: float = 0.1
    input_norm: str = (
        "mean"  # "mean": centre each lead (scores in mV^2); "std": also scale to unit std
    )
    score_space: str = (
        "window"  # "window": residual in input units; "segment": per-segment-normalised
    )
    # in-window consensus detector (model = "consensus"; seconds at fs)
    consensus_segment_s: float = 0.8
    consensus_stride_s: float = 0.1
    consensus_slope_weight: float = 0.0  # weight of the sorted-step descriptor (noise, slopes)
    consensus_noise_weight: float = 0.0  # weight of the noise-floor term (smallest steps)
    consensus_noise_quantile: float = 0.7  # fraction of the smallest |steps| that is noise floor
    consensus_noise_summary: str = "sorted"  # "mean": their mean, not their sorted values
    consensus_noise_every: int = 1  # noise floor of every n-th segment, interpolated between
    consensus_level_every: int = 1  # median descriptor (consensus) over every n-th segment only
    consensus_level_weight: float = 0.0  # weight of the level term (median above/below neighbours)
    consensus_level_reach_s: float = 0.8  # distance to the neighbouring segments of the level term
    consensus_erode_s: float = 0.0  # >0: segment scores also take their minimum within this reach
    consensus_erode_share: float = 1.0  # share of the eroded segment score in the point score
    consensus_neighbours: int = (
        0  # >0: a segment holding less than the consensus is compared with its k nearest
    )
    consensus_rhythm_weight: float = 0.0  # >0: a segment against the signal one beat before/after
    consensus_rhythm_span_s: float = 0.8  # the part of each segment the rhythm term compares
    consensus_rhythm_min_s: float = 0.3  # shortest beat period (s) looked for (200 per minute)
    consensus_rhythm_max_s: float = 1.5  # longest beat period (s) looked for (40 per minute)
    consensus_rhythm_tolerance: float = 0.1  # share of the period a beat may come early or late
    consensus_rhythm_excess: float = 2.0  # the term counts above this times the window's median
    consensus_rhythm_resolution_s: float = 0.05  # the rhythm term's envelope: |x| averaged
    consensus_rhythm_every: int = 2  # the rhythm term of every n-th segment, interpolated between
    consensus_rhythm_gate: float = 0.0  # >0: fade the term out as the window's median nears this
    # compare the signed window at lags near the period found, not the envelope at every lag
    consensus_rhythm_signed: bool = False
    consensus_rhythm_signed_resolution_s: float = 0.01  # the signed signal averaged over this
    # add the rhythm term to the point scores after the refiner (neither it nor windows see it)
    consensus_rhythm_after_refiner: bool = False
    consensus_population_components: int = 0  # >0: add a PCA population reference (12-lead ECGs)
    consensus_population_weight: float = 1.0
    consensus_population_covariance: str = "pca"  # "shrunk": Ledoit-Wolf Mahalanobis
    consensus_population_lead_scale: bool = False  # divide each lead by its training spread
    consensus_population_spectrum_s: float = 0.0  # >0: add the 1 Hz band spectrum (Welch frame, s)
    consensus_population_spectrum_hz: float = 30.0  # upper edge of the spectrum's bands
    # score refiner (ecgstream/models/refiner.py): learns where in a window an anomaly lies from
    # synthetic anomalies injected into the training records; 0 channels: none
    consensus_refiner_channels: int = 0
    consensus_refiner_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    consensus_refiner_weight: float = (
        0.5  # point score x max(exp(weight x (logit - floor)), min_gain)
    )
    consensus_refiner_floor: float = -6.0
    # >0: the floor is this quantile of the trained refiner's logits on the normal segments of its
    # material instead, so most normal segments keep their score (boost 1)
    consensus_refiner_floor_quantile: float = 0.0
    # <1: where the logit is below the floor the score is lowered too, to at most this share
    consensus_refiner_min_gain: float = 1.0
    # >0: the refiner also reads each window's waveform through small convolutions this wide
    consensus_refiner_waveform_channels: int = 0
    consensus_refiner_waveform_resolution_s: float = 0.01  # the waveform averaged over this (s)
    consensus_refiner_excerpts: int = 150  # synthetic 60 s excerpts per training record
    consensus_refiner_many: float = 0.5  # share of excerpts with 2-12 anomalies instead of one
    consensus_refiner_epochs: int = 20
    # optimisation
    epochs: int = 4
    steps_per_epoch: int = 150
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    patience: int = 3  # epochs without a better validation figure before stopping
    seed: int = 0
    threads: int = 2
    # validation and calibration
    val_windows: int = 512  # normal validation windows for the validation loss
    val_max_s: float = (
        600.0  # per-epoch validation scores the first seconds of each record (0: all)
    )
    select_metric: str = "auto"  # auto | beat_auroc | record_auroc | val_loss
    false_alarm: float = (
        0.01  # default threshold: this fraction of normal validation windows alerts
    )
    # "all": thresholds from the normal windows of every record read, not only the validation
    # records; only for a detector whose window scores depend on nothing fitted on its training
    # records (see __post_init__; the score refiner changes point scores only)
    calibrate_on: str = "validation"
    # outputs
    checkpoint_dir: Path | None = None
    model_out: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.consensus_refiner_floor_quantile < 1:
            raise ValueError(
                "consensus_refiner_floor_quantile must be in [0, 1) (0: the fixed "
                f"consensus_refiner_floor), got {self.consensus_refiner_floor_quantile}"
            )
        if not 0 < self.consensus_refiner_min_gain <= 1:
            raise ValueError(
                "consensus_refiner_min_gain must be in (0, 1] (1: scores are never lowered), "
                f"got {self.consensus_refiner_min_gain}"
            )
        if self.calibrate_on not in ("validation", "all"):
            raise ValueError(
                f"calibrate_on must be 'validation' or 'all', got {self.calibrate_on!r}"
            )
        if self.calibrate_on == "all" and (
            self.model != "consensus" or self.consensus_population_components > 0
        ):
            raise ValueError(
                "calibrate_on = 'all' calibrates the thresholds on the training records too, "
                "which only a detector whose window scores depend on nothing fitted on them "
                "allows: model = 'consensus' without a population reference (its score refiner "
                f"changes point scores only; got model = {self.model!r}, "
                f"consensus_population_components = {self.consensus_population_components})"
            )

    @property
    def window(self) -> int:
        """Window length in samples at ``fs``."""
        return int(round(self.window_s * self.fs))

    @property
    def hop(self) -> int:
        """Scoring hop in samples at ``fs``."""
        return max(1, int(round(self.hop_s * self.fs)))

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("checkpoint_dir", "model_out"):
            d[key] = None if d[key] is None else str(d[key])
        return d
