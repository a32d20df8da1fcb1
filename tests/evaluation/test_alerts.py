"""EC57-style alert evaluation on a WFDB record written here (neurokit2 + wfdb.wrann)."""

from __future__ import annotations

import numpy as np
import pytest

from ecgstream.evaluation.alerts import (
    evaluate_alerts,
    reference_events,
    table_lines,
)
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.worker import find_model

nk = pytest.importorskip("neurokit2")
wfdb = pytest.importorskip("wfdb")
FS = 360


def _record(folder) -> str:
    """120 s of sinus rhythm at 70 bpm, then 120 s of an irregular (AF-like) rhythm, annotated."""
    rng = np.random.default_rng(5)
    sinus = nk.ecg_simulate(duration=120, sampling_rate=FS, heart_rate=70, method="simple",
                            random_state=5)  # fmt: skip
    beat = nk.ecg_simulate(duration=2, sampling_rate=FS, heart_rate=60, method="simple",
                           random_state=5)[180:540]  # fmt: skip
    irr = np.zeros(120 * FS)
    t, beats = 0.0, []
    while t < 118.4:
        a = int(t * FS)
        irr[a : a + len(beat)] += beat[: len(irr[a : a + len(beat)])]
        beats.append(a + 120 * FS + 180)
        t += rng.uniform(0.3, 1.6)
    x = np.concatenate([sinus, irr]) + rng.normal(0, 0.01, 240 * FS)
    sinus_beats = list(np.arange(0.5, 119.5, 60 / 70) * FS)
    samples = np.array([0, *np.round(sinus_beats).astype(int), 120 * FS, *beats])
    symbols = ["+"] + ["N"] * len(sinus_beats) + ["+"] + ["N"] * len(beats)
    aux = ["(N"] + [""] * len(sinus_beats) + ["(AFIB"] + [""] * len(beats)
    wfdb.wrsamp("900", fs=FS, units=["mV"], sig_name=["MLII"], p_signal=x[:, None],
                fmt=["212"], write_dir=str(folder))  # fmt: skip
    wfdb.wrann("900", "atr", samples, symbol=symbols, aux_note=aux, write_dir=str(folder))
    return str(folder / "900")


def test_reference_events_read_rhythm_episodes(tmp_path) -> None:
    ev = reference_events(_record(tmp_path))
    assert ev.af == [(120.0, 240.0)] and ev.v_runs == [] and ev.duration_s == 240.0


def test_an_irregular_rhythm_is_alerted_and_timed(tmp_path) -> None:
    path = _record(tmp_path)
    report = evaluate_alerts(Scorer(find_model(None)), [tmp_path / "900"], plots=tmp_path)
    row = report["records"][0]
    assert row["af_episodes"] == 1 and row["af_alerted"] == 1
    assert row["irregular_alerts"] >= 1 and row["irregular_alerts_true"] == row["irregular_alerts"]
    # the first irregular message comes after the episode starts, within a minute (measured 50 s)
    assert 0 < row["af_latency_s"][0] <= 60
    assert (tmp_path / "timeline-900.png").stat().st_size > 10_000
    assert report["pooled"]["hours"] == pytest.approx(240 / 3600)
    assert any(line.startswith("| 900 |") for line in table_lines(report)), path
