"""Broker outage: the broker is killed for 10 s (30 s in benchmarks/reliability_broker_outage.py)
and restarted on the same port while a worker consumes and ``ecgstream replay`` publishes.

The test broker (Tansu, in-memory storage) comes back empty: topics are recreated and the
consumer group starts again from the earliest offset. Checked: the worker keeps running,
reports the outage in its log and in ``ecgstream_broker_up`` / ``ecgstream_broker_outages``,
reconnects and resumes; the replay resumes too and exits cleanly; every window published after
the broker is back is scored. Windows whose samples straddle the outage may be lost (data that
was only in the killed broker's memory); the test prints how many.

Not in the default run (marker ``broker_restart``): with Tansu's in-memory restart it fails
about three runs in eight here, because after the topic is recreated the consumer, although it
detects that the partition now ends before its position and seeks back to the start, sometimes
receives nothing more before the run ends (see docs/reliability.md). Run it on demand with
``pytest -m broker_restart tests/reliability``.
"""

from __future__ import annotations

import pytest

from .broker import tansu_available
from .scenarios import broker_outage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.broker_restart,
    pytest.mark.skipif(not tansu_available(), reason="no tansu binary"),
]


def test_worker_and_replay_survive_a_broker_outage(tmp_path, energy_model):
    res = broker_outage(tmp_path, energy_model, outage_s=10.0)
    print({k: v for k, v in res.items() if not k.startswith("metrics")})
    assert res["worker_alive_during_outage"], "the worker died while the broker was down"
    assert res["worker_exit"] == 0 and res["replay_exit"] == 0
    assert res["windows_before"] > 0
    during, after = res["metrics_during"], res["metrics_after"]
    assert during.get("ecgstream_broker_up") == 0, during
    assert (
        after.get("ecgstream_broker_up") == 1
        and after.get("ecgstream_broker_outages_total", 0) >= 1
    ), after
    assert any("unreachable" in line for line in res["log_outage"]), res["log_outage"]
    assert any("back" in line for line in res["log_outage"]), res["log_outage"]
    assert not res["after_restart_missing"], (
        f"windows after the restart not scored: {res['after_restart_missing']}"
    )
    # nothing scored before the outage is lost; what is lost lies in or just after it (chunks
    # that were only in the killed in-memory broker, or sent while it was recreating topics)
    lost = res["lost_window_starts_s"]
    assert all(res["t_down_s"] - 3 <= j <= res["t_up_s"] + 4 for j in lost), lost
