"""Offline training (needs the ``train`` extra, i.e. torch): data, trainer, calibration, export.

- :mod:`~ecgstream.training.config`: :class:`TrainConfig`, the ``[train]`` and ``[model]`` TOML tables.
- :mod:`~ecgstream.training.data`: preprocessed records, normal regions, record/patient splits.
- :mod:`~ecgstream.training.trainer`: the training loop with validation, checkpoints and resume.
- :mod:`~ecgstream.training.calibration`: score normalisation and thresholds on validation normals.
- :mod:`~ecgstream.training.export`: ONNX export with metadata, and the model card.
- :mod:`~ecgstream.training.registry`: model kinds for ``ecgstream train --model KIND``.

:func:`fit_records` is the one-call entry point: train on records and write the ONNX model.
"""

from __future__ import annotations

from pathlib import Path

from ecgstream.training.config import TrainConfig

__all__ = ["TrainConfig", "fit_records"]


def fit_records(
    paths: list[str | Path],
    cfg: TrainConfig | None = None,
    out_path: str | Path | None = None,
    val_records: list[str] | None = None,
    progress: bool = False,
) -> Path:
    """Train a model (``cfg.model`` kind) on ``paths`` and export it to ``out_path``; returns the path.

    ``paths`` are record paths or folders; ``val_records`` (record names among them) overrides
    ``cfg.val_records``. The model card is written beside the ONNX file.
    """
    from dataclasses import replace

    from ecgstream.training.registry import get_kind

    cfg = TrainConfig() if cfg is None else cfg
    out = Path(out_path) if out_path is not None else cfg.model_out
    if out is None:
        raise ValueError("fit_records needs out_path (or cfg.model_out)")
    cfg = replace(
        cfg, model_out=out, val_records=list(val_records) if val_records else cfg.val_records
    )
    result = get_kind(cfg.model).fit(cfg, list(paths), progress=progress)
    return Path(result.model_path)
