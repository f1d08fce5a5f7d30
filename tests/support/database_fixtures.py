"""The server's store for tests: SQLite or a real PostgreSQL database (registered in tests/conftest.py).

`db_backend` is "sqlite" unless tests/conftest.py parametrizes it (server test modules run on both). Every
database a test gets comes from a `Databases` of that backend: a fresh SQLite file, or on PostgreSQL a
`CREATE DATABASE ... TEMPLATE` copy of one database the server's own start-up (`server.serve.open_services`:
migrations + default tenant) prepared once per session, so a test database costs a file copy, not a
migration. Each database is dropped at teardown.

Fixtures: `database_url` (one database), `database_url_factory` (several: several servers or several stores
in one test), `module_database_url_factory` (for module-scoped servers), `empty_database_url` (a database
nothing has touched: for tests of the migration path itself).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresCluster

BACKENDS = ("sqlite", "postgres")
TEMPLATE_PREFIX = "local_agent_template_"


class Databases:
    """Hands out fresh databases of one backend and drops every one of them at `close()`."""

    def __init__(self, backend: str, workdir: Path, cluster: PostgresCluster | None = None,
                 template: str | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown database backend {backend!r} (one of {BACKENDS})")
        self.backend, self.workdir = backend, workdir
        self._cluster, self._template = cluster, template
        self._created: list[str] = []

    def new(self, *, migrated: bool = True) -> str:
        """A fresh database URL: migrated (from the template) unless `migrated=False`."""
        if self.backend == "sqlite":
            self.workdir.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{self.workdir / f'db-{uuid.uuid4().hex[:8]}.sqlite'}"
        assert self._cluster is not None
        url = self._cluster.create_database(template=self._template if migrated else None)
        self._created.append(url)
        return url

    def close(self) -> None:
        if self._cluster is not None:
            for url in self._created:
                self._cluster.drop_database(url)
        self._created.clear()


def build_template(cluster: PostgresCluster) -> str:
    """One database set up by the server's own start-up path (its migrations, whatever they are at the time,
    and the default tenant); later databases are copies of it. Returns its name."""
    from server.serve import open_services
    from server.settings import ServerSettings

    name = f"{TEMPLATE_PREFIX}{uuid.uuid4().hex[:12]}"  # unique: sessions may share an external server
    url = cluster.create_database(name)
    services = open_services(ServerSettings(database_url=url, zombies_enabled=False))
    services.events.close()
    services.engine.dispose()  # CREATE DATABASE ... TEMPLATE needs the template without sessions
    # No connections from now on, autovacuum's included: CREATE DATABASE ... TEMPLATE fails ("being accessed
    # by other users") after waiting for any session on its template.
    cluster.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
    return name


def drop_template(cluster: PostgresCluster, name: str) -> None:
    cluster.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false')
    cluster.drop_database(cluster.url_for(name))


@pytest.fixture(scope="session")
def db_backend(request: pytest.FixtureRequest) -> str:
    """"sqlite" or "postgres"; parametrized per module by tests/conftest.py (scope overridden there)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_template(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The name of the migrated template database (built on first use, dropped at the end)."""
    name = build_template(postgres_cluster)
    yield name
    drop_template(postgres_cluster, name)


def _databases(request: pytest.FixtureRequest, backend: str, workdir: Path) -> Databases:
    if backend == "sqlite":
        return Databases(backend, workdir)
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    template: str = request.getfixturevalue("postgres_template")
    return Databases(backend, workdir, cluster, template)


@pytest.fixture
def database_url_factory(
    request: pytest.FixtureRequest, db_backend: str, tmp_path: Path
) -> Iterator[Callable[..., str]]:
    """`factory(migrated=True)` -> a fresh database URL of this test's backend; all dropped after the test."""
    databases = _databases(request, db_backend, tmp_path / "databases")
    yield databases.new
    databases.close()


@pytest.fixture(scope="module")
def module_database_url_factory(
    request: pytest.FixtureRequest, db_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., str]]:
    """The same for module-scoped fixtures (one server for a whole module)."""
    databases = _databases(request, db_backend, tmp_path_factory.mktemp("databases"))
    yield databases.new
    databases.close()


@pytest.fixture
def database_url(database_url_factory: Callable[..., str]) -> str:
    """A fresh, migrated database of this test's backend (what `inproc_server` and `server` use)."""
    return database_url_factory()


@pytest.fixture
def empty_database_url(database_url_factory: Callable[..., str]) -> str:
    """A fresh database no migration has touched (SQLite: a file that does not exist yet)."""
    return database_url_factory(migrated=False)
