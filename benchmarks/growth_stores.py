"""Where `benchmarks growth` keeps its databases: a SQLite file per size, or a database per size in a
throwaway PostgreSQL cluster. Each says how big a database is on disk and how it gives deleted space back."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine


class StoreKind(Protocol):
    name: str
    vacuum_command: str

    def new_url(self, runs: int) -> str: ...

    def size(self, engine: Engine, url: str) -> dict[str, Any]: ...

    def vacuum(self, engine: Engine, url: str) -> None: ...

    def drop(self, url: str) -> None: ...


class SqliteStore:
    """One file per size; its size is the file's after a WAL checkpoint, free pages counted apart."""

    name = "sqlite"
    vacuum_command = "VACUUM"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir

    def new_url(self, runs: int) -> str:
        return f"sqlite:///{self.work_dir / f'growth-{runs}.db'}"

    @staticmethod
    def path(url: str) -> Path:
        return Path(url.removeprefix("sqlite:///"))

    def size(self, engine: Engine, url: str) -> dict[str, Any]:
        with engine.connect() as conn:
            for _ in range(50):  # a reader still on an older snapshot makes the checkpoint stop short
                busy, logged, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                if not busy and logged == copied:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"the WAL checkpoint of {url} did not complete: the size would be wrong")
            page = int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 0)
            free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
        return {"bytes": self.path(url).stat().st_size, "free_bytes": free * page}

    def vacuum(self, engine: Engine, url: str) -> None:
        """On its own autocommit connection: the server's engine always opens a transaction."""
        conn = sqlite3.connect(self.path(url), isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("VACUUM")
        finally:
            conn.close()

    def drop(self, url: str) -> None:
        for stale in self.path(url).parent.glob(f"{self.path(url).name}*"):
            stale.unlink()


class PostgresStore:
    """A fresh database per size in one cluster; its size is `pg_database_size` (dead rows included until a
    vacuum), and only `VACUUM FULL` (an exclusive lock: a maintenance window) gives space back to the disk."""

    name = "postgres"
    vacuum_command = "VACUUM FULL"

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def new_url(self, runs: int) -> str:
        return str(self.cluster.create_database())

    def size(self, engine: Engine, url: str) -> dict[str, Any]:
        with engine.connect() as conn:
            size = int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0)
            dead = conn.exec_driver_sql("SELECT sum(n_dead_tup) FROM pg_stat_user_tables").scalar()
        return {"bytes": size, "free_bytes": None, "dead_rows": int(dead or 0)}

    def vacuum(self, engine: Engine, url: str) -> None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM FULL")

    def drop(self, url: str) -> None:
        self.cluster.drop_database(url)
