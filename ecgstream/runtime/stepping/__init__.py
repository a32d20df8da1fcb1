"""Stream steppers: how a model kind scores a stream window after window (see :mod:`.base`).

:func:`load_stepper` finds the stepper a model file carries by its metadata key; the streaming
pipeline only sees the :class:`~ecgstream.runtime.stepping.base.StreamStepper` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ecgstream.runtime.stepping import consensus
from ecgstream.runtime.stepping.base import (
    Cut,
    Primer,
    Stepped,
    StepStateError,
    StreamStepper,
    WholeWindows,
)

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
    "STEPPERS",
]

#: metadata key of a model file -> the loader of the stream stepper stored under it
STEPPERS: dict[str, Callable[[Scorer, str, int], StreamStepper | None]] = {
    consensus.STREAM_KEY: consensus.ConsensusStepper.load,
}


def load_stepper(scorer: Scorer, threads: int = 1) -> StreamStepper | None:
    """The stream stepper stored in ``scorer``'s model file, None if it has none (or one of a
    format this ecgstream does not read, which is logged)."""
    meta = scorer.session.get_modelmeta().custom_metadata_map
    for key, load in STEPPERS.items():
        if key in meta:
            return load(scorer, meta[key], threads)
    return None
