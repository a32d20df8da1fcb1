"""Stream steppers: how a model kind scores a stream window after window (see :mod:`.base`).

:func:`load_stepper` finds the stepper a model file carries by its metadata key; the streaming
pipeline only sees the :class:`~ecgstream.runtime.stepping.base.StreamStepper` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ecgstream.runtime.history import History, HistoryConfig
from ecgstream.runtime.model_file import ModelFileError
from ecgstream.runtime.stepping import consensus
from ecgstream.runtime.stepping.base import (
    Cut,
    Primer,
    Stepped,
    StepStateError,
    StreamStepper,
    WholeWindows,
)
from ecgstream.runtime.stepping.history import HistoryStepper

if TYPE_CHECKING:
    from ecgstream.runtime.scorer import Scorer

__all__ = [
    "Cut",
    "Primer",
    "Stepped",
    "StepStateError",
    "StreamStepper",
    "WholeWindows",
    "load_stepper",
    "load_history",
    "HistoryStepper",
    "STEPPERS",
]

#: metadata key of a model file -> the loader of the stream stepper stored under it
STEPPERS: dict[str, Callable[[Scorer, str, int], StreamStepper | None]] = {
    consensus.STREAM_KEY: consensus.ConsensusStepper.load,
}


def load_stepper(scorer: Scorer, threads: int = 1) -> StreamStepper | None:
    """The stream stepper stored in ``scorer``'s model file, None if it has none (or one of a
    format this ecgstream does not read, which is logged). A model with a history term is
    always stepped through :class:`HistoryStepper` (around :class:`WholeWindows` when it has
    no stream step of its own)."""
    meta = scorer.session.get_modelmeta().custom_metadata_map
    stepper: StreamStepper | None = None
    for key, load in STEPPERS.items():
        if key in meta:
            stepper = load(scorer, meta[key], threads)
            break
    if scorer.history is not None:  # built by the Scorer with :func:`load_history`
        return HistoryStepper(scorer, stepper or WholeWindows(scorer), scorer.history)
    return stepper


def load_history(scorer: Scorer) -> History | None:
    """The history term of ``scorer``'s model (its spec's ``history`` section), None without
    one; a section that does not fit the model's window is a :class:`ModelFileError`."""
    spec = scorer.spec
    if not spec.history:
        return None
    try:
        return History(
            HistoryConfig.model_validate(spec.history),
            spec.window,
            spec.hop,
            spec.fs,
            len(spec.leads),
        )
    except ValueError as exc:
        raise ModelFileError(f"{scorer.model_path}: model spec field 'history': {exc}") from None
