"""Per-process services and the per-request context every resolver receives as `info.context`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Connection, Engine, FromClause, and_, true

from server import db, pg_notify, run_scope
from server.errors import ForbiddenError
from server.events import QueueEvents
from server.limits import limit_error
from server.settings import ServerSettings

# Ordered: each may do everything the ones before it may, except that FLOW_RUN is also limited to its run.
SCOPES = ("FLOW_RUN", "RUNNER", "USER", "ADMIN")


@dataclass
class Services:
    """Shared by all requests of one server process.

    `instance_id` is this process's random id among the replicas of one database (lease holder, sender of
    its notifications). On PostgreSQL every `events.notify()` also reaches the other replicas (pg_notify);
    the thread that listens for theirs is started by `server.serve` only, so building Services starts none.
    """

    settings: ServerSettings
    engine: Engine
    events: QueueEvents = field(default_factory=QueueEvents)
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if pg_notify.is_postgres(self.engine):
            self.events.add_publisher(pg_notify.Publisher(self.engine, self.instance_id))


@dataclass
class RequestContext:
    """Identity and database access for one GraphQL request.

    `tenant_id` is set in token mode (every query is then scoped to it) and None with `--auth none`, where the
    API is unscoped like Prefect Server. `scope` is None with `--auth none` (everything allowed).
    `flow_run_id` is set for a FLOW_RUN token: then `server.run_scope` limits every root field and every
    row to that one run.
    """

    services: Services
    tenant_id: str | None = None
    scope: str | None = None
    agent_id: str | None = None
    core_version: str | None = None
    flow_run_id: str | None = None
    share_reads: bool = False
    rows_read: int = 0  # over every list of this request, against `max_rows_per_request`
    _stack: ExitStack = field(default_factory=ExitStack)
    _conn: Connection | None = None

    @property
    def settings(self) -> ServerSettings:
        return self.services.settings

    @property
    def engine(self) -> Engine:
        return self.services.engine

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """Reads of a query operation share one snapshot; a mutation's reads each open their own."""
        if not self.share_reads:
            with db.read_tx(self.engine) as conn:
                yield conn
            return
        if self._conn is None:
            self._conn = self._stack.enter_context(db.read_tx(self.engine))
        yield self._conn

    def write(self) -> AbstractContextManager[Connection]:
        return db.write_tx(self.engine)

    def count_rows(self, rows: int) -> None:
        """Charge a list's rows to this request; past `max_rows_per_request`, the request fails."""
        self.rows_read += rows
        if self.rows_read > self.settings.max_rows_per_request:
            raise limit_error("Rows read by this request", self.rows_read, self.settings.max_rows_per_request,
                              "max_rows_per_request")

    def close(self) -> None:
        self._stack.close()

    def require(self, scope: str, operation: str) -> None:
        """USER may do all RUNNER may, ADMIN all USER may; with --auth none there are no scopes."""
        if self.scope is None or SCOPES.index(self.scope) >= SCOPES.index(scope):
            return
        raise ForbiddenError(
            f"FORBIDDEN: {operation} needs an API token with scope {scope} (this one is {self.scope})."
        )

    def scoped(self, source: FromClause) -> ColumnElement[bool]:
        """The tenant condition for a table (or alias) that has a tenant_id column, and the run's."""
        tenant = (true() if self.tenant_id is None or "tenant_id" not in source.c
                  else source.c.tenant_id == self.tenant_id)
        if self.flow_run_id is None:
            return tenant
        return and_(tenant, run_scope.row_condition(source, self.flow_run_id))

    def tenant_for(self, requested: str | None) -> str | None:
        """The tenant an action works in: the token's, else the one the client named (another: FORBIDDEN)."""
        if self.tenant_id and requested and requested != self.tenant_id:
            raise ForbiddenError("FORBIDDEN: tenant_id is not the tenant of this API token.")
        return self.tenant_id or requested
