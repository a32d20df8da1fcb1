"""The consensus model's stream step: a window scored from the sorts it shares with the
previous window of its stream.

A consensus model file may carry a second ONNX graph in its ``metadata_props`` (key
:data:`STREAM_KEY`, with its layout and :data:`STREAM_FORMAT`), exported from ``StreamStep``
in :mod:`ecgstream.models.consensus`. It scores a window from the sorted values and noise
floors of its new segments (numpy computes them, :mod:`ecgstream.runtime.stepping.sorts`) and
of the ``carry`` segments it shares with the window one hop earlier, and gives the same scores
as the main graph to float32 rounding. The main graph hands each window's carry over as two
more outputs (:data:`CARRY_OUTPUTS`), so a window without a previous one to take over from
goes through it.

Per stream, :class:`ConsensusState` keeps the carry of the last window scored; a stream whose
next window has no previous window scored (its start, after a gap, a rebalance) gets a
*primer*: the carry computed from the samples of that previous window one hop ahead, with
numpy alone, so that window too goes through the stream step.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgstream.runtime.model_file import INPUT_NAME, OUTPUT_NAMES, ModelFileError
from ecgstream.runtime.stepping.base import Cut, Primer, Stepped, StreamStepper
from ecgstream.runtime.stepping.sorts import next_carry, segment_sorts, window_medians

if TYPE_CHECKING:
    from ecgstream.runtime.scorer import Scorer

log = logging.getLogger(__name__)

__all__ = [
    "STREAM_KEY",
    "STREAM_FORMAT",
    "STREAM_INPUTS",
    "STREAM_OUTPUTS",
    "STREAM_RHYTHM_INPUT",
    "CARRY_OUTPUTS",
    "ConsensusStepper",
    "ConsensusState",
    "read_stream_step",
    "write_stream_step",
]

#: metadata key of the stream step: a graph scoring a window from the sorts of its new
#: segments and the sorts it shares with the previous window (streaming only; same scores as
#: the main graph)
STREAM_KEY = "ecgstream.stream_step"
#: version of the stream step's inputs and layout; a model file with another one is scored
#: with its main graph alone
STREAM_FORMAT = 4
#: older formats this ecgstream still reads (format 3 had no rhythm term)
STREAM_FORMATS_READ = (3, STREAM_FORMAT)
STREAM_LAYOUT_KEYS = (
    "carry", "carry_floors", "span", "floor_offset", "segment", "floor_width", "stride", "new",
    "new_floors", "floor_every", "noise_keep", "floor_mean", "level_every", "rhythm",
)  # fmt: skip
STREAM_INPUTS = (
    "sorted_new", "floors_new", "carried", "carried_floors", "consensus", "floor_consensus",
)  # fmt: skip
#: the stream step's input after :data:`STREAM_INPUTS` when its layout has ``rhythm``: the
#: whole preprocessed window, which the rhythm term compares with itself
STREAM_RHYTHM_INPUT = INPUT_NAME
STREAM_OUTPUTS = OUTPUT_NAMES
#: outputs of a model with a stream step after its two scores: each window's carry
CARRY_OUTPUTS = ("next_carried", "next_carried_floors")


def write_stream_step(onnx_path: str | Path, layout: dict, graph: bytes) -> None:
    """Store a model's stream step (a second ONNX graph, see ``StreamStep`` in
    :mod:`ecgstream.models.consensus`) and its layout in the model file's ``metadata_props``."""
    import onnx

    model = onnx.load(str(onnx_path))
    for entry in list(model.metadata_props):
        if entry.key == STREAM_KEY:
            model.metadata_props.remove(entry)
    entry = model.metadata_props.add()
    doc = {
        **layout,
        "format": STREAM_FORMAT,
        "onnx_base64": base64.b64encode(graph).decode("ascii"),
    }
    entry.key, entry.value = STREAM_KEY, json.dumps(doc)
    onnx.save(model, str(onnx_path))


def read_stream_step(text: str) -> tuple[dict, bytes] | None:
    """The layout and ONNX graph of a stream step stored as ``text`` (the metadata value),
    None if it has another :data:`STREAM_FORMAT` (logged: re-export the model to use it)."""
    try:
        doc = json.loads(text)
        if doc.get("format") not in STREAM_FORMATS_READ:
            log.warning(
                "the model's stream step has format %s, this ecgstream reads %s: windows are "
                "scored with the main graph alone (re-export the model to use the stream step)",
                doc.get("format", 1),
                STREAM_FORMAT,
            )
            return None
        graph = base64.b64decode(doc.pop("onnx_base64"), validate=True)
        doc.setdefault("rhythm", 0)  # format 3
        layout = {k: int(doc[k]) for k in STREAM_LAYOUT_KEYS}
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"model's '{STREAM_KEY}' metadata is malformed: {exc}") from None
    return layout, graph


@dataclass
class ConsensusState:
    """One stream's state: ``carry`` (buffer generation, window start, carried sorts, carried
    floors) of the last window scored, for the window one hop later, and ``primed``
    (generation, window start) of the last primer asked for; ``stepper`` names the
    :class:`ConsensusStepper` that made it."""

    stepper: str
    carry: tuple[int, int, np.ndarray, np.ndarray] | None = None
    primed: tuple[int, int] | None = None

    def keep(self, generation: int, start: int, sorts: np.ndarray, floors: np.ndarray) -> None:
        """Keep the carry of the window at ``start`` for the window one hop later."""
        old = self.carry
        if old is None:
            self.carry = (generation, start, sorts.copy(), floors.copy())
            return
        # into the stream's arrays (plan copied them into its batch already)
        np.copyto(old[2], sorts)
        np.copyto(old[3], floors)
        self.carry = (generation, start, old[2], old[3])

    def follows(self, generation: int, start: int, hop: int) -> bool:
        """Whether the carry is that of the window one hop before ``start``."""
        c = self.carry
        return c is not None and c[0] == generation and c[1] + hop == start


@dataclass
class _Plan:
    """A batch's windows ``rows`` that take over their previous window's ``carried`` sorts and
    ``floors`` (the others go through the main graph); the streams' states, generations and
    last window starts; the primers' states, generations, window starts and spans."""

    rows: np.ndarray
    carried: np.ndarray
    floors: np.ndarray
    states: list[ConsensusState]
    generations: list[int]
    last_starts: list[int]
    counts: list[int]
    primers: list[tuple[ConsensusState, int, int]]
    spans: np.ndarray | None


class ConsensusStepper(StreamStepper):
    """The stream step of a consensus model file (see the module docstring).

    ``layout`` is the stream step's layout (:data:`STREAM_LAYOUT_KEYS`); ``session`` the
    stream step graph's ONNX Runtime session.
    """

    name = "consensus"
    format = STREAM_FORMAT

    def __init__(self, scorer: Scorer, layout: dict, session: Any):
        self.scorer = scorer
        self.layout = layout
        self.session = session
        self.hop, self.window = int(scorer.spec.hop), int(scorer.spec.window)
        self.leads = len(scorer.spec.leads)

    @classmethod
    def load(cls, scorer: Scorer, text: str, threads: int) -> ConsensusStepper | None:
        """The stream step stored as metadata ``text`` in ``scorer``'s model file (None if it
        has another format)."""
        import onnxruntime as ort

        from ecgstream.runtime.scorer import session_options

        step = read_stream_step(text)
        if step is None:
            return None
        outputs = {o.name for o in scorer.session.get_outputs()}
        if not set(CARRY_OUTPUTS) <= outputs:
            raise ModelFileError(
                f"{scorer.model_path}: has a stream step but its graph does not give "
                f"{CARRY_OUTPUTS}"
            )
        layout, graph = step
        try:
            session = ort.InferenceSession(
                graph, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelFileError(
                f"{scorer.model_path}: its stream step does not load: {exc}"
            ) from exc
        return cls(scorer, layout, session)

    # ---------------------------------------------------------------- scoring

    def score_windows_carry(
        self, windows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raw point and window scores of ``windows`` ``(n, leads, window)`` with the main graph,
        plus each window's carry for the window one hop later."""
        names = (*OUTPUT_NAMES, *CARRY_OUTPUTS)
        return self.scorer.run(self.scorer.session, names, {INPUT_NAME: windows})  # type: ignore[return-value]

    def score_carried(
        self, windows: np.ndarray, carried: np.ndarray, carried_floors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`score_windows_carry` with the stream step: ``carried``
        ``(n, leads, carry, segment)`` and ``carried_floors`` are the carry of each window's
        previous window; the scores equal the main graph's to float32 rounding. The new
        segments are sorted and the window's medians selected with numpy, the rest runs in the
        stream step graph."""
        lay = self.layout
        ordered, floors = segment_sorts(windows[:, :, -lay["span"] :], lay)
        medians = window_medians(carried, ordered, carried_floors, floors, lay)
        inputs = (ordered, floors, carried, carried_floors, *medians)
        feed = dict(zip(STREAM_INPUTS, inputs, strict=True))
        if lay["rhythm"]:
            feed[STREAM_RHYTHM_INPUT] = windows
        point, window = self.scorer.run(self.session, STREAM_OUTPUTS, feed)
        return point, window, *next_carry(ordered, floors, lay)

    def carry_after(self, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The carry (sorts and floors) a window takes over from a previous window that ends
        with ``spans`` ``(n, leads, span)``: the sorts of the span's segments alone, no graph."""
        return next_carry(*segment_sorts(spans, self.layout), self.layout)

    # ---------------------------------------------------------------- the three phases

    def new_state(self) -> ConsensusState:
        return ConsensusState(self.key)

    def primer(
        self, state: ConsensusState, generation: int, next_start: int, end: int
    ) -> tuple[int, int] | None:
        """The last ``span`` samples of the window one hop before ``next_start``, when they are
        all in and that window was not scored (nor primed) since the buffer's last restart."""
        hop = self.hop
        if end < next_start + self.window - hop or state.follows(generation, next_start, hop):
            return None
        key = (generation, next_start - hop)
        if state.primed == key:
            return None
        state.primed = key
        a1 = next_start - hop + self.window
        return a1 - self.layout["span"], a1

    def plan(self, states: list, cuts: list[Cut], primers: list[Primer]) -> _Plan | None:
        """A stream's first window in the batch takes over its previous window's sorts when
        that window was scored since the buffer's last restart; later ones in the same batch
        don't (their previous window is scored in this very call)."""
        if not cuts and not primers:
            return None
        self.check_states(states)
        self.check_states([p.state for p in primers])
        rows, carried, floors = [], [], []
        row = 0
        for state, cut in zip(states, cuts, strict=True):
            if state.follows(cut.generation, int(cut.starts[0]), self.hop):
                rows.append(row)
                carried.append(state.carry[2])
                floors.append(state.carry[3])
            row += len(cut.starts)
        lay = self.layout
        if rows:
            plan_c, plan_f = np.stack(carried), np.stack(floors)
        else:
            plan_c = np.zeros((0, self.leads, lay["carry"], lay["segment"]), np.float32)
            plan_f = np.zeros((0, self.leads, lay["carry_floors"], lay["floor_width"]), np.float32)
        return _Plan(
            np.array(rows, np.int64),
            plan_c,
            plan_f,
            states,
            [c.generation for c in cuts],
            [int(c.starts[-1]) for c in cuts],
            [len(c.starts) for c in cuts],
            [(p.state, p.generation, p.next_start - self.hop) for p in primers],
            np.stack([p.span for p in primers]) if primers else None,
        )

    def step(self, windows: np.ndarray | None, plan: _Plan | None) -> Stepped:
        primed = None
        if plan is not None and plan.spans is not None:
            primed = self.carry_after(plan.spans)
        n_primed = 0 if primed is None else len(plan.primers)  # type: ignore[union-attr]
        if windows is None:
            return Stepped(None, None, (None, None, primed), primed=n_primed)
        assert plan is not None
        rows = plan.rows
        if len(rows) == len(windows):  # every window takes over its previous window's sorts
            out = self.score_carried(windows, plan.carried, plan.floors)
        elif not len(rows):
            out = self.score_windows_carry(windows)
        else:  # the others (no previous window to take over from) go through the whole graph
            fresh = np.setdiff1d(np.arange(len(windows)), rows)
            stepped = self.score_carried(windows[rows], plan.carried, plan.floors)
            whole = self.score_windows_carry(windows[fresh])
            out = tuple(np.empty((len(windows), *a.shape[1:]), a.dtype) for a in stepped)
            for o, a, b in zip(out, stepped, whole, strict=True):
                o[rows], o[fresh] = a, b
        point_raw, window_raw, next_c, next_f = out
        return Stepped(point_raw, window_raw, (next_c, next_f, primed), len(rows), n_primed)

    def commit(self, plan: _Plan | None, stepped: Stepped) -> None:
        """Keep each stream's carry from its last window in the batch, and the primers'."""
        if plan is None:
            return
        next_c, next_f, primed = stepped.handover
        if next_c is not None:
            row = -1
            for p, state in enumerate(plan.states):
                row += plan.counts[p]
                state.keep(plan.generations[p], plan.last_starts[p], next_c[row], next_f[row])
        if primed is not None:
            sorts, floors = primed
            for i, (state, generation, start) in enumerate(plan.primers):
                state.keep(generation, start, sorts[i], floors[i])
