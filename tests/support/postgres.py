"""A throwaway PostgreSQL cluster for tests: real Postgres, no mocks (registered in tests/conftest.py).

`postgres_cluster` (session) runs `initdb` in a temporary directory and `pg_ctl start` on a free port of
127.0.0.1 (fsync off: a test cluster never needs to survive a crash), and removes it all at the end. The
binaries come from the distribution's packages (`.ci/run` installs them; Debian keeps them in
/usr/lib/postgresql/<major>/bin, off PATH). initdb refuses to run as root, so as root the cluster runs as the
`postgres` user the package creates. With LOCAL_AGENT_TEST_POSTGRES_URL (an admin URL, e.g. of the official
image run by hand on a developer machine) no cluster is started and that server is used instead.

`postgres_url` (function) is a fresh, empty database on that cluster, dropped after the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.docker_fixtures import docker_required
from tests.support.server_fixtures import free_port

EXTERNAL_URL_ENV = "LOCAL_AGENT_TEST_POSTGRES_URL"
SERVER_OPTIONS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=1000 "
                  "-c listen_addresses=127.0.0.1")


def find_bindir() -> Path | None:
    """Where pg_ctl and initdb are: on PATH, else the newest /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return candidates[-1].parent if candidates else None


class PostgresCluster:
    """One Postgres server; `create_database()` hands out empty databases by URL (psycopg 3 driver).

    A cluster this module started (`start_cluster`) can also be stopped and started again on the same port
    and data directory (`stop`, `start`): what a database outage looks like to the server.
    """

    def __init__(self, admin_url: str, pg_ctl: list[str] | None = None, workdir: Path | None = None) -> None:
        self.admin_url = admin_url
        self._pg_ctl, self._workdir = pg_ctl, workdir
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=2)

    def url_for(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """A new database, empty or a copy of `template` (which must have no open sessions)."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with self.engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        return self.url_for(name)

    def execute(self, statement: str) -> None:
        """One administrative statement (outside a transaction, as CREATE/ALTER DATABASE need)."""
        with self.engine.connect() as conn:
            conn.execute(text(statement))

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self.engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def _control(self, *args: str) -> subprocess.CompletedProcess[str]:
        if self._pg_ctl is None:
            raise RuntimeError("only a cluster started by start_cluster() can be stopped and started")
        return subprocess.run(_as_postgres_user([*self._pg_ctl, *args]), capture_output=True, text=True,
                              timeout=90, check=False)

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session with an admin-shutdown error, `immediate` drops them like a crash.

        The test cluster runs with synchronous_commit off, so before a crash its committed work is flushed
        (what a production server's synchronous commit guarantees anyway)."""
        if mode == "immediate":
            self.execute("CHECKPOINT")
        self.engine.dispose()
        proc = self._control("-m", mode, "stop")
        assert proc.returncode == 0, f"pg_ctl stop failed: {proc.stdout}\n{proc.stderr}"

    def start(self) -> None:
        """Start it again on the same port and data directory."""
        proc = self._control("-o", f"-p {make_url(self.admin_url).port} -k {self._workdir} {SERVER_OPTIONS}",
                             "start")
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{proc.stdout}\n{proc.stderr}\n{self.log()}")

    def log(self) -> str:
        path = self._workdir / "server.log" if self._workdir is not None else None
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def close(self) -> None:
        self.engine.dispose()
        if self._pg_ctl is not None:
            self._control("-m", "immediate", "stop")
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _as_postgres_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_cluster() -> PostgresCluster:
    """initdb + pg_ctl start in a new temporary directory; raises RuntimeError with the server's output."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (no pg_ctl/initdb; apt-get install postgresql)")
    workdir = Path(tempfile.mkdtemp(prefix="local-agent-pg-"))
    data = workdir / "data"
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--no-sync", "--locale=C.UTF-8"]
    proc = subprocess.run(_as_postgres_user(initdb), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{proc.stdout}\n{proc.stderr}")
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "server.log"), "-w", "-t", "60"]
    admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    cluster = PostgresCluster(admin_url, pg_ctl, workdir)
    try:
        cluster.start()
    except RuntimeError:
        cluster.engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return cluster


def _required_or_skip(exc: RuntimeError) -> NoReturn:
    if docker_required():
        pytest.fail(f"PostgreSQL is required (LOCAL_AGENT_REQUIRE_DOCKER=1): {exc}")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's Postgres server; skipped without Postgres, failed instead in CI (see docker_required)."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    try:
        cluster = PostgresCluster(external) if external else start_cluster()
    except RuntimeError as exc:
        _required_or_skip(exc)
    yield cluster
    cluster.close()


@pytest.fixture
def private_postgres_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own, which it may stop and start (the session's one is shared)."""
    try:
        cluster = start_cluster()
    except RuntimeError as exc:
        _required_or_skip(exc)
    yield cluster
    cluster.close()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh empty database (SQLAlchemy URL, psycopg 3), dropped after the test."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)
