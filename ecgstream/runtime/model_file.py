"""The self-describing model file: an ONNX graph whose ``metadata_props`` carry a :class:`ModelSpec`.

Every model kind exports the same graph interface, so ``score``, ``replay`` and ``run`` never
need to know which kind they serve:

- input ``windows``: float32 ``(batch, n_leads, window)``, preprocessed samples at the model rate
  (see :mod:`ecgstream.signals.preprocess`); any per-window normalisation or 2-D front end
  (spectrogram, channel x time image) happens inside the graph.
- output ``point_score``: float32 ``(batch, window)``, one raw score per input sample.
- output ``window_score``: float32 ``(batch,)``, one raw score per window.

Raw scores are turned into calibrated scores with ``score_norm`` (``(raw - center) / scale``);
``thresholds`` are in calibrated units. Serving reads this with onnxruntime alone: no torch, no
pickles. A model kind that scores a stream step by step stores what it needs under its own
metadata key (see :mod:`ecgstream.runtime.stepping`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecgstream.runtime.history import HistoryConfig
from ecgstream.signals.preprocess import PreprocessConfig

__all__ = [
    "ModelSpec",
    "ModelFileError",
    "SPEC_KEY",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "read_spec",
    "check_spec",
    "write_spec",
    "update_spec",
    "sha256_of",
]

SPEC_KEY = "ecgstream.spec"
INPUT_NAME = "windows"
OUTPUT_NAMES = ("point_score", "window_score")


class ModelFileError(ValueError):
    """A model file is missing, corrupt, or lacks the ecgstream metadata."""


# ---------------------------------------------------------------- spec validation

#: highest model rate, Hz (as the wire format's highest chunk rate)
MAX_MODEL_FS = 20000.0
#: longest window, seconds at the model rate
MAX_WINDOW_S = 3600.0
#: highest Butterworth order per band edge (the shipped models use 2)
MAX_FILTER_ORDER = 16
#: most leads a model may take (as the wire format's most leads per stream)
MAX_MODEL_LEADS = 16

_Int = Annotated[int, Field(strict=True)]
_Num = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_Text = Annotated[str, Field(strict=True, min_length=1, max_length=200)]


class _PreprocessingCheck(BaseModel):
    """The ``preprocessing`` table of a spec: rate and band-pass."""

    model_config = ConfigDict(extra="allow")
    fs: _Num = Field(100.0, gt=0, le=MAX_MODEL_FS)
    highpass_hz: _Num = Field(0.5, ge=0)
    lowpass_hz: _Num = Field(40.0, ge=0)
    order: _Int = Field(2, ge=1, le=MAX_FILTER_ORDER)

    @model_validator(mode="after")
    def _band(self) -> _PreprocessingCheck:
        if self.highpass_hz >= self.fs / 2:
            raise ValueError(
                f"highpass_hz {self.highpass_hz:g} must be below fs/2 = {self.fs / 2:g}"
            )
        if self.lowpass_hz and self.highpass_hz >= self.lowpass_hz:
            raise ValueError(
                f"highpass_hz {self.highpass_hz:g} must be below lowpass_hz {self.lowpass_hz:g}"
            )
        return self


class _ScoreNormCheck(BaseModel):
    model_config = ConfigDict(extra="allow")
    center: _Num = 0.0
    scale: _Num = Field(1.0, gt=0)


class _SpecCheck(BaseModel):
    """Types and ranges of every :class:`ModelSpec` field (checked by :func:`read_spec`)."""

    model_config = ConfigDict(extra="allow")
    name: _Text
    version: Annotated[str, Field(strict=True, max_length=200)]
    kind: _Text
    leads: list[Annotated[str, Field(strict=True, min_length=1, max_length=16)]] = Field(
        min_length=1, max_length=MAX_MODEL_LEADS
    )
    window: _Int = Field(ge=2)
    hop: _Int = Field(ge=1)
    preprocessing: _PreprocessingCheck = Field(default_factory=_PreprocessingCheck)
    score_norm: _ScoreNormCheck = Field(default_factory=_ScoreNormCheck)
    thresholds: dict[str, _Num] = Field(default_factory=dict)
    training: dict = Field(default_factory=dict)
    params: dict = Field(default_factory=dict)
    frontend: _Text = "raw"
    history: HistoryConfig | None = None

    @model_validator(mode="after")
    def _window(self) -> _SpecCheck:
        most = int(MAX_WINDOW_S * self.preprocessing.fs)
        if self.window > most:
            raise ValueError(
                f"window of {self.window} samples is longer than {MAX_WINDOW_S:g} s at "
                f"{self.preprocessing.fs:g} Hz ({most} samples)"
            )
        if self.hop > self.window:
            raise ValueError(f"hop {self.hop} is longer than the window {self.window}")
        return self


def check_spec(data: object, source: str = "model") -> None:
    """Check a spec's JSON object: every field's type and range; raises :class:`ModelFileError`
    with one line naming the first wrong field."""
    if not isinstance(data, dict):
        raise ModelFileError(f"{source}: '{SPEC_KEY}' metadata must be a JSON object")
    try:
        _SpecCheck.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        what = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            raise ModelFileError(f"{source}: model spec field '{where}' is missing") from None
        got = f" (got {err['input']!r:.60})" if where else ""
        field_name = f"field '{where}'" if where else "fields"
        raise ModelFileError(f"{source}: model spec {field_name}: {what}{got}") from None


@dataclass
class ModelSpec:
    """Everything needed to score with a model, stored inside its ONNX file.

    ``window`` and ``hop`` are in samples at the model rate ``preprocessing["fs"]`` (Hz).
    """

    name: str
    version: str
    kind: str
    leads: list[str]
    window: int
    hop: int
    preprocessing: dict = field(default_factory=lambda: PreprocessConfig().to_dict())
    score_norm: dict = field(default_factory=lambda: {"center": 0.0, "scale": 1.0})
    thresholds: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    frontend: str = "raw"
    #: the per-stream history term (:class:`~ecgstream.runtime.history.HistoryConfig` as a
    #: dict), None without one
    history: dict | None = None

    @property
    def fs(self) -> float:
        return float(self.preprocessing["fs"])

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocessing)

    @property
    def window_s(self) -> float:
        return self.window / self.fs

    @property
    def hop_s(self) -> float:
        return self.hop / self.fs

    @property
    def threshold(self) -> float:
        """The default alert threshold in calibrated score units."""
        if "default" in self.thresholds:
            return float(self.thresholds["default"])
        return float(min(self.thresholds.values())) if self.thresholds else 3.0

    def normalise(self, raw: Any) -> Any:
        """Raw model scores to calibrated units (works on floats and numpy arrays)."""
        return (raw - self.score_norm["center"]) / self.score_norm["scale"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def write_spec(onnx_path: str | Path, spec: ModelSpec) -> None:
    """Store ``spec`` in the ``metadata_props`` of an ONNX file (rewrites the file)."""
    import onnx

    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    flat = {
        SPEC_KEY: spec.to_json(),
        "name": spec.name,
        "version": spec.version,
        "kind": spec.kind,
        "fs": str(spec.fs),
        "window": str(spec.window),
        "hop": str(spec.hop),
        "leads": ",".join(spec.leads),
    }
    for key, value in flat.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "ecgstream"
    onnx.save(model, str(onnx_path))


def update_spec(onnx_path: str | Path, **fields: Any) -> ModelSpec:
    """Set spec ``fields`` (e.g. ``history``) in an exported model's metadata, leaving its graph
    and other metadata as they are; the new spec is checked first (:func:`check_spec`).
    Refresh ``SHA256SUMS`` afterwards for a shipped model."""
    import onnx

    model = onnx.load(str(onnx_path))
    entry = next((e for e in model.metadata_props if e.key == SPEC_KEY), None)
    if entry is None:
        raise ModelFileError(f"{onnx_path}: no ecgstream metadata ({SPEC_KEY}) in this model")
    unknown = set(fields) - set(ModelSpec.__dataclass_fields__)
    if unknown:
        raise ModelFileError(f"{onnx_path}: no model spec field {sorted(unknown)}")
    data = {**json.loads(entry.value), **fields}
    check_spec(data, str(onnx_path))
    spec = ModelSpec(**{k: v for k, v in data.items() if k in ModelSpec.__dataclass_fields__})
    entry.value = spec.to_json()
    onnx.save(model, str(onnx_path))
    return spec


def read_spec(session_or_path: Any) -> ModelSpec:
    """Read the :class:`ModelSpec` of an ONNX file or an ``onnxruntime.InferenceSession``."""
    if isinstance(session_or_path, (str, Path)):
        import onnxruntime as ort

        path = Path(session_or_path)
        if not path.exists():
            raise ModelFileError(f"model file {path} not found")
        try:
            session_or_path = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFileError(f"{path}: not a loadable ONNX model: {exc}") from exc
    meta = session_or_path.get_modelmeta().custom_metadata_map
    if SPEC_KEY not in meta:
        raise ModelFileError(f"model has no '{SPEC_KEY}' metadata: not exported by ecgstream")
    source = str(getattr(session_or_path, "_model_path", None) or "model")
    try:
        data = json.loads(meta[SPEC_KEY])
    except ValueError as exc:
        raise ModelFileError(f"{source}: '{SPEC_KEY}' metadata is not JSON: {exc}") from None
    check_spec(data, source)
    spec = ModelSpec(**{k: v for k, v in data.items() if k in ModelSpec.__dataclass_fields__})
    _check_graph_input(session_or_path, spec, source)
    return spec


def _check_graph_input(session: Any, spec: ModelSpec, source: str) -> None:
    """The graph's ``windows`` input, where its sizes are fixed, must take the spec's leads
    and window."""
    for i in session.get_inputs():
        if i.name != INPUT_NAME or len(i.shape) != 3:
            continue
        _, leads, window = i.shape
        if isinstance(leads, int) and leads != len(spec.leads):
            raise ModelFileError(
                f"{source}: graph input '{INPUT_NAME}' takes {leads} leads, "
                f"model spec field 'leads' names {len(spec.leads)}"
            )
        if isinstance(window, int) and window != spec.window:
            raise ModelFileError(
                f"{source}: graph input '{INPUT_NAME}' takes windows of {window} samples, "
                f"model spec field 'window' is {spec.window}"
            )


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, for manifests and model cards."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
