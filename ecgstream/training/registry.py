"""Model kinds that ``ecgstream train --model KIND`` and ``ecgstream export`` know.

A kind is registered with :func:`register` as a :class:`ModelKind`: ``fit(cfg, paths, progress,
resume)`` trains (and exports when ``cfg.model_out`` is set) and returns an object with
``model``, ``spec`` and ``model_path``; ``load(state)`` rebuilds the torch module from a
finished checkpoint (``model.pt``: ``model`` state dict and ``spec`` JSON) for re-export.

Kinds living in other modules are imported on first use: add ``"kind": "module.path"`` to
:data:`KIND_MODULES`; importing the module must call :func:`register`.

>>> "mmae" in KIND_MODULES and "consensus" in KIND_MODULES
True
>>> get_kind("mmae").name
'mmae'
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ModelKind",
    "UnknownModelKind",
    "KIND_MODULES",
    "register",
    "get_kind",
    "available_kinds",
]


class UnknownModelKind(ValueError):
    """``--model`` names a kind that no module registers."""


@dataclass(frozen=True)
class ModelKind:
    """One trainable model kind: how to train it and how to rebuild it from a checkpoint."""

    name: str
    fit: Callable
    load: Callable
    description: str = ""


#: kind name -> module that registers it when imported
KIND_MODULES: dict[str, str] = {
    "mmae": "ecgstream.training.registry",
    "consensus": "ecgstream.training.consensus",
    "uniad": "ecgstream.training.uniad",
    "pbas": "ecgstream.training.pbas",
    "onenip": "ecgstream.training.onenip",
}

_KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Make ``kind`` available to ``train --model`` and ``export``."""
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> ModelKind:
    """The registered kind ``name``, importing its module if needed."""
    if name not in _KINDS and name in KIND_MODULES:
        try:
            importlib.import_module(KIND_MODULES[name])
        except ModuleNotFoundError as exc:
            raise UnknownModelKind(
                f"model kind {name!r} is not available in this build ({exc})"
            ) from exc
    if name not in _KINDS:
        raise UnknownModelKind(f"unknown model kind {name!r}; known: {available_kinds()}")
    return _KINDS[name]


def available_kinds() -> list[str]:
    """Kinds that can be imported here."""
    names = []
    for name, module in KIND_MODULES.items():
        if name in _KINDS or importlib.util.find_spec(module) is not None:
            names.append(name)
    return sorted(set(names) | set(_KINDS))


def _fit_mmae(cfg, paths, progress: bool = True, resume: bool = False):
    from ecgstream.training.trainer import train_mmae

    return train_mmae(cfg, paths, progress=progress, resume=resume)


def _load_mmae(state: dict):
    from ecgstream.models.mmae import MMAE, MMAEConfig
    from ecgstream.runtime.model_file import ModelSpec

    spec = ModelSpec.from_json(state["spec"])
    model = MMAE(MMAEConfig.from_dict(spec.params))
    model.load_state_dict(state["model"])
    return model.eval()


register(
    ModelKind(
        "mmae", _fit_mmae, _load_mmae, "MMAE-ECG multi-scale masked autoencoder (1-D, WFDB records)"
    )
)
