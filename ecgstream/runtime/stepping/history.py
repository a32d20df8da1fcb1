"""The stream step of a model with a history term: any stream step, plus the stream's history.

A model whose spec has a ``history`` section (:mod:`ecgstream.runtime.history`) is stepped by
:class:`HistoryStepper`, which wraps the model kind's own stepper (or
:class:`~ecgstream.runtime.stepping.base.WholeWindows`): each stream's state is the inner
state plus the stream's :class:`~ecgstream.runtime.history.HistoryState`; a step scores the
windows with the inner step, then adds the history term to their raw scores, walking each
stream's windows in order (a window sees the gated snippets of the same batch's earlier windows
that end before its start).

The history of a batch depends on every earlier batch's scores. With inference calls in flight
side by side (``ecgstream run``, ``inference_depth``), each plan takes a ticket in poll order
and the history part of the steps runs one at a time in ticket order (their inner steps, the
ONNX Runtime calls, still run side by side), so the scores do not depend on how the worker
overlapped the calls. Only those history parts touch the streams' histories.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgstream.runtime.history import HISTORY_FORMAT, History, HistoryState
from ecgstream.runtime.stepping.base import Cut, Primer, Stepped, StreamStepper

if TYPE_CHECKING:
    from ecgstream.runtime.scorer import Scorer

log = logging.getLogger(__name__)

__all__ = ["HistoryStepper", "WithHistory"]

#: seconds a step waits for the history of the batches planned before it
TURN_TIMEOUT_S = 60.0


@dataclass
class WithHistory:
    """One stream's state: the inner stepper's ``inner`` state and its ``history``;
    ``stepper`` names the :class:`HistoryStepper` that made it."""

    stepper: str
    inner: Any
    history: HistoryState


@dataclass
class _Plan:
    inner: Any
    histories: list[HistoryState]
    cuts: list[Cut]
    ticket: int


class HistoryStepper(StreamStepper):
    """``inner``'s stream step plus the history term of ``history`` (see the module docstring)."""

    name = "history"
    format = HISTORY_FORMAT

    def __init__(self, scorer: Scorer, inner: StreamStepper, history: History):
        self.scorer = scorer
        self.inner = inner
        self.history = history
        self.scale = float(scorer.spec.score_norm["scale"])
        self._tickets = 0
        self._done = 0
        self._turn = threading.Condition()

    @property
    def key(self) -> str:
        return f"{self.inner.key} with history format {HISTORY_FORMAT}"

    def new_state(self) -> WithHistory:
        return WithHistory(self.key, self.inner.new_state(), self.history.new_state(self.key))

    def primer(
        self, state: WithHistory, generation: int, next_start: int, end: int
    ) -> tuple[int, int] | None:
        return self.inner.primer(state.inner, generation, next_start, end)

    def plan(self, states: list, cuts: list[Cut], primers: list[Primer]) -> _Plan | None:
        self.check_states(states)
        self.check_states([p.state for p in primers])
        inner_primers = [replace(p, state=p.state.inner) for p in primers]
        inner = self.inner.plan([s.inner for s in states], cuts, inner_primers)
        if not cuts and inner is None:
            return None
        ticket = self._tickets
        self._tickets += 1
        return _Plan(inner, [s.history for s in states], cuts, ticket)

    def step(self, windows: np.ndarray | None, plan: _Plan | None) -> Stepped:
        if plan is None:
            return self.inner.step(windows, None)
        error: BaseException | None = None
        stepped = None
        try:
            stepped = self.inner.step(windows, plan.inner)
        except BaseException as exc:  # the turn still passes on, in order
            error = exc
        self._wait(plan.ticket)
        try:
            if error is not None:
                raise error
            assert stepped is not None
            if windows is None or stepped.window_raw is None:
                return stepped
            cal = self.scorer.spec.normalise(stepped.window_raw.astype(np.float64))
            terms = self.history.advance(
                plan.histories,
                [c.generation for c in plan.cuts],
                [c.starts for c in plan.cuts],
                windows,
                cal,
            )
            point, window = self.history.apply(
                stepped.point_raw, stepped.window_raw, terms, self.scale
            )
            return replace(stepped, point_raw=point, window_raw=window)
        finally:
            with self._turn:
                self._done = max(self._done, plan.ticket + 1)
                self._turn.notify_all()

    def _wait(self, ticket: int) -> None:
        with self._turn:
            if not self._turn.wait_for(lambda: self._done >= ticket, TURN_TIMEOUT_S):
                log.error(
                    "the history of batch %d waited %g s for earlier batches; it goes on with "
                    "the histories as they are",
                    ticket,
                    TURN_TIMEOUT_S,
                )

    def commit(self, plan: _Plan | None, stepped: Stepped) -> None:
        if plan is not None:
            self.inner.commit(plan.inner, stepped)
