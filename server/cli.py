"""`local-agent-server start | token create | tenant create | flow-run create | runs | logs | db upgrade |
db current | seed`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from typing import Any

from loguru import logger
from pydantic import ValidationError

from server.settings import ServerSettings

DISTRIBUTION = "local-agent"
# Top-level modules of pyproject's `server` extra that every command needs (psycopg: PostgreSQL URLs only).
SERVER_EXTRA_MODULES = ("sqlalchemy", "alembic", "graphql", "croniter", "dateutil")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="local-agent-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the GraphQL API")
    start.add_argument("--host", help="bind address (LOCAL_AGENT_SERVER_HOST, default 127.0.0.1)")
    start.add_argument("--port", type=int, help="port (LOCAL_AGENT_SERVER_PORT, default 4200)")
    start.add_argument("--auth", choices=("none", "token"), help="LOCAL_AGENT_SERVER_AUTH, default token")
    start.add_argument("--log-level", help="LOCAL_AGENT_SERVER_LOG_LEVEL, default INFO")
    _database_option(start)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="create a token and print it (only time it is shown)")
    create.add_argument("--scope", choices=("RUNNER", "USER", "ADMIN"), default="RUNNER",
                        help="ADMIN may also create tenants")
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", help="tenant slug (default: the first tenant)")
    _database_option(create)

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="tenant_command", required=True)
    new_tenant = tenant.add_parser("create", help="create a tenant and print its id")
    new_tenant.add_argument("--name", required=True)
    new_tenant.add_argument("--slug", required=True)
    _database_option(new_tenant)

    runs = sub.add_parser("flow-run", help="flow runs").add_subparsers(dest="run_command", required=True)
    run = runs.add_parser("create", help="create a flow run; prints its id (stdout) and its page in the web "
                                         "UI (stderr, at LOCAL_AGENT_SERVER_PUBLIC_URL)")
    flow = run.add_mutually_exclusive_group(required=True)
    flow.add_argument("--flow-id")
    flow.add_argument("--flow", metavar="NAME", help="the newest version of the flow with this name")
    run.add_argument("--parameters", help="JSON object")
    run.add_argument("--labels", nargs="*")
    run.add_argument("--name")
    _database_option(run)

    _lookup_parsers(sub)

    schema = sub.add_parser("db", help="the database schema").add_subparsers(dest="db_command", required=True)
    _database_option(schema.add_parser("upgrade", help="migrate to this version's schema"))
    _database_option(schema.add_parser("current", help="print the database's schema revision"))

    seed = sub.add_parser("seed", help="bulk-insert flow runs (benchmarks)")
    seed.add_argument("--runs", type=int, required=True)
    seed.add_argument("--due", type=int, default=50, help="how many of them are Scheduled and due")
    _database_option(seed)
    return parser


def _lookup_parsers(sub: Any) -> None:
    """States and levels are checked after parsing (`_checked_lookup`): their names live in modules that need
    the server extra, and `--help` must work without it."""
    runs = sub.add_parser("runs", help="list flow runs, newest scheduled start first (upcoming ones too)")
    runs.add_argument("--state", nargs="+", action="extend", default=[],
                      metavar="STATE", help="only runs in these states (e.g. Running Failed)")
    runs.add_argument("--flow", metavar="NAME", help="only runs of the flow with this name (any version)")
    runs.add_argument("--label", action="append", default=[], metavar="L",
                      help="only runs carrying this label (repeat: all of them)")
    runs.add_argument("--limit", type=_positive, default=20, metavar="N", help="at most N runs (default 20)")
    runs.add_argument("--upcoming", type=_not_negative, default=3, metavar="N",
                      help="of them, at most N runs not due yet, the soonest (default 3; without --state)")
    runs.add_argument("--json", action="store_true", help="a JSON array instead of the table")
    _database_option(runs)
    runs.set_defaults(subparser=runs)

    logs = sub.add_parser("logs", help="print a flow run's logs in time order")
    logs.add_argument("run_id", metavar="RUN_ID")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines until the run is finished and quiet for 2 s (or Ctrl-C)")
    logs.add_argument("--level", metavar="LEVEL",
                      help="only this level and above (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    _database_option(logs)
    logs.set_defaults(subparser=logs)


def _not_negative(text: str) -> int:
    return 0 if text.strip() == "0" else _positive(text)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (LOCAL_AGENT_SERVER_DATABASE_URL)")


def _settings(args: argparse.Namespace) -> ServerSettings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "auth", "log_level", "database_url"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return ServerSettings(**overrides)


def configure_logging(level: str) -> None:
    logger.remove()
    # diagnose=False: tracebacks must not print local variables (request headers may hold tokens).
    logger.add(sys.stderr, level=level.upper(), diagnose=False, backtrace=False,
               format="{time:YYYY-MM-DD HH:mm:ss.SSS} - server - {level} - {message}")


def missing_server_extra(database_url: str | None = None) -> str | None:
    """The first module of the `server` extra that cannot be imported (a plain `pip install .`), or None."""
    needed = list(SERVER_EXTRA_MODULES)
    if (database_url or "").startswith("postgresql"):
        needed.append("psycopg")
    for module in needed:
        try:
            if find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        configure_logging(settings.log_level)
    except (ValidationError, ValueError) as exc:
        print(f"local-agent-server: invalid configuration: {exc}", file=sys.stderr)
        return 2
    missing = missing_server_extra(settings.database_url)
    if missing is not None:
        print(f"local-agent-server: the server's dependencies are not installed (no module {missing!r}): "
              f"pip install '{DISTRIBUTION}[server]'", file=sys.stderr)
        return 2
    if args.command in ("runs", "logs"):
        _checked_lookup(args)
    from sqlalchemy.exc import ArgumentError

    from server.migrate import MigrationError

    try:
        return _dispatch(args, settings)
    except (ValueError, MigrationError) as exc:
        print(f"local-agent-server: {exc}", file=sys.stderr)
        return 1
    except ArgumentError:  # its text repeats the URL, password included
        print("local-agent-server: the database URL cannot be parsed (expected e.g. sqlite:////path/to.db or "
              "postgresql+psycopg://user:password@host:5432/db)", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, settings: ServerSettings) -> int:
    from server.serve import open_services, serve

    if args.command == "start":
        try:
            asyncio.run(serve(settings))
        except OSError as exc:
            logger.error("cannot listen on {}:{}: {}", settings.host, settings.port, exc)
            return 1
        return 0
    if args.command == "db":
        print(_schema(args.db_command, settings.database_url))
        return 0
    if args.command in ("runs", "logs"):
        return _look_up(args, settings)
    services = open_services(settings)
    if args.command == "token":
        from server.auth import create_token

        print(create_token(services.engine, args.scope, args.name, args.tenant))
    elif args.command == "tenant":
        from server.auth import create_tenant

        print(create_tenant(services.engine, args.name, args.slug))
    elif args.command == "flow-run":
        run_id = _create_run(services, args)
        print(run_id)
        print(f"{settings.ui_url}#/runs/{run_id}", file=sys.stderr)
    elif args.command == "seed":
        from server.seed import seed_flow_runs

        print(json.dumps(seed_flow_runs(services.engine, args.runs, due=args.due)))
    return 0


def _schema(command: str, database_url: str) -> str:
    """`db upgrade` prints the revision reached; `db current` the database's revision ("(head)" if newest)."""
    from server import db, migrate

    engine = db.create_db_engine(database_url, pool_size=1)
    try:
        if command == "upgrade":
            return migrate.upgrade(engine)
        revision = migrate.current(engine)
    finally:
        engine.dispose()
    if revision is None:
        return "none (not migrated yet: `local-agent-server db upgrade` or `start` migrates it)"
    return f"{revision} (head)" if revision == migrate.head() else revision


def _create_run(services: Any, args: argparse.Namespace) -> str:
    from server.context import RequestContext
    from server.errors import ApiError
    from server.resolvers.runs import create_flow_run

    flow_id = args.flow_id or _newest_flow(services.engine, args.flow)
    run_input: dict[str, Any] = {"flow_id": flow_id, "flow_run_name": args.name}
    if args.parameters:
        run_input["parameters"] = json.loads(args.parameters)
    if args.labels is not None:
        run_input["labels"] = args.labels
    try:
        return create_flow_run(RequestContext(services), run_input)
    except ApiError as exc:
        raise ValueError(exc.message) from exc


def _newest_flow(engine: Any, name: str) -> str:
    """The id of the newest registered, unarchived version of the flow `name` (as `prefect run --name` picks
    it); two flows of that name (other projects or tenants) need --flow-id."""
    from sqlalchemy import select

    from server import db

    flow = db.flow
    with db.read_tx(engine) as conn:
        found = conn.execute(select(flow.c.id, flow.c.flow_group_id).where(
            flow.c.name == name, flow.c.archived.is_(False), flow.c.ready.is_(True))
            .order_by(flow.c.version.desc())).all()
    if not found:
        raise ValueError(f"no flow named {name!r} (registered, unarchived) on this server")
    if len({group for _, group in found}) > 1:
        raise ValueError(f"{len(found)} flows are named {name!r} (other projects or tenants): use --flow-id "
                         f"({', '.join(str(flow_id) for flow_id, _ in found[:5])})")
    return str(found[0][0])


def _checked_lookup(args: argparse.Namespace) -> None:
    """Canonical state and level names, or the subcommand's usage and exit 2 (as argparse's own checks)."""
    from server import lookups

    try:
        if args.command == "runs":
            args.state = [lookups.state_name(state) for state in args.state]
        elif args.level is not None:
            args.level = lookups.level_name(args.level)
    except ValueError as exc:
        args.subparser.error(str(exc))


def _look_up(args: argparse.Namespace, settings: ServerSettings) -> int:
    """`runs` and `logs`: read-only, on the database as it is (no migration, no default tenant)."""
    from sqlalchemy.exc import DBAPIError

    from server import db, lookups

    engine = lookups.open_reader(settings.database_url, settings.sqlite_busy_timeout_ms)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    try:
        if args.command == "runs":
            query = lookups.RunQuery(states=args.state, flow=args.flow, labels=args.label, limit=args.limit,
                                     upcoming=args.upcoming)
            now = db.utcnow()
            rows = lookups.list_runs(engine, query, now)
            print(lookups.runs_json(rows, now) if args.json else lookups.runs_table(rows, now, colour))
        else:
            follower = lookups.LogFollower(engine, args.run_id, sys.stdout, lookups.levels_from(args.level),
                                           colour)
            follower.run(args.follow)
    except KeyboardInterrupt:  # Ctrl-C ends --follow: the normal way out, no traceback
        pass
    except DBAPIError as exc:
        detail = str(exc.orig or exc).strip().splitlines()[0]
        raise ValueError(f"database {db.shown_url(settings.database_url)}: {detail}") from exc
    except BrokenPipeError:  # `| head`: the reader has gone
        sys.stderr.close()
    finally:
        engine.dispose()
    return 0
