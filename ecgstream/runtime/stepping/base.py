"""The seam between the streaming pipeline and a model kind that scores a stream step by step.

Some model kinds score a window faster from what they computed for the stream's previous window
(the consensus model takes over the sorted segments two windows share). Such a kind provides a
:class:`StreamStepper`: it creates each stream's state, which the pipeline keeps per stream
without ever looking inside it, and scores a batch of windows of many streams with it. A model
without one is scored window by window with its main graph (:class:`WholeWindows`).

A step has three phases because the worker keeps inference calls in flight while it prepares
the next batch and completes earlier ones (``ecgstream run``, ``inference_depth``):

1. :meth:`StreamStepper.plan` (the poll loop, when a batch is cut): takes what the windows need
   from their streams' states, so the states may change before the call runs;
2. :meth:`StreamStepper.step` (the inference thread): scores; reads the plan only;
3. :meth:`StreamStepper.commit` (the poll loop, batches in order): the states after the batch.

A model with a history term (:mod:`ecgstream.runtime.stepping.history`) wraps its kind's
stepper: its step also updates the streams' histories, which only its steps touch, one batch at
a time in plan order.

Windows are placed by their stream's buffer generation (it counts filter restarts: windows of
two generations share no sample) and their absolute start sample at the model rate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ecgstream.runtime.scorer import Scorer

__all__ = ["Cut", "Primer", "Stepped", "StepStateError", "StreamStepper", "WholeWindows"]


class StepStateError(ValueError):
    """A stream's state was made by another stream stepper (kind, format or layout)."""


@dataclass(frozen=True)
class Cut:
    """One stream's windows in a batch: ``starts`` ``(n,)`` their absolute start samples (model
    rate, ascending), ``generation`` the buffer generation they were cut in."""

    generation: int
    starts: np.ndarray


@dataclass(frozen=True)
class Primer:
    """Samples a stream's state asked for ahead of its next window (:meth:`StreamStepper.primer`):
    ``span`` ``(leads, n)``, preprocessed, ending where the window one hop before
    ``next_start`` ends."""

    state: Any
    generation: int
    next_start: int
    span: np.ndarray


@dataclass
class Stepped:
    """Raw scores of a batch's windows (``point_raw`` ``(n, window)``, ``window_raw`` ``(n,)``;
    None without windows), what :meth:`StreamStepper.commit` needs (``handover``), how many
    windows took over state from their previous window (``carried``) and how many primers were
    computed (``primed``)."""

    point_raw: np.ndarray | None
    window_raw: np.ndarray | None
    handover: Any = None
    carried: int = 0
    primed: int = 0


class StreamStepper(ABC):
    """A model kind's stream step: per-stream state and the batched step over many streams.

    ``name`` and ``format`` identify the state's layout; a state made by another stepper is
    refused with :class:`StepStateError` (see :meth:`check_states`).
    """

    name: ClassVar[str]
    format: ClassVar[int]

    @abstractmethod
    def new_state(self) -> Any:
        """The state of a stream not seen before."""

    def primer(
        self, state: Any, generation: int, next_start: int, end: int
    ) -> tuple[int, int] | None:
        """For a stream without a complete window this batch: the absolute model-rate range of
        samples its state wants now, to prepare the window starting at ``next_start`` (the
        buffer holds samples up to ``end``), or None. Called once per batch and stream; may
        note in ``state`` that it asked."""
        return None

    @abstractmethod
    def plan(self, states: list, cuts: list[Cut], primers: list[Primer]) -> Any:
        """What :meth:`step` needs from the streams' ``states`` for windows placed as ``cuts``
        (one per stream, batch order) and the ``primers``; None when there is nothing to run."""

    @abstractmethod
    def step(self, windows: np.ndarray | None, plan: Any) -> Stepped:
        """Score ``windows`` ``(n, leads, window)`` (the cuts' windows, in order; None without)
        with ``plan``; touches no stream state (runs in an inference thread)."""

    @abstractmethod
    def commit(self, plan: Any, stepped: Stepped) -> None:
        """Bring the planned streams' states past the batch (batches in order)."""

    def check_states(self, states: list) -> None:
        """Refuse states this stepper did not make, naming both."""
        key = self.key
        for state in states:
            owner = getattr(state, "stepper", None)
            if owner != key:
                raise StepStateError(
                    f"a stream's state was made by stream step {owner or type(state).__name__}, "
                    f"this model's is {key}: start the stream's state afresh (new_state)"
                )

    @property
    def key(self) -> str:
        """``name`` and ``format``, as states record them."""
        return f"{self.name} format {self.format}"


class WholeWindows(StreamStepper):
    """No stream step: every window goes through the model's main graph; states are None."""

    name = "whole-windows"
    format = 1

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def new_state(self) -> None:
        return None

    def plan(self, states: list, cuts: list[Cut], primers: list[Primer]) -> None:
        return None

    def step(self, windows: np.ndarray | None, plan: Any) -> Stepped:
        if windows is None:
            return Stepped(None, None)
        return Stepped(*self.scorer.score_windows(windows))

    def commit(self, plan: Any, stepped: Stepped) -> None:
        return None
