"""The per-stream history term: offline and streamed scores agree, it is causal, it waits for a
bank, a model without it scores as before, and its metadata is checked."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHIPPED_MODEL, synthetic_ecg

from ecgstream.runtime.history import History, HistoryConfig
from ecgstream.runtime.model_file import ModelFileError, check_spec, read_spec, update_spec
from ecgstream.runtime.scorer import Scorer
from ecgstream.runtime.stepping import Cut, HistoryStepper, StepStateError
from ecgstream.runtime.stepping.consensus import ConsensusStepper
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.records import read_record, select_leads
from ecgstream.signals.windows import frame, overlap_average, window_starts
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.wire import Chunk

MITDB = Path(__file__).resolve().parents[3] / "shared" / "data" / "mitdb-ds1"
T0 = 1_700_000_000.0
WEIGHT = 8.0


@pytest.fixture(scope="module")
def history_model(tmp_path_factory) -> Path:
    """The shipped model with a history section (weight ``WEIGHT``)."""
    path = tmp_path_factory.mktemp("history") / "history.onnx"
    shutil.copy(SHIPPED_MODEL, path)
    gate = read_spec(SHIPPED_MODEL).threshold
    update_spec(path, history={"kind": "snippets", "weight": WEIGHT, "gate": gate})
    return path


def _record(name: str, seconds: float):
    if not (MITDB / f"{name}.hea").exists():
        pytest.skip("MIT-BIH DS1 not on this machine")
    rec = read_record(MITDB / name)
    return dataclasses.replace(rec, signal=rec.signal[: int(seconds * rec.fs)])


def _model_windows(scorer: Scorer, rec) -> tuple[np.ndarray, np.ndarray]:
    spec = scorer.spec
    x, _ = preprocess(select_leads(rec, spec.leads).signal, rec.fs, spec.preprocess_config)
    starts = window_starts(len(x), spec.window, spec.hop)
    return frame(x, starts, spec.window), starts


def test_the_shipped_model_carries_the_history_chosen_on_dev():
    spec = read_spec(SHIPPED_MODEL)
    assert spec.history == HistoryConfig(weight=9.591050103603703, gate=24.6).model_dump()
    stepper = Scorer(SHIPPED_MODEL).stepper
    assert isinstance(stepper, HistoryStepper) and isinstance(stepper.inner, ConsensusStepper)


def test_a_model_without_history_scores_exactly_as_its_main_graph(plain_model):
    """No history section: no history, the consensus stepper as it was, and record scores equal
    to the bit to the main graph's windows averaged over overlaps."""
    scorer = Scorer(plain_model)
    assert scorer.history is None and scorer.spec.history is None
    assert type(scorer.stepper) is ConsensusStepper
    x = synthetic_ecg(60, 360, seed=3)
    got = scorer.score_signal(x, 360.0)
    spec = scorer.spec
    xm, _ = preprocess(x, 360.0, spec.preprocess_config)
    starts = window_starts(len(xm), spec.window, spec.hop)
    point_raw, window_raw = scorer.score_windows(frame(xm, starts, spec.window))
    np.testing.assert_array_equal(got.window_score, spec.normalise(window_raw))
    want = overlap_average(spec.normalise(point_raw), starts, len(xm))
    assert np.array_equal(got.point_score[2000:4000], _to_record(want, spec, x)[2000:4000])


def _to_record(point_model, spec, x):
    from ecgstream.signals.windows import to_record_rate

    _, delay = preprocess(x, 360.0, spec.preprocess_config)
    return to_record_rate(point_model, spec.fs, 360.0, x.shape[0], delay)


def test_weight_zero_scores_like_no_history(history_model, plain_model, tmp_path):
    path = tmp_path / "zero.onnx"
    shutil.copy(history_model, path)
    spec = update_spec(path, history={**read_spec(history_model).history, "weight": 0.0})
    assert spec.history["weight"] == 0.0
    x = synthetic_ecg(60, 360, seed=4)
    a, b = Scorer(plain_model).score_signal(x, 360.0), Scorer(path).score_signal(x, 360.0)
    np.testing.assert_array_equal(a.window_score, b.window_score)
    np.testing.assert_array_equal(a.point_score, b.point_score)


def test_the_term_is_zero_until_the_bank_holds_enough_snippets(history_model):
    """Windows before the bank holds ``min_entries`` snippets (the first 20 s here: three gated
    windows of 24 snippets, each past only when it has ended) get no term; later ones do."""
    scorer = Scorer(history_model)
    rec = _record("118", 90)
    windows, starts = _model_windows(scorer, rec)
    raw = scorer.score_windows(windows)[1]
    terms = scorer.history_terms(windows, starts, raw)
    hist = scorer.history
    assert hist is not None and hist.per_window == 24 and hist.cfg.min_entries == 50
    gated = scorer.spec.normalise(raw) < hist.cfg.gate
    assert gated[:3].all()  # so the first term is at the window starting at 20 s
    first = int(np.flatnonzero(terms.any(1))[0])
    assert starts[first] == 2 * scorer.spec.window == 2000
    assert (terms[:first] == 0).all() and (terms[first:] > 0).any(1).all()
    # with a higher minimum the first term comes a window later
    later = History(hist.cfg.model_copy(update={"min_entries": 73}), 1000, 500, 100.0, 1).advance(
        [hist.new_state("t")], [0], [starts], windows, scorer.spec.normalise(raw)
    )
    assert (later[: first + 1] == 0).all() and later[first + 1].any()


def _stream(scorer: Scorer, rec, groups: list[int], name: str):
    """Chunks of 1 s of ``rec`` for stream ``name``, grouped into polls of ``groups`` chunks
    (cycled)."""
    n = int(rec.signal.shape[0] / rec.fs)
    fs = int(rec.fs)
    chunks = [
        Chunk(name, i, T0 + i, rec.fs, rec.leads, rec.signal[i * fs : (i + 1) * fs])
        for i in range(n)
    ]
    polls, i, g = [], 0, 0
    while i < n:
        polls.append(chunks[i : i + groups[g % len(groups)]])
        i += groups[g % len(groups)]
        g += 1
    return polls


def test_offline_and_streamed_scores_agree_on_real_records(history_model, plain_model):
    """Two MIT-BIH records streamed side by side in 1 s chunks, polls of 1 to 40 chunks (so a
    batch holds several consecutive windows of a stream, or none): every window's score equals
    the offline score of ``Scorer.score_record`` with the history term, and the term moved
    the scores."""
    scorer = Scorer(history_model)
    assert isinstance(scorer.stepper, HistoryStepper)
    plain = Scorer(plain_model)
    recs = {"a": _record("118", 240), "b": _record("208", 240)}
    polls = {
        "a": _stream(scorer, recs["a"], [40, 1, 1, 7, 25, 3], "a"),
        "b": _stream(scorer, recs["b"], [3, 30, 1], "b"),
    }
    pipe = Pipeline(scorer, keep_scores=True)
    scored = []
    for k in range(max(len(p) for p in polls.values())):
        items = [Incoming(c) for s in polls.values() if k < len(s) for c in s[k]]
        scored += pipe.process(items).scores
    spec = scorer.spec
    a0 = int(T0 * spec.fs)
    for name, rec in recs.items():
        offline = scorer.score_record(rec)
        before = plain.score_record(rec)
        streamed = {
            (r["window"] - a0) // spec.hop: r["score"] for r in scored if r["stream"] == name
        }
        assert len(streamed) >= len(offline.window_score) - 2
        idx = np.array(sorted(streamed))
        got = np.array([streamed[i] for i in idx])
        np.testing.assert_allclose(got, offline.window_score[idx], rtol=1e-5, atol=1e-4)
        moved = np.abs(offline.window_score - before.window_score)
        assert (moved[:4] == 0).all() and moved[6:].min() > 0.01


def test_stream_steps_give_the_offline_point_and_window_scores(history_model):
    """The history stepper on a record's windows in batches of 1 to 6 windows gives the raw
    point and window scores of the offline path (main graph plus the term)."""
    scorer = Scorer(history_model)
    stepper = scorer.stepper
    rec = _record("207", 200)
    windows, starts = _model_windows(scorer, rec)
    regular = starts == np.arange(len(starts)) * scorer.spec.hop
    windows, starts = windows[regular], starts[regular]
    point_raw, window_raw = scorer.score_windows(windows)
    terms = scorer.history_terms(windows, starts, window_raw)
    assert terms.any()
    scale = float(scorer.spec.score_norm["scale"])
    want_point, want_window = scorer.history.apply(point_raw, window_raw, terms, scale)
    state = stepper.new_state()
    got_point, got_window, i, sizes = [], [], 0, [1, 3, 6, 1, 2]
    while i < len(starts):
        n = sizes[len(got_window) % len(sizes)]
        plan = stepper.plan([state], [Cut(1, starts[i : i + n])], [])
        stepped = stepper.step(windows[i : i + n], plan)
        stepper.commit(plan, stepped)
        got_point.append(stepped.point_raw)
        got_window.append(stepped.window_raw)
        i += n
    np.testing.assert_allclose(np.concatenate(got_window), want_window, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(got_point), want_point, rtol=1e-5, atol=1e-6)


def test_a_record_cut_short_scores_its_earlier_windows_alike(history_model):
    """Record 118 whole and cut at 5 min: every window before the cut (but the cut's end-aligned
    last one) has the same score to the bit, so no window's term sees later samples."""
    scorer = Scorer(history_model)
    whole = scorer.score_record(_record("118", 600))
    cut = scorer.score_record(_record("118", 300))
    n = len(cut.window_score) - 1
    assert n > 50
    np.testing.assert_array_equal(cut.window_score[:n], whole.window_score[:n])


def test_a_windows_own_samples_never_enter_its_bank():
    """A pattern the stream never showed, in the new half of window k: its term is high in
    window k and in window k+1 (which shares those samples), and low where it comes again in a
    window starting after window k ended (k's snippets are then in the bank), unless window k
    scored at or over the gate."""
    hist = History(HistoryConfig(weight=1.0, gate=10.0), 1000, 500, 100.0, 1)
    x = synthetic_ecg(120, 100, seed=5)[:, 0].astype(np.float64)
    t = np.arange(len(x)) / 100.0
    pattern = lambda at: 2.0 * np.exp(-(((t - at) / 0.15) ** 2))  # noqa: E731
    k = 12
    # window k's and k+3's new halves, at a segment centre whose snippet enters the bank
    x = x + pattern(k * 5 + 7.4) + pattern((k + 3) * 5 + 7.4)
    starts = np.arange(0, len(x) - 1000 + 1, 500)
    windows = np.stack([x[s : s + 1000] for s in starts])[:, None].astype(np.float32)
    terms = hist.advance([hist.new_state("t")], [0], [starts], windows, np.zeros(len(starts)))
    at = int(np.flatnonzero(hist.centres == 740)[0])  # the pattern's segment in window k
    assert at in hist.new
    at_prev = int(np.flatnonzero(hist.centres == 240)[0])  # the same samples in window k+1
    normal = np.median(terms[k - 4 : k - 1, at])
    assert terms[k, at] > 10 * normal
    assert terms[k + 1, at_prev] > 0.5 * terms[k, at]  # not its own samples from window k
    assert terms[k + 3, at] < 0.5 * terms[k, at]
    # window k over the gate: its snippets stay out of the bank, the pattern stays new
    cal = np.zeros(len(starts))
    cal[k] = 10.0
    gated = hist.advance([hist.new_state("t")], [0], [starts], windows, cal)
    np.testing.assert_array_equal(gated[: k + 2], terms[: k + 2])  # k+2 is the first to see k
    assert gated[k + 3, at] > 0.5 * terms[k, at]


def test_a_state_of_the_stepper_without_history_is_refused(history_model, plain_model):
    stepper = Scorer(history_model).stepper
    old = Scorer(plain_model).stepper.new_state()
    with pytest.raises(
        StepStateError, match=r"consensus format 4, this model's is consensus format 4 with hist"
    ):
        stepper.plan([old], [Cut(1, np.array([0]))], [])
    assert stepper.plan([stepper.new_state()], [Cut(1, np.array([0]))], []) is not None


@pytest.mark.parametrize(
    "history,message",
    [
        ({"weight": -1.0, "gate": 20.0}, r"field 'history\.weight': Input should be greater"),
        ({"weight": 1.0}, r"field 'history\.gate' is missing"),
        ({"weight": 1.0, "gate": 2.0, "span": 3}, r"field 'history\.span': Extra inputs"),
        ({"kind": "beats", "weight": 1.0, "gate": 2.0}, r"field 'history\.kind'"),
        ({"weight": 1.0, "gate": 2.0, "bank_s": "2 min"}, r"field 'history\.bank_s'"),
    ],
)
def test_a_wrong_history_section_is_refused_naming_the_field(history, message):
    spec = read_spec(SHIPPED_MODEL)
    data = {**dataclasses.asdict(spec), "history": history}
    with pytest.raises(ModelFileError, match=message):
        check_spec(data)


def test_a_history_that_does_not_fit_the_window_is_refused(history_model, tmp_path):
    path = tmp_path / "bad.onnx"
    shutil.copy(history_model, path)
    update_spec(path, history={"weight": 1.0, "gate": 2.0, "envelope_s": 0.03})
    with pytest.raises(ModelFileError, match=r"field 'history': envelope_s 0.03 s must"):
        Scorer(path)


def test_batches_stepped_out_of_order_wait_for_the_earlier_ones_history(history_model):
    """Two batches of one stream planned in order but stepped in the other order (inference
    calls in flight side by side, ``ecgstream run``): the later one waits for the earlier one's
    history and gives the scores of stepping them in order."""
    import threading

    scorer = Scorer(history_model)
    rec = _record("118", 120)
    windows, starts = _model_windows(scorer, rec)
    regular = starts == np.arange(len(starts)) * scorer.spec.hop
    windows, starts = windows[regular], starts[regular]
    cut = 10

    def run(order):
        stepper = Scorer(history_model).stepper
        state = stepper.new_state()
        parts = [slice(0, cut), slice(cut, len(starts))]
        plans = [stepper.plan([state], [Cut(1, starts[p])], []) for p in parts]
        out: dict = {}

        def step(i):
            out[i] = stepper.step(windows[parts[i]], plans[i])

        threads = {i: threading.Thread(target=step, args=(i,)) for i in order}
        first, second = order
        threads[first].start()
        threads[first].join(0.5)
        if first == 1:
            assert threads[1].is_alive()  # waits for batch 0's history
        threads[second].start()
        for t in threads.values():
            t.join(30)
        for i in (0, 1):
            stepper.commit(plans[i], out[i])
        return np.concatenate([out[0].window_raw, out[1].window_raw])

    in_order, out_of_order = run((0, 1)), run((1, 0))
    np.testing.assert_array_equal(out_of_order, in_order)
