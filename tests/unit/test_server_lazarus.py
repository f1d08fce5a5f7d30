"""Zombie runs (Lazarus) and the server settings, in process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from server import db, lazarus
from server.settings import ServerSettings
from tests.support import api
from tests.support.server_fixtures import InProcessServer


@pytest.fixture
def zombie_server(tmp_path: Path, database_url: str) -> Iterator[InProcessServer]:
    handle = InProcessServer(tmp_path, zombie_timeout_s=60, zombie_max_reschedules=2,
                             database_url=database_url)
    yield handle
    handle.close()


def age_heartbeat(server: InProcessServer, run_id: str, seconds: float = 120) -> None:
    with db.write_tx(server.services.engine) as conn:
        conn.execute(
            update(db.flow_run)
            .where(db.flow_run.c.id == run_id)
            .values(heartbeat=db.utcnow() - timedelta(seconds=seconds))
        )


def test_zombies_are_rescheduled_then_failed(zombie_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(zombie_server, name="f", image_name="i", image_tag="1")
    run_id = api.create_flow_run(zombie_server, flow_id)
    for attempt in (1, 2):
        run = api.flow_run(zombie_server, run_id)
        api.set_flow_run_state(zombie_server, run_id, {"type": "Submitted"}, run["version"])
        assert lazarus.sweep(zombie_server.services) == 0  # fresh heartbeat: alive
        age_heartbeat(zombie_server, run_id)
        assert lazarus.sweep(zombie_server.services) == 1
        run = api.flow_run(zombie_server, run_id)
        assert run["state"] == "Scheduled"
        assert (
            run["serialized_state"]["message"]
            == f"Rescheduled by a Lazarus process. This is attempt {attempt}."
        )
        assert run["serialized_state"]["start_time"]
    api.set_flow_run_state(zombie_server, run_id, {"type": "Running"})
    age_heartbeat(zombie_server, run_id)
    assert lazarus.sweep(zombie_server.services) == 1
    run = api.flow_run(zombie_server, run_id)
    assert run["state"] == "Failed" and "2 times" in run["serialized_state"]["message"]
    logs = [(log["name"], log["level"]) for log in api.run_logs(zombie_server, run_id)]
    assert logs == [("lazarus", "INFO"), ("lazarus", "INFO"), ("lazarus", "ERROR")]
    assert lazarus.sweep(zombie_server.services) == 0


def test_live_and_finished_runs_are_left_alone(zombie_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(zombie_server, name="f", image_name="i", image_tag="1")
    done, alive = api.create_flow_run(zombie_server, flow_id), api.create_flow_run(zombie_server, flow_id)
    api.set_flow_run_state(zombie_server, done, {"type": "Success"})
    api.set_flow_run_state(zombie_server, alive, {"type": "Running"})
    age_heartbeat(zombie_server, done)
    age_heartbeat(zombie_server, alive, seconds=30)
    assert lazarus.sweep(zombie_server.services) == 0


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_AGENT_SERVER_PORT", "4999")
    monkeypatch.setenv("LOCAL_AGENT_SERVER_AUTH", "none")
    monkeypatch.setenv("LOCAL_AGENT_SERVER_ZOMBIE_TIMEOUT_S", "5")
    settings = ServerSettings()
    assert (settings.port, settings.auth, settings.zombie_timeout_s) == (4999, "none", 5.0)
    assert settings.database_url.startswith("sqlite:///") and settings.host == "127.0.0.1"
