"""The model file and the ONNX Runtime scorer: interface checks, batching, offline vs streaming."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_ecg

from ecgstream.runtime.model_file import ModelFileError, ModelSpec, read_spec, write_spec
from ecgstream.runtime.scorer import RecordScores, Scorer
from ecgstream.signals.preprocess import Preprocessor
from ecgstream.signals.records import Record, RecordError
from ecgstream.signals.windows import frame, window_starts


def plain_onnx(path, input_name="windows"):
    """A valid ONNX graph (identity-like) that is not an ecgstream model."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [input_name], ["point_score"], axes=[1], keepdims=0),
         helper.make_node("ReduceMean", ["point_score"], ["window_score"], axes=[1], keepdims=0)],
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["b", 1, 100])],
        [helper.make_tensor_value_info("point_score", TensorProto.FLOAT, ["b", 100]),
         helper.make_tensor_value_info("window_score", TensorProto.FLOAT, ["b"])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_spec_round_trip_and_units(tiny_model):
    spec = read_spec(tiny_model)
    assert spec.kind == "pca" and spec.leads == ["MLII"] and spec.fs == 100.0
    assert spec.window_s == 2.5 and spec.hop_s == 1.25 and spec.threshold == 5.0
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    raw = np.array(
        [spec.score_norm["center"], spec.score_norm["center"] + 2 * spec.score_norm["scale"]]
    )
    np.testing.assert_allclose(spec.normalise(raw), [0.0, 2.0])


def test_model_without_metadata_is_rejected(tmp_path):
    path = plain_onnx(tmp_path / "plain.onnx")
    with pytest.raises(ModelFileError, match="not exported by ecgstream"):
        Scorer(path)
    with pytest.raises(ModelFileError, match="not found"):
        Scorer(tmp_path / "absent.onnx")


def test_wrong_graph_interface_is_rejected(tmp_path):
    path = plain_onnx(tmp_path / "x.onnx", input_name="x")
    write_spec(path, ModelSpec(name="x", version="1", kind="x", leads=["II"], window=100, hop=50))
    with pytest.raises(ModelFileError, match="graph must take 'windows'"):
        Scorer(path)


def test_batching_does_not_change_scores(tiny_model):
    x = np.random.default_rng(0).normal(size=(70, 1, 250)).astype(np.float32)
    p1, w1 = Scorer(tiny_model, batch_size=7).score_windows(x)
    p2, w2 = Scorer(tiny_model, batch_size=64).score_windows(x)
    np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(w1, w2, rtol=1e-6, atol=1e-6)
    p0, w0 = Scorer(tiny_model).score_windows(np.zeros((0, 1, 250), np.float32))
    assert p0.shape == (0, 250) and w0.shape == (0,)


@pytest.mark.parametrize("fs", [360, 500])
def test_offline_scores_equal_streaming_chunks(tiny_model, fs):
    """A window scored by ``score`` and the same window cut from a chunked stream give the same number."""
    scorer = Scorer(tiny_model)
    spec = scorer.spec
    sig = synthetic_ecg(30, fs, seed=fs)
    offline = scorer.score_signal(sig, fs, "r")
    pre = Preprocessor(spec.preprocess_config, fs, 1)
    stream = np.concatenate(
        [pre.process(sig[i : i + fs // 4]) for i in range(0, len(sig), fs // 4)]
    )
    starts = window_starts(len(stream), spec.window, spec.hop)
    _, raw = scorer.score_windows(frame(stream, starts, spec.window))
    np.testing.assert_allclose(spec.normalise(raw), offline.window_score, rtol=1e-4, atol=1e-4)


def test_score_record_picks_leads_and_checks_count(tiny_model):
    scorer = Scorer(tiny_model)
    sig = synthetic_ecg(10, 360, seed=1)
    two = np.concatenate([sig * 0.2, sig], axis=1)
    a = scorer.score_record(Record("a", two, 360.0, ["V1", "MLII"], ["mV", "mV"]))
    b = scorer.score_signal(sig, 360.0, "b")
    np.testing.assert_array_equal(a.point_score, b.point_score)
    with pytest.raises(RecordError, match="shorter than one"):
        scorer.score_signal(sig[:500], 360.0, "short")


def test_record_scores_npz_types(tmp_path):
    rs = RecordScores(
        "r",
        360.0,
        np.array([np.nan, 1.0], np.float32),
        np.array([0]),
        np.array([2]),
        np.array([1.5]),
    )
    rs.save_npz(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz") as d:
        assert d["fs"].dtype == np.float64 and d["fs"].shape == ()
        assert d["point_score"].dtype == np.float64 and d["window_start"].dtype == np.int64


def test_a_stream_step_of_another_format_is_left_out_with_a_warning(tmp_path, caplog, plain_model):
    """A model file whose stream step has inputs of an older format (the graph sorted its
    segments itself) is scored with its main graph alone, and the log says to re-export it."""
    import json
    import shutil

    import onnx

    from ecgstream.runtime.stepping.consensus import STREAM_KEY

    path = tmp_path / "older.onnx"
    shutil.copy(plain_model, path)  # without history (which would step it with the main graph)
    model = onnx.load(str(path))
    entry = next(p for p in model.metadata_props if p.key == STREAM_KEY)
    doc = json.loads(entry.value)
    assert Scorer(path).stepper is not None  # as shipped: the current format
    del doc["format"]  # the first format had no version
    entry.value = json.dumps(doc)
    onnx.save(model, str(path))
    with caplog.at_level("WARNING"):
        scorer = Scorer(path)
    assert scorer.stepper is None
    assert "re-export the model" in caplog.text
    window = frame(synthetic_ecg(12, 100)[:, :1], np.array([0]), 1000)
    assert np.isfinite(scorer.score_windows(window)[1]).all()
