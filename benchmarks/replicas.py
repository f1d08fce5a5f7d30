"""Several server processes on one database (replicas), and the schema + tenant a benchmark seeds into.

Each replica is a real `python -m server start` on its own port (`backend.Server`), all on the same database
URL, exactly as an orchestrator would run them behind a load balancer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import backend


def prepare_database(database_url: str) -> str:
    """Bring the schema to head with the server's own migrations; returns the default tenant's id."""
    from server import db
    from server.migrate import upgrade

    engine = db.create_db_engine(database_url)
    try:
        upgrade(engine)
        return db.ensure_default_tenant(engine)
    finally:
        engine.dispose()


@contextmanager
def replicas(database_url: str, count: int, work_dir: Path,
             name: str = "replica") -> Iterator[list[backend.Server]]:
    """`count` server processes on `database_url`, started one after the other, all stopped at the end."""
    started: list[backend.Server] = []
    try:
        for index in range(count):
            log = work_dir / f"{name}-{index}.log"
            started.append(backend.Server(database_url=database_url, log_path=log).start())
        yield started
    finally:
        for server in started:
            server.stop()
