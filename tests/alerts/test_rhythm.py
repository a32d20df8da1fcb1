"""Rhythm alerts from each window's periodicity, on ECG simulated with neurokit2."""

from __future__ import annotations

import numpy as np
import pytest

from ecgstream.alerts.rhythm import RhythmMachine, rhythm_features

nk = pytest.importorskip("neurokit2")
FS = 100.0


def _windows(x: np.ndarray, win_s: float = 10.0, hop_s: float = 5.0) -> np.ndarray:
    w, h = int(win_s * FS), int(hop_s * FS)
    return np.stack([x[a : a + w] for a in range(0, len(x) - w + 1, h)])


def _ecg(bpm: float, seconds: float = 60.0, seed: int = 1) -> np.ndarray:
    return nk.ecg_simulate(
        duration=seconds, sampling_rate=int(FS), heart_rate=bpm, method="simple", random_state=seed
    )


def _irregular(seconds: float = 90.0, seed: int = 3) -> np.ndarray:
    """An AF-like series: QRS complexes at random RR intervals (0.3-1.6 s), no P waves."""
    rng = np.random.default_rng(seed)
    beat = _ecg(60, 2.0, seed)[50:150]  # one complex
    x = np.zeros(int(seconds * FS))
    t = 0.0
    while t < seconds - 1.2:
        a = int(t * FS)
        x[a : a + 100] += beat[: len(x[a : a + 100])]
        t += rng.uniform(0.3, 1.6)
    return x + rng.normal(0, 0.01, len(x))


def _trigeminy(seconds: float = 90.0, seed: int = 4) -> np.ndarray:
    """Ventricular trigeminy at about 70 bpm: two normal complexes, then a premature, wider,
    inverted one with a compensatory pause; the pattern repeats every 2.55 s."""
    rng = np.random.default_rng(seed)
    beat = _ecg(60, 2.0, seed)[50:150]
    wide = -1.3 * np.interp(np.arange(100) * 0.6 + 20, np.arange(100), beat)
    x = np.zeros(int(seconds * FS))
    t, k = 0.0, 0
    while t < seconds - 1.2:
        a = int(t * FS)
        x[a : a + 100] += (beat if k % 3 < 2 else wide)[: len(x[a : a + 100])]
        t += (0.85, 0.55, 1.15)[k % 3] * rng.uniform(0.97, 1.03)
        k += 1
    return x + rng.normal(0, 0.01, len(x))


@pytest.mark.parametrize("bpm", [40, 75, 150])
def test_rate_is_read_from_the_windows(bpm: float) -> None:
    f = rhythm_features(_windows(_ecg(bpm)), FS)
    assert np.median(np.abs(f.rate_bpm - bpm) / bpm) < 0.08
    assert np.median(f.regularity) > 0.5


def test_irregular_rhythm_has_low_periodicity_and_alerts() -> None:
    f = rhythm_features(_windows(_irregular()), FS)
    assert np.median(f.regularity) < 0.3
    m = RhythmMachine("s", "m", "1", ["MLII"])
    msgs = m.update(np.arange(len(f.regularity)) * 500, _windows(_irregular())[:, None],
                    np.arange(len(f.regularity)) * 5.0, FS)  # fmt: skip
    assert {a.kind for a in msgs if a.status == "firing"} == {"irregular_rhythm"}  # no rate alert


def _run(x: np.ndarray) -> list:
    w = _windows(x)
    m = RhythmMachine("s", "m", "1", ["MLII"])
    return m.update(np.arange(len(w)) * 500, w[:, None], np.arange(len(w)) * 5.0, FS)


def test_rate_alerts_and_their_absence_on_sinus_rhythm() -> None:
    assert _run(_ecg(75)) == []
    fast = [a for a in _run(_ecg(150)) if a.status == "firing"]
    assert [(a.kind, a.severity) for a in fast] == [("tachycardia", "critical")]
    slow = [a for a in _run(_ecg(32, 90)) if a.status == "firing"]
    assert [a.kind for a in slow] == ["bradycardia"]


def test_a_pause_alerts_with_its_position() -> None:
    x = _ecg(75, 60)
    x[3000:3400] = x[3000]  # 4 s without a complex, from 30 s
    msgs = [a for a in _run(x) if a.kind == "pause"]
    assert msgs and msgs[0].status == "firing" and msgs[0].severity == "critical"
    assert msgs[0].start_s <= 30.0 and msgs[0].end_s >= 34.0


def test_ventricular_flutter_keeps_its_tachycardia_alert_open() -> None:
    """Bundled excerpt of MIT-BIH record 207 (a DEV record): ventricular flutter at about
    220 bpm from 40.9 s to 139.3 s, then idioventricular rhythm. Read at lags of 0.3 s and
    more, the flutter's rate halves to about 110 bpm and its tachycardia alert resolved in the
    middle of it; it must stay open over the whole episode and resolve after it."""
    from importlib.resources import files

    from ecgstream.evaluation.alerts import reference_events, replay_record
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.streaming.worker import find_model

    path = str(files("ecgstream") / "data" / "mitdb" / "207")
    (flutter,) = [(a, b) for a, b, name in reference_events(path).abnormal_rhythm if name == "(VFL"]
    run = replay_record(Scorer(find_model(None)), path)
    tachy = [m for m in run.messages if m["kind"] == "tachycardia"]
    assert [m["status"] for m in tachy] == ["firing", "resolved"]
    fired, resolved = tachy
    assert fired["severity"] == "critical" and fired["at_s"] <= flutter[0] + 15.0
    assert resolved["at_s"] >= flutter[1] and resolved["end_s"] >= flutter[1]


def test_trigeminy_is_a_regular_rhythm() -> None:
    """Trigeminy repeats every three beats (2.55 s here): it is neither atrial fibrillation nor
    bradycardia, and raises no rhythm alert (with lags only up to 2.0 s it read as irregular)."""
    f = rhythm_features(_windows(_trigeminy()), FS)
    assert np.median(f.regularity) > 0.5
    assert _run(_trigeminy()) == []
