"""A throwaway PostgreSQL cluster for the benchmarks: the tests' own, so both measure the same server setup.

`tests.support.postgres.start_cluster()` runs initdb and pg_ctl on a free port of 127.0.0.1 in a temporary
directory (fsync off, as the test cluster); `cluster()` removes it all when the benchmark ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.postgres import PostgresCluster, start_cluster


@contextmanager
def cluster() -> Iterator[PostgresCluster]:
    """A private cluster for one benchmark; RuntimeError (with the server's output) if it cannot start."""
    started = start_cluster()
    try:
        yield started
    finally:
        started.close()


def server_version(cluster: PostgresCluster) -> str:
    with cluster.engine.connect() as conn:
        return str(conn.exec_driver_sql("SHOW server_version").scalar())
