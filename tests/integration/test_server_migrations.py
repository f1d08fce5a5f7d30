"""The current server (a real subprocess) on databases it did not create: the first release's, and one fresh
database that three replicas start on at the same moment (SQLite file, PostgreSQL)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.support import api
from tests.support.server_fixtures import REPO_ROOT, ServerHandle, free_port, start_server

DATA = REPO_ROOT / "tests" / "data"
HEAD = "0007"
RUN_QUERY = """query($id: uuid!) { flow_run_by_pk(id: $id) {
  id name flow_id state version labels parameters serialized_state } }"""


@pytest.fixture
def first_release(tmp_path: Path) -> Iterator[tuple[ServerHandle, dict[str, Any]]]:
    shutil.copy(DATA / "first-release.db", tmp_path / "first-release.db")
    manifest = json.loads((DATA / "first-release.json").read_text())
    # No zombie sweep: the file's Submitted and Running runs have heartbeats from the day it was made, and
    # this test is about what the upgrade keeps, not about what Lazarus does with old runs later.
    handle = start_server(tmp_path, auth="token", database_url=f"sqlite:///{tmp_path / 'first-release.db'}",
                          env={"LOCAL_AGENT_SERVER_ZOMBIES_ENABLED": "false"})
    yield handle, manifest
    handle.stop()


def schema_and_revision(url: str) -> tuple[list[Any], list[Any]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        schema = list(conn.execute(text("SELECT type, name, sql FROM sqlite_master ORDER BY name")).all())
        revision = list(conn.execute(text("SELECT version_num FROM alembic_version")).all())
    engine.dispose()
    return schema, revision


def test_the_first_release_database_keeps_every_run_log_and_token(
        first_release: tuple[ServerHandle, dict[str, Any]]) -> None:
    server, manifest = first_release
    runner, user = manifest["runner_token"], manifest["user_token"]
    for token, scope in ((runner, "RUNNER"), (user, "USER")):
        info = api.call(server, "query { auth_info { api_token_scope tenant_id } }", token=token)["auth_info"]
        assert info == {"api_token_scope": scope, "tenant_id": manifest["tenant_id"]}
    for expected in manifest["runs"]:
        run = api.call(server, RUN_QUERY, {"id": expected["id"]}, runner)["flow_run_by_pk"]
        assert run == {k: v for k, v in expected.items() if k != "logs"}
        logs = api.run_logs(server, expected["id"], runner)
        assert [{k: v for k, v in log.items() if k != "flow_run_id"} for log in logs] == expected["logs"]
    assert sum(len(run["logs"]) for run in manifest["runs"]) == 4
    # The release's runs still work: the queue serves the Scheduled one, a retried key finds its run.
    scheduled = next(run for run in manifest["runs"] if run["state"] == "Scheduled")
    assert api.queue(server, manifest["tenant_id"], ["first"], token=runner) == [scheduled["id"]]
    again = api.create_flow_run(server, manifest["flow_id"], token=user, idempotency_key="key-scheduled")
    assert again == scheduled["id"]
    current = server.cli("db", "current")
    assert (current.returncode, current.stdout) == (0, f"{HEAD} (head)\n")


def test_a_second_start_on_the_upgraded_database_changes_nothing(
        first_release: tuple[ServerHandle, dict[str, Any]]) -> None:
    server, manifest = first_release
    server.stop()
    before = schema_and_revision(server.database_url)
    assert before[1] == [(HEAD,)] and "schema_version" not in {row.name for row in before[0]}
    server.start()
    run = api.flow_run(server, manifest["runs"][0]["id"], manifest["runner_token"])
    assert run["state"] == manifest["runs"][0]["state"]
    server.stop()
    assert schema_and_revision(server.database_url) == before
    upgrade = server.cli("db", "upgrade")
    assert (upgrade.returncode, upgrade.stdout) == (0, f"{HEAD}\n")


def start_together(tmp_path: Path, database_url: str, replicas: int = 3) -> list[ServerHandle]:
    """`replicas` server processes launched at the same moment on one database; each must answer."""
    handles = [ServerHandle(workdir=tmp_path, auth="none", host="127.0.0.1", port=free_port(),
                            database_url=database_url) for _ in range(replicas)]
    barrier = threading.Barrier(replicas)
    errors: list[BaseException] = []

    def start(handle: ServerHandle) -> None:
        barrier.wait()
        try:
            handle.start()
        except BaseException as exc:  # reported below, with the server's log
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(handle,)) for handle in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for handle in handles:
            handle.stop()
        raise errors[0]
    return handles


def check_replicas(handles: list[ServerHandle], database_url: str) -> None:
    try:
        for handle in handles:
            assert handle.graphql("query { hello }")["data"] == {"hello": "👋"}
        tenants = {handle.tenant_id() for handle in handles}
        assert len(tenants) == 1
        engine = create_engine(database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
            assert conn.execute(text("SELECT count(*) FROM tenant")).scalar() == 1
        engine.dispose()
    finally:
        for handle in handles:
            handle.stop()


def test_three_replicas_start_together_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    check_replicas(start_together(tmp_path, url), url)


@pytest.mark.postgres
def test_three_replicas_start_together_on_a_fresh_postgres_database(tmp_path: Path,
                                                                    postgres_url: str) -> None:
    check_replicas(start_together(tmp_path, postgres_url), postgres_url)
