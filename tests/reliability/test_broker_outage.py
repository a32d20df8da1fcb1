"""Broker outage: the broker is killed for 10 s (30 s in benchmarks/reliability_broker_outage.py)
and restarted on the same port while a worker consumes and ``ecgstream replay`` publishes.

The broker (Tansu) keeps its log and committed offsets on a local S3-compatible server that
outlives it, so it comes back as a Kafka broker does after a crash: same topics, same records,
same group offsets. Checked: the worker keeps running, reports the outage in its log and in
``ecgstream_broker_up`` / ``ecgstream_broker_outages``, reconnects and resumes from the group's
committed offsets (not from the start); the replay keeps publishing, every send is acknowledged
and it exits cleanly; and no window is lost, before, during or after the outage.
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


def test_worker_and_replay_survive_a_broker_outage(tmp_path, energy_model, s3_store):
    res = broker_outage(tmp_path, energy_model, outage_s=10.0, s3=s3_store)
    print({k: v for k, v in res.items() if not k.startswith("metrics")})
    assert res["storage"] == "s3"
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
    # the restarted broker still holds the group's offsets, and the worker resumes from them
    before, restarted = res["committed_before"], res["committed_after_restart"]
    assert before and set(restarted) == set(before), (before, restarted)
    assert all(restarted[p] >= before[p] for p in before), (before, restarted)
    assert not res["log_reread"], res["log_reread"]
    assert res["windows_rescored"] < res["windows_before"], res["windows_rescored"]
    # every send was acknowledged (during the outage they wait in the producer), none is lost
    assert not res["replay_undelivered"], res["replay_undelivered"]
    assert res["windows_lost"] == 0, res["lost_window_starts_s"]
    assert res["windows_scored"] == res["windows_expected"]
