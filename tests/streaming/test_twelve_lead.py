"""A 12-lead 500 Hz monitor scored by the single-lead MIT-BIH model: lead II, resampled, and the
same scores offline and streamed (real ONNX Runtime session, the shipped model)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHIPPED_MODEL, synthetic_ecg, write_record

from ecgstream.runtime.scorer import Scorer
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.records import read_record, select_leads
from ecgstream.signals.windows import window_starts
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.wire import Chunk, decode, encode_binary

pytestmark = pytest.mark.skipif(not SHIPPED_MODEL.exists(), reason="shipped model not built")

TWELVE = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
T0 = 1_700_000_000.0


def test_a_twelve_lead_500_hz_monitor_is_scored_on_lead_ii_as_offline(tmp_path):
    fs = 500
    x = synthetic_ecg(40, fs, heart_rate=75, seed=3, n_leads=12)
    # lead I flat: scored on lead I (the old fallback) every window would differ from lead II's
    x[:, 0] = 0.0
    rec = read_record(write_record(tmp_path, "twelve", x, fs, TWELVE))
    scorer = Scorer(SHIPPED_MODEL)
    spec = scorer.spec
    assert spec.leads == ["MLII"] and select_leads(rec, spec.leads).leads == ["II"]
    offline = scorer.score_record(rec)

    pipe = Pipeline(scorer, keep_scores=True)
    streamed: dict[int, float] = {}
    for i in range(int(rec.duration_s)):
        chunk = Chunk("bed-1", i, T0 + i, float(fs), rec.leads, rec.signal[i * fs : (i + 1) * fs])
        res = pipe.process([Incoming(decode(encode_binary(chunk, sample_type="float32")))])
        a0 = int(T0 * spec.fs)
        streamed.update({(s["window"] - a0) // spec.hop: s["score"] for s in res.scores})
    assert pipe.streams["bed-1"].buffer.lead_idx == [1]

    pre, _ = preprocess(select_leads(rec, spec.leads).signal, rec.fs, spec.preprocess_config)
    starts = window_starts(len(pre), spec.window, spec.hop)
    regular = {i: s for i, s in enumerate(offline.window_score) if starts[i] == i * spec.hop}
    common = sorted(set(streamed) & set(regular))
    assert len(common) >= len(regular) - 1 >= 5
    got = np.array([streamed[i] for i in common])
    want = np.array([regular[i] for i in common], dtype=np.float64)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-6)
    # and lead I (flat) would not have given these scores
    flat = scorer.score_signal(rec.signal[:, :1], rec.fs, "lead I")
    assert not np.allclose(flat.window_score[: len(want)], want, atol=1e-2)
