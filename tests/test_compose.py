"""docker-compose.yml parses, uses the official Kafka image in KRaft mode, and runs real commands.

Docker does not run on the test machines, so every command a service runs is checked against
the ecgstream CLI (sub-command exists and its flags parse) or imported as a module.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from ecgstream.cli import build_parser  # noqa: E402

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_kafka_in_kraft_mode(compose):
    services = compose["services"]
    assert {"kafka", "replay", "receiver"} <= set(services)
    workers = [
        s
        for s in services.values()
        if s.get("command", [""])[:1] == ["ecgstream"] and "run" in s["command"]
    ]
    assert len(workers) == 2
    groups = {w["command"][w["command"].index("--group") + 1] for w in workers}
    assert len(groups) == 1  # one consumer group
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert not any("zookeeper" in str(v).lower() for v in env.values())


def test_every_command_exists_in_the_cli(compose):
    parser = build_parser()
    for name, service in compose["services"].items():
        cmd = service.get("command")
        if cmd is None:
            continue
        if cmd[0] == "ecgstream":
            args = parser.parse_args(cmd[1:])  # exits (fails) on an unknown sub-command or flag
            assert callable(args.func), name
        elif cmd[:2] == ["python", "-m"]:
            module = importlib.import_module(cmd[2])
            module.main.__call__  # noqa: B018  (has a main())
            with pytest.raises(SystemExit) as exc:
                module.main(["--help"])
            assert exc.value.code == 0
        else:
            pytest.fail(f"service {name} runs {cmd[0]!r}, which is not part of ecgstream")


def test_workers_reach_the_receiver_and_the_broker(compose):
    services = compose["services"]
    for name, s in services.items():
        cmd = s.get("command", [])
        if "--webhook" in cmd:
            url = cmd[cmd.index("--webhook") + 1]
            host, port = url.split("//")[1].split("/")[0].split(":")
            assert host in services and port in services[host]["command"], name
    env = compose["x-ecgstream"]["environment"]
    assert env["ECGSTREAM_RUN__BOOTSTRAP"].split(":")[0] in services


def test_every_long_running_service_has_a_health_check(compose):
    """Kafka, the receiver and both workers report their health; the worker's is its /healthz."""
    services = compose["services"]
    for name, s in services.items():
        if name == "replay":
            continue  # a publisher: nothing listens
        test = s.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
        if "run" in s.get("command", []):
            cmd = s["command"]
            port = cmd[cmd.index("--metrics-port") + 1]
            assert f"http://localhost:{port}/healthz" in " ".join(test), name
    receiver = " ".join(services["receiver"]["healthcheck"]["test"])
    port = services["receiver"]["command"][services["receiver"]["command"].index("--port") + 1]
    assert f"'localhost', {port}" in receiver


def test_the_health_check_commands_run(compose):
    """The receiver's and the workers' checks are Python one-liners: they compile (a typo in them
    would leave a healthy service unhealthy forever)."""
    for name, s in compose["services"].items():
        test = s.get("healthcheck", {}).get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")


def test_kafka_keeps_its_log_on_a_named_volume(compose):
    kafka = compose["services"]["kafka"]
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = dict(v.split(":", 1) for v in kafka["volumes"])
    assert log_dir in mounts.values()
    volume = next(k for k, v in mounts.items() if v == log_dir)
    assert volume in compose["volumes"]
    assert kafka["environment"]["CLUSTER_ID"]  # the same cluster id after a restart
