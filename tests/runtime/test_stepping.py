"""The stream stepper seam: the pipeline keeps an opaque state per stream and knows no model kind."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import SHIPPED_MODEL, synthetic_ecg

import ecgstream.streaming.pipeline as pipeline_module
from ecgstream.runtime.scorer import Scorer
from ecgstream.runtime.stepping import Cut, Stepped, StepStateError, StreamStepper
from ecgstream.runtime.stepping.consensus import ConsensusStepper
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.wire import Chunk

T0 = 1_700_000_000.0


def test_the_pipeline_imports_no_model_kind():
    """streaming/pipeline.py imports the stepper interface only: no model package, no stepper
    of a kind, and it names no model internals."""
    path = Path(pipeline_module.__file__)
    tree = ast.parse(path.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "ecgstream.runtime.stepping" in imported
    kinds = ("ecgstream.models", "ecgstream.training", "ecgstream.runtime.stepping.")
    assert not [m for m in imported if m and m.startswith(kinds)], imported
    text = path.read_text().lower()
    assert not [w for w in ("consensus", "carry", "layout", "sorts") if w in text]


@dataclass
class Seen:
    """The state of :class:`Recording`: every window a stream's state was stepped past."""

    stepper: str
    starts: list[int] = field(default_factory=list)
    generations: list[int] = field(default_factory=list)


class Recording(StreamStepper):
    """A second stepper kind: scores with the main graph and keeps, per stream, the windows it
    was stepped past (to check what the pipeline hands a stepper)."""

    name = "recording"
    format = 1

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.states: list[Seen] = []

    def new_state(self) -> Seen:
        self.states.append(Seen(self.key))
        return self.states[-1]

    def plan(self, states, cuts, primers):
        self.check_states(states)
        return list(zip(states, cuts, strict=True)) if cuts else None

    def step(self, windows, plan):
        if windows is None:
            return Stepped(None, None)
        return Stepped(*self.scorer.score_windows(windows), handover=plan, carried=len(windows))

    def commit(self, plan, stepped):
        for state, cut in stepped.handover or []:
            state.starts += cut.starts.tolist()
            state.generations += [cut.generation] * len(cut.starts)


def _steps(n_streams: int, seconds: int, skip: tuple[int, int] | None = None):
    chunks = {}
    for s in range(n_streams):
        sig = synthetic_ecg(seconds, 360, seed=s, n_leads=1)
        chunks[f"bed-{s}"] = [
            Chunk(f"bed-{s}", i, T0 + s + i, 360.0, ["MLII"], sig[i * 360 : (i + 1) * 360])
            for i in range(seconds)
            if (s, i) != skip
        ]
    return [[c[i] for c in chunks.values() if i < len(c)] for i in range(seconds)]


def test_a_second_stepper_kind_gets_each_streams_windows_and_state(plain_model):
    """Through a stepper of another kind the pipeline gives the scores of the main graph and
    steps each stream's own state past exactly that stream's windows, in order, with a new
    generation after a gap."""
    scorer = Scorer(plain_model)
    recording = Recording(scorer)
    steps = _steps(3, 40, skip=(1, 20))
    want, got = (
        Pipeline(scorer, keep_scores=True),
        Pipeline(scorer, keep_scores=True, stepper=recording),
    )
    plain = [r for step in steps for r in want.process([Incoming(c) for c in step]).scores]
    seen = [r for step in steps for r in got.process([Incoming(c) for c in step]).scores]
    assert len(seen) >= 3 * 5 and [r["window"] for r in seen] == [r["window"] for r in plain]
    np.testing.assert_allclose([r["score"] for r in seen], [r["score"] for r in plain], atol=1e-5)
    assert len(recording.states) == 3
    for s, state in enumerate(recording.states):
        assert got.streams[f"bed-{s}"].model is state
        assert state.starts == [r["window"] for r in seen if r["stream"] == f"bed-{s}"]
        assert np.all(np.diff(state.starts) > 0)
        assert len(set(state.generations)) == (2 if s == 1 else 1)  # the gap restarted bed-1


def test_a_state_of_another_stepper_or_format_is_refused_with_a_clear_error(plain_model):
    """A stream state made by another stream step (kind or format) is not stepped: the error
    names both, before any window is scored."""
    stepper = Scorer(plain_model).stepper
    assert isinstance(stepper, ConsensusStepper)
    cut = [Cut(1, np.array([0, 360]))]
    assert stepper.plan([stepper.new_state()], cut, []) is not None
    old = stepper.new_state()
    old.stepper = f"consensus format {stepper.format - 1}"
    with pytest.raises(
        StepStateError, match=rf"format {stepper.format - 1}.*format {stepper.format}"
    ):
        stepper.plan([old], cut, [])
    with pytest.raises(StepStateError, match="recording format 1"):
        stepper.plan([Recording(stepper.scorer).new_state()], cut, [])


def test_windows_of_a_stream_step_equal_the_main_graph_and_take_over_their_carry(plain_model):
    """The consensus stepper scores a stream's second window from the first one's carry as the
    main graph scores it, and the state then holds the second window's carry."""
    scorer = Scorer(plain_model)
    stepper = scorer.stepper
    spec = scorer.spec
    x = synthetic_ecg(30, 100, seed=2, n_leads=1)[:, 0]
    starts = np.array([0, spec.hop])
    windows = np.stack([x[a : a + spec.window][None] for a in starts]).astype(np.float32)
    state = stepper.new_state()
    for k in range(2):
        plan = stepper.plan([state], [Cut(1, starts[k : k + 1])], [])
        stepped = stepper.step(windows[k : k + 1], plan)
        stepper.commit(plan, stepped)
        assert stepped.carried == k  # the second window took over the first one's sorts
        assert state.carry is not None and state.carry[:2] == (1, int(starts[k]))
    main = scorer.score_windows(windows[1:])
    np.testing.assert_allclose(stepped.window_raw, main[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stepped.point_raw, main[0], rtol=1e-5, atol=1e-6)


def _with_stream_step(tmp_path, edit) -> Path:
    """A copy of the shipped model whose stream step metadata (a dict) went through ``edit``."""
    import json
    import shutil

    import onnx

    from ecgstream.runtime.stepping.consensus import STREAM_KEY

    path = tmp_path / "edited.onnx"
    shutil.copy(SHIPPED_MODEL, path)
    model = onnx.load(str(path))
    entry = next(p for p in model.metadata_props if p.key == STREAM_KEY)
    doc = json.loads(entry.value)
    edit(doc)
    entry.value = json.dumps(doc)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.pop("carry"), "'ecgstream.stream_step' metadata is malformed: 'carry'"),
        (lambda d: d.update(onnx_base64="not base64!"), "metadata is malformed"),
        (lambda d: d.update(onnx_base64="AAAA"), "its stream step does not load"),
    ],
)
def test_a_broken_stream_step_in_a_model_file_is_a_clear_error(tmp_path, edit, message):
    """A stream step of a format this ecgstream reads but with a missing layout key, a graph
    that is not base64 or not ONNX: loading the model says which, naming the file or key."""
    from ecgstream.runtime.model_file import ModelFileError

    with pytest.raises(ModelFileError, match=message):
        Scorer(_with_stream_step(tmp_path, edit))
