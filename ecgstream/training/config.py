"""``TrainConfig``: the settings of one ``ecgstream train`` run (TOML tables ``[train]``,
``[model]`` and, optionally, ``[history]``).

``[train]`` holds the training settings: model kind and name, data and splits, preprocessing,
windows (seconds; samples at the model rate ``fs`` in Hz), optimisation and calibration. The
``[model]`` table is parsed straight into the kind's own config (:data:`MODEL_CONFIGS`:
:class:`~ecgstream.models.consensus.ConsensusConfig`, :class:`~ecgstream.models.mmae.MMAEConfig`),
which declares and validates each setting once; ``n_leads`` and ``window`` come from ``[train]``.
An optional ``[history]`` table is the model's per-stream history term
(:class:`~ecgstream.runtime.history.HistoryConfig`, written into the exported spec; its ``gate``
defaults to the calibrated default threshold). Load them with :func:`load_train_config` (defaults < TOML < environment < flags and ``--set``).

>>> cfg = TrainConfig(model="consensus", model_settings={"noise_weight": 100.0})
>>> cfg.model_config().noise_weight, cfg.model_config().window
(100.0, 1000)
>>> TrainConfig(model="consensus", model_settings={"noise_wieght": 1.0})
Traceback (most recent call last):
...
ecgstream.config.ConfigError: [model] noise_wieght: unknown key for model kind 'consensus'; ...
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecgstream.config import ConfigError, coerce, load

__all__ = ["MODEL_CONFIGS", "TrainConfig", "load_train_config"]

#: model kind -> "module:class" of its own config, which the ``[model]`` table fills
MODEL_CONFIGS = {
    "consensus": "ecgstream.models.consensus.config:ConsensusConfig",
    "mmae": "ecgstream.models.mmae:MMAEConfig",
}
#: model-config fields that ``[train]`` sets (``leads``, ``window_s`` at ``fs``)
FROM_TRAIN = ("n_leads", "window")


@dataclass
class TrainConfig:
    """Data, optimisation and calibration settings of one training run, and the ``[model]``
    table (:meth:`model_config`)."""

    # model kind and naming
    model: str = "mmae"
    name: str = "mmae"
    version: str = "1"
    # data
    leads: list[str] = field(default_factory=lambda: ["MLII"])
    records: list[str] = field(default_factory=list)  # keep only these record names (empty: all)
    exclude: list[str] = field(default_factory=list)  # drop these record names
    # record names (or PTB-XL patients) held out
    val_records: list[str] = field(default_factory=list)
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
    # training the consensus detector's score refiner ([model] refiner_channels > 0;
    # ecgstream/training/refiner.py) on synthetic anomalies injected into the training records
    refiner_excerpts: int = 150  # synthetic 60 s excerpts per training record
    refiner_many: float = 0.5  # share of excerpts with 2-12 anomalies instead of one
    refiner_epochs: int = 20
    # >0: the refiner's floor is this quantile of its logits on the normal segments of its
    # material instead of [model] refiner_floor, so most normal segments keep their score
    refiner_floor_quantile: float = 0.0
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
    # per-epoch validation scores the first seconds of each record (0: all)
    val_max_s: float = 600.0
    select_metric: str = "auto"  # auto | beat_auroc | record_auroc | val_loss
    # default threshold: this fraction of normal validation windows alerts
    false_alarm: float = 0.01
    # "all": thresholds from the normal windows of every record read, not only the validation
    # records; only for a detector whose window scores depend on nothing fitted on its training
    # records (see __post_init__; the score refiner changes point scores only)
    calibrate_on: str = "validation"
    # outputs
    checkpoint_dir: Path | None = None
    model_out: Path | None = None
    #: the ``[model]`` table: fields of the kind's own config (:meth:`model_config`)
    model_settings: dict[str, Any] = field(default_factory=dict)
    #: the ``[history]`` table (:meth:`history_spec`); empty: no history term
    history_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.history_spec({"default": 0.0})  # validates the [history] table
        if not 0 <= self.refiner_floor_quantile < 1:
            raise ConfigError(
                "refiner_floor_quantile: must be in [0, 1) (0: the fixed [model] refiner_floor), "
                f"got {self.refiner_floor_quantile}"
            )
        if self.calibrate_on not in ("validation", "all"):
            raise ConfigError(
                f"calibrate_on: must be 'validation' or 'all', got {self.calibrate_on!r}"
            )
        model = self.model_config()  # validates the [model] table
        population = getattr(model, "population_components", 0)
        if self.calibrate_on == "all" and (self.model != "consensus" or population > 0):
            raise ConfigError(
                "calibrate_on: 'all' calibrates the thresholds on the training records too, "
                "which only a detector whose window scores depend on nothing fitted on them "
                "allows: model = 'consensus' without a population reference (its score refiner "
                f"changes point scores only; got model = {self.model!r}, "
                f"population_components = {population})"
            )

    @property
    def window(self) -> int:
        """Window length in samples at ``fs``."""
        return int(round(self.window_s * self.fs))

    @property
    def hop(self) -> int:
        """Scoring hop in samples at ``fs``."""
        return max(1, int(round(self.hop_s * self.fs)))

    def model_config(self) -> Any:
        """The kind's own config from the ``[model]`` table, with ``n_leads`` and ``window``
        from ``leads`` and ``window_s``; None for a kind without one (which takes no table).

        Raises :class:`ConfigError` naming the key: unknown, of the wrong type or invalid.
        """
        cls = model_config_class(self.model)
        if cls is None:
            if self.model_settings:
                raise ConfigError(
                    f"[model]: model kind {self.model!r} takes no [model] settings, got "
                    f"{sorted(self.model_settings)}"
                )
            return None
        known = model_keys(cls)
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in self.model_settings.items():
            if key not in known:
                where = " (set by [train] leads / window_s)" if key in FROM_TRAIN else ""
                raise ConfigError(
                    f"[model] {key}: unknown key for model kind {self.model!r}{where}; "
                    f"known: {sorted(known)}"
                )
            try:
                values[key] = coerce(value, hints[key], key, "[model]")
            except ConfigError:
                raise ConfigError(f"[model] {key}: {value!r} is not a valid {hints[key]}") from None
        try:
            cfg = cls(n_leads=len(self.leads), window=self.window, **values)
            if hasattr(cfg, "validate"):  # a config that is not validated on construction
                cfg.validate()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[model] {exc}") from exc
        return cfg

    def history_spec(self, thresholds: dict) -> dict | None:
        """The spec's ``history`` section from the ``[history]`` table (None when it is empty);
        ``gate`` defaults to the calibrated ``thresholds``' default. Raises
        :class:`ConfigError` naming the key."""
        if not self.history_settings:
            return None
        from pydantic import ValidationError

        from ecgstream.runtime.history import HistoryConfig

        values = {"gate": float(thresholds.get("default", 0.0)), **self.history_settings}
        try:
            return HistoryConfig.model_validate(values).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"[history] {where}: {err['msg']}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("checkpoint_dir", "model_out"):
            d[key] = None if d[key] is None else str(d[key])
        return d


def model_config_class(kind: str) -> type | None:
    """The config class of model ``kind`` (:data:`MODEL_CONFIGS`), or None."""
    if kind not in MODEL_CONFIGS:
        return None
    module, name = MODEL_CONFIGS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def model_keys(cls: type) -> set[str]:
    """The ``[model]`` keys of a model config class: its fields but :data:`FROM_TRAIN`."""
    return {f.name for f in dataclasses.fields(cls)} - set(FROM_TRAIN)


def load_train_config(
    toml_path: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: dict[str, str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> TrainConfig:
    """A :class:`TrainConfig` from defaults < the TOML ``[train]`` and ``[model]`` tables <
    ``ECGSTREAM_TRAIN__<KEY>`` / ``ECGSTREAM_MODEL__<KEY>`` environment variables < ``flags``
    (``[train]`` fields) < ``sets`` (``--set KEY=VALUE``: a ``[train]`` or ``[model]`` key;
    ``model.KEY`` or ``train.KEY`` to say which)."""
    import tomllib

    environ = os.environ if environ is None else environ
    table: dict[str, Any] = {}
    history: dict[str, Any] = {}
    if toml_path is not None and Path(toml_path).exists():
        try:
            data = tomllib.loads(Path(toml_path).read_text())
        except tomllib.TOMLDecodeError:
            data = {}  # load() below reports it
        extra = sorted(set(data) - {"train", "model", "history"})
        if extra:
            raise ConfigError(
                f"{toml_path}: unknown tables {extra}; known: ['history', 'model', 'train']"
            )
        table = dict(data.get("model", {}))
        history = dict(data.get("history", {}))
        _moved_keys(toml_path, data.get("train", {}), data.get("train", {}).get("model", "mmae"))
    prefix = "ECGSTREAM_MODEL__"
    table.update({k[len(prefix) :].lower(): v for k, v in environ.items() if k.startswith(prefix)})
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model_settings"}
    train_flags = dict(flags or {})
    for key, value in (sets or {}).items():
        section, dot, name = key.partition(".")
        if dot and section not in ("train", "model"):
            raise ConfigError(f"--set {key}: expected KEY, train.KEY or model.KEY")
        if section == "train" or (not dot and key in train_fields):
            name = name if dot else key
            if name not in train_fields:
                raise ConfigError(f"--set {key}: unknown key; [train] keys: {sorted(train_fields)}")
            train_flags[name] = value
        else:
            table[name if dot else key] = value  # model.KEY is checked with the [model] table
            if not dot:
                _check_set_key(key, train_fields, train_flags, toml_path, environ)
    train_flags["model_settings"] = table
    train_flags["history_settings"] = history
    return load(TrainConfig, "train", toml_path, train_flags, environ)


def _check_set_key(key, train_fields, flags, toml_path, environ) -> None:
    """Raise a clear error for a ``--set`` key that is neither a ``[train]`` key nor a ``[model]``
    key of the run's model kind."""
    kind = flags.get("model") or load(TrainConfig, "train", toml_path, {}, environ).model
    cls = model_config_class(kind)
    if cls is not None and key in model_keys(cls):
        return
    model_part = f"[model] keys of kind {kind!r}: {sorted(model_keys(cls))}" if cls else (
        f"kind {kind!r} has no [model] keys")  # fmt: skip
    raise ConfigError(
        f"--set {key}: unknown key; [train] keys: {sorted(train_fields)}; {model_part}"
    )


def _moved_keys(path, train: dict, kind: str) -> None:
    """Point a ``[train]`` key of the earlier layout to its place in ``[model]``."""
    cls = model_config_class(kind)
    if cls is None:
        return  # load() reports the unknown keys
    known = model_keys(cls)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in train:
        name = key.removeprefix("consensus_")
        if key in train_fields or not (name in known or key != name):
            continue
        where = f"as {name} = ..." if name in known else f"(the fields of {cls.__name__})"
        raise ConfigError(
            f"{path} [train] {key}: a setting of the model; it belongs in the [model] table "
            f"{where}, lengths in samples at fs"
        )
