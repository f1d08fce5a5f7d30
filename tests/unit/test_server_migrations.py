"""The Alembic migrations (`server.migrate`), in process, on SQLite and on a real PostgreSQL.

The tables in `server.db` and the revisions must agree; a database of every earlier release (the first one is
`tests/data/first-release.db`, made by that release's own server) reaches head without losing a row.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from server import db, migrate
from tests.support.server_fixtures import REPO_ROOT

FIRST_RELEASE_DB = REPO_ROOT / "tests" / "data" / "first-release.db"
HEAD = "0007"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database on each backend, through the server's own engine factory."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    created = db.create_db_engine(url, pool_size=2)
    yield created
    created.dispose()


def migrate_to(engine: Engine, revision: str) -> None:
    with db.write_tx(engine) as conn:
        command.upgrade(migrate.alembic_config(conn), revision)


def make_legacy(engine: Engine, version: int) -> None:
    """What the release with `schema_version` = version left: its schema and that table, no Alembic."""
    migrate_to(engine, migrate.LEGACY_REVISIONS[version])
    with db.write_tx(engine) as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied TIMESTAMP)"))
        for step in range(1, version + 1):
            conn.execute(text("INSERT INTO schema_version VALUES (:v, :t)"), {"v": step, "t": db.utcnow()})


def tables(engine: Engine) -> set[str]:
    with db.read_tx(engine) as conn:
        return set(inspect(conn).get_table_names())


# ------------------------------------------------------------------------------------------ schema


def test_head_creates_exactly_the_tables_of_server_db(engine: Engine) -> None:
    assert migrate.upgrade(engine) == HEAD == migrate.head()
    with db.read_tx(engine) as conn:
        differences = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert differences == []


def test_the_comparison_sees_a_missing_index(engine: Engine) -> None:
    """The test above can fail: a database one revision short differs from the tables."""
    migrate_to(engine, "0003")
    with db.read_tx(engine) as conn:
        differences = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert {"add_table", "add_index", "remove_index"} <= {diff[0] for diff in differences}


def test_revision_0001_is_the_first_release_schema(tmp_path: Path) -> None:
    """Same CREATE statements, byte for byte, as the first release's `create_all` wrote into its file."""
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate_to(engine, "0001")
    engine.dispose()
    query = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name NOT LIKE '%_version'"
    with sqlite3.connect(tmp_path / "m.db") as ours, sqlite3.connect(FIRST_RELEASE_DB) as release:
        assert set(ours.execute(query)) == set(release.execute(query))
    ours.close()
    release.close()


# ------------------------------------------------------------------------------------------ upgrade


def test_a_fresh_database_is_created_once_and_a_second_upgrade_does_nothing(engine: Engine) -> None:
    assert migrate.current(engine) is None
    assert migrate.upgrade(engine) == HEAD
    first = db.ensure_default_tenant(engine)
    assert migrate.upgrade(engine) == HEAD
    assert db.ensure_default_tenant(engine) == first
    assert migrate.current(engine) == HEAD
    with db.read_tx(engine) as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    assert "schema_version" not in tables(engine)


def test_sqlite_keeps_wal_mode(tmp_path: Path) -> None:
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(engine)
    with db.read_tx(engine) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_legacy_database_is_stamped_at_its_version_and_upgraded(engine: Engine, version: int) -> None:
    make_legacy(engine, version)
    assert migrate.current(engine) is None
    assert migrate.upgrade(engine) == HEAD
    assert "schema_version" not in tables(engine) and "lease" in tables(engine)
    with db.read_tx(engine) as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("api_token")}
        flow_columns = {c["name"] for c in inspect(conn).get_columns("flow")}
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
    assert {"flow_run_id", "expires_at"} <= columns and "ready" in flow_columns


def test_the_first_release_file_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    copy = tmp_path / "first.db"
    shutil.copy(FIRST_RELEASE_DB, copy)
    engine = db.create_db_engine(f"sqlite:///{copy}")
    with db.read_tx(engine) as conn:
        before = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("flow_run", "log")}
    assert migrate.upgrade(engine) == HEAD
    with db.read_tx(engine) as conn:
        after = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("flow_run", "log")}
        ready = conn.execute(text("SELECT ready FROM flow")).scalars().all()
    assert before == after == {"flow_run": 5, "log": 4}
    assert ready == [True]  # the server default: the release's flow stays visible
    engine.dispose()


def test_duplicate_idempotency_keys_keep_the_earliest_run_and_lose_no_run(engine: Engine) -> None:
    migrate_to(engine, "0003")
    tenant = db.ensure_default_tenant(engine)
    now = db.utcnow()
    with db.write_tx(engine) as conn:
        conn.execute(db.project.insert().values(id="p", tenant_id=tenant, name="p", created=now))
        conn.execute(db.flow_group.insert().values(id="g", tenant_id=tenant, created=now))
        conn.execute(db.flow.insert().values(id="f", tenant_id=tenant, project_id="p", flow_group_id="g",
                                             version_group_id="v", name="f", version=1, created=now))
        for run_id, key, age in (("late", "k", 1), ("first", "k", 3), ("middle", "k", 2), ("other", "o", 9),
                                 ("none1", None, 1), ("none2", None, 1),
                                 ("empty1", "", 1), ("empty2", "", 2)):
            conn.execute(db.flow_run.insert().values(
                id=run_id, tenant_id=tenant, flow_id="f", scheduled_start_time=now, labels=[],
                idempotency_key=key, created=now - timedelta(minutes=age)))
    assert migrate.upgrade(engine) == HEAD
    with db.read_tx(engine) as conn:
        rows = conn.execute(text("SELECT id, idempotency_key FROM flow_run")).all()
    keys = {row.id: row.idempotency_key for row in rows}
    assert keys == {"first": "k", "middle": None, "late": None, "other": "o", "none1": None, "none2": None,
                    "empty1": None, "empty2": None}


# ------------------------------------------------------------------------------------------ refusals


def test_a_database_newer_than_this_code_is_refused(engine: Engine) -> None:
    migrate.upgrade(engine)
    with db.write_tx(engine) as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(migrate.MigrationError, match="revision 0099, which this server does not know"):
        migrate.upgrade(engine)
    assert migrate.current(engine) == "0099"


def test_an_unknown_legacy_version_is_refused(engine: Engine) -> None:
    make_legacy(engine, 3)
    with db.write_tx(engine) as conn:
        conn.execute(text("INSERT INTO schema_version VALUES (7, :t)"), {"t": db.utcnow()})
    with pytest.raises(migrate.MigrationError, match="schema_version is 7"):
        migrate.upgrade(engine)


def test_a_failed_step_changes_nothing_and_releases_the_lock(engine: Engine) -> None:
    """0004 meets a table in its way: the whole upgrade rolls back and the next replica may try."""
    migrate_to(engine, "0003")
    with db.write_tx(engine) as conn:
        conn.execute(text("CREATE TABLE lease (name VARCHAR(64) PRIMARY KEY)"))
    with pytest.raises(migrate.MigrationError, match="lease"):
        migrate.upgrade(engine)
    assert migrate.current(engine) == "0003"
    with db.read_tx(engine) as conn:
        indexes = {index["name"] for index in inspect(conn).get_indexes("flow_run")}
    assert "ix_flow_run_idempotency" in indexes and "uq_flow_run_idempotency" not in indexes
    if engine.dialect.name == "postgresql":
        with engine.connect() as other:
            key = {"key": migrate.ADVISORY_LOCK_KEY}
            assert other.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar() is True
            other.execute(text("SELECT pg_advisory_unlock(:key)"), key)


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    migrate.upgrade(engine)
    with db.write_tx(engine) as conn:
        command.downgrade(migrate.alembic_config(conn), "base")
    assert tables(engine) <= {"alembic_version"}
    assert migrate.upgrade(engine) == HEAD


# ------------------------------------------------------------------------------------------ CLI


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_upgrade_and_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert cli("db", "current", "--database-url", url).stdout.startswith("none")
    upgraded = cli("db", "upgrade", "--database-url", url)
    assert (upgraded.returncode, upgraded.stdout) == (0, f"{HEAD}\n")
    current = cli("db", "current", "--database-url", url)
    assert (current.returncode, current.stdout) == (0, f"{HEAD} (head)\n")


def test_cli_unreachable_database_is_one_line_without_the_password() -> None:
    from tests.support.server_fixtures import free_port

    url = f"postgresql+psycopg://agent:s3cret-pw@127.0.0.1:{free_port()}/nothing"
    for command_name in ("upgrade", "current"):
        done = cli("db", command_name, "--database-url", url)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "s3cret-pw" not in done.stderr and "agent:***@127.0.0.1" in done.stderr
        assert "Connection refused" in done.stderr
    in_query = f"postgresql+psycopg://agent@127.0.0.1:{free_port()}/nothing?password=s3cret-pw"
    done = cli("db", "upgrade", "--database-url", in_query)
    assert done.returncode == 1 and "s3cret-pw" not in done.stderr and "password=hidden" in done.stderr


def test_a_malformed_database_url_is_one_line_without_the_url() -> None:
    done = cli("db", "upgrade", "--database-url", "not a url s3cret-pw")
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr


def test_cli_start_refuses_a_newer_database_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    assert cli("db", "upgrade", "--database-url", url).returncode == 0
    with sqlite3.connect(tmp_path / "newer.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    conn.close()
    for args in (("start", "--port", "0"), ("db", "upgrade")):
        done = cli(*args, "--database-url", url)
        assert done.returncode == 1
        assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
        assert "0099, which this server does not know" in done.stderr
