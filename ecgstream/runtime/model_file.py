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
from typing import Any

from ecgstream.signals.preprocess import PreprocessConfig

__all__ = [
    "ModelSpec",
    "ModelFileError",
    "SPEC_KEY",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "read_spec",
    "write_spec",
    "sha256_of",
]

SPEC_KEY = "ecgstream.spec"
INPUT_NAME = "windows"
OUTPUT_NAMES = ("point_score", "window_score")


class ModelFileError(ValueError):
    """A model file is missing, corrupt, or lacks the ecgstream metadata."""


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
    return ModelSpec.from_json(meta[SPEC_KEY])


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, for manifests and model cards."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
