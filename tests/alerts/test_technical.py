"""Technical checks of many streams' chunks at once (check_streams), as the pipeline feeds them."""

from __future__ import annotations

import numpy as np

from ecgstream.alerts.technical import (
    TechnicalConfig,
    TechnicalMachine,
    check_chunk,
    check_streams,
)


def test_streams_checked_together_alert_as_each_stream_alone():
    """Three streams, two chunks each: a flat line that starts, one that clears, a clean one.
    The batched check gives each stream's own alerts (one per episode start), flags the chunks
    that show a condition, and leaves each machine as checking its chunks alone would."""
    cfg = TechnicalConfig()
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 0.5, size=(3, 360, 2))
    flat = clean.copy()
    flat[0, :, 1] = 0.2  # stream 0: lead V1 flat
    flat[1, :, 0] = 0.0  # stream 1: lead MLII flat in the first chunk only
    steps = [flat, clean.copy()]
    steps[1][0, :, 1] = 0.2  # stream 0 stays flat
    leads = ["MLII", "V1"]
    together = [TechnicalMachine(f"s{i}", "m", "1", leads) for i in range(3)]
    alone = [TechnicalMachine(f"s{i}", "m", "1", leads) for i in range(3)]
    flagged_steps, alerts_steps = [], []
    for k, x in enumerate(steps):
        alerts, flagged = check_streams(together, x, lambda j, k=k: (10.0 + k, 11.0 + k), cfg)
        want = [
            a
            for j, m in enumerate(alone)
            for a in m.update(check_chunk(x[j], cfg), 10.0 + k, 11.0 + k)
        ]
        assert [a.to_dict() for a in alerts] == [a.to_dict() for a in want]
        flagged_steps.append(flagged)
        alerts_steps.append([(a.stream, a.kind, a.leads) for a in alerts])
    assert flagged_steps == [[True, True, False], [True, False, False]]
    assert alerts_steps == [[("s0", "flat_line", ["V1"]), ("s1", "flat_line", ["MLII"])], []]
    assert [m.any_active for m in together] == [True, False, False]
