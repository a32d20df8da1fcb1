"""Signal quality: artefacts give technical alerts or suppression instead of ECG anomaly alerts.

Normal synthetic ECG monitors (neurokit2) run through the worker's pipeline with a real ONNX
model (the shipped model when present, else a small PCA reconstruction model fitted on normal
synthetic ECG), once clean and once with one episode of each artefact per monitor (see
``quality.py``). The false anomaly alert rate per monitor-hour over longer runs is measured by
``benchmarks/reliability_signal_quality.py`` (docs/reliability.md).
"""

from __future__ import annotations

import pytest
from conftest import SHIPPED_MODEL

from ecgstream.runtime.model_file import read_spec

from .quality import ARTEFACTS, run_monitors

N, SECONDS, EPISODE_S = 2, 160, 10.0
SIGNALLED = ("flat_line", "lead_off", "saturation", "gap")


@pytest.fixture(scope="module")
def model(tiny_model):
    return str(SHIPPED_MODEL if SHIPPED_MODEL.exists() else tiny_model)


def test_artefacts_raise_technical_alerts_not_anomaly_alerts(model):
    clean = run_monitors(model, N, SECONDS, seed=3)
    dirty = run_monitors(model, N, SECONDS, ARTEFACTS, episode_s=EPISODE_S, seed=3)
    ungated = run_monitors(
        model, N, SECONDS, ARTEFACTS, episode_s=EPISODE_S, seed=3, technical=False
    )
    print("clean", clean.summary())
    print("artefacts", dirty.summary())
    print("artefacts, technical checks off", ungated.summary())
    spec = read_spec(model)
    per_monitor = (SECONDS - spec.window_s - 2) / spec.hop_s
    assert (
        clean.scored_windows >= N * per_monitor
        and not clean.technical
        and not clean.suppressed_windows
    )
    assert sum(dirty.episodes.values()) == N * len(ARTEFACTS)
    # every flat line, lead-off, saturation and gap episode raised its technical alert ...
    for kind in SIGNALLED:
        assert dirty.episodes_flagged[kind] == dirty.episodes[kind], (kind, dirty.summary())
        assert dirty.technical[kind] >= dirty.episodes[kind]
        # ... and none of them produced an ECG anomaly alert
        assert dirty.anomaly_on_artefact[kind] == 0, (kind, dirty.summary())
    assert dirty.suppressed_windows >= N * 3  # flat line, lead off and saturation windows at least
    # scattered missing samples (10 %) are filled, neither flagged nor alerted
    assert dirty.anomaly_on_artefact["missing_samples"] == 0
    # the technical checks are what keeps the artefacts out of the anomaly alerts
    assert dirty.anomaly_alerts <= ungated.anomaly_alerts
    assert clean.anomaly_alerts <= 1, clean.summary()
