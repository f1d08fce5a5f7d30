"""`local-agent-server runs` and `logs` (`server.lookups` through `server.cli.main`) on a real database of
each backend, and the console entry without the `server` extra."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from sqlalchemy import Engine, update
from sqlalchemy.exc import DBAPIError

from server import cli, db, lookups
from server.serve import open_services
from server.settings import ServerSettings
from tests.support.server_fixtures import REPO_ROOT

NOW = db.utcnow().replace(microsecond=0)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Store:
    """A migrated database with one tenant, written directly through `server.db`'s tables."""

    url: str
    engine: Engine
    tenant_id: str
    flows: dict[str, str] = field(default_factory=dict)

    def flow(self, name: str, version: int = 1) -> str:
        ids = {key: db.new_id() for key in ("project", "group", "flow")}
        with db.write_tx(self.engine) as conn:
            conn.execute(db.project.insert().values(id=ids["project"], tenant_id=self.tenant_id,
                                                    name=f"p-{ids['project'][:8]}", created=NOW))
            conn.execute(db.flow_group.insert().values(id=ids["group"], tenant_id=self.tenant_id, name=name,
                                                       created=NOW))
            conn.execute(db.flow.insert().values(
                id=ids["flow"], tenant_id=self.tenant_id, project_id=ids["project"],
                flow_group_id=ids["group"], version_group_id=ids["group"], name=name, version=version,
                created=NOW))
        self.flows[name] = ids["flow"]
        return ids["flow"]

    def agent(self, name: str) -> str:
        agent_id = db.new_id()
        with db.write_tx(self.engine) as conn:
            conn.execute(db.agent.insert().values(id=agent_id, tenant_id=self.tenant_id, name=name,
                                                  type="LocalAgent", labels=[], created=NOW))
        return agent_id

    def run(self, flow: str, name: str, state: str, scheduled: timedelta, *, started: timedelta | None = None,
            ended: timedelta | None = None, labels: list[str] | None = None, agent_id: str | None = None,
            auto: bool = False) -> str:
        run_id = db.new_id()
        with db.write_tx(self.engine) as conn:
            conn.execute(db.flow_run.insert().values(
                id=run_id, tenant_id=self.tenant_id, flow_id=self.flows[flow], name=name, version=1,
                state=state, scheduled_start_time=NOW + scheduled,
                start_time=None if started is None else NOW + started,
                end_time=None if ended is None else NOW + ended, labels=labels or [], agent_id=agent_id,
                auto_scheduled=auto, created=NOW))
        return run_id

    def log(self, run_id: str, message: str, *, at: timedelta, level: str = "INFO",
            name: str = "prefect") -> None:
        with db.write_tx(self.engine) as conn:
            conn.execute(db.log.insert().values(
                id=db.new_id(), tenant_id=self.tenant_id, flow_run_id=run_id, timestamp=NOW + at, name=name,
                level=level, message=message, created=db.utcnow()))

    def set_state(self, run_id: str, state: str) -> None:
        with db.write_tx(self.engine) as conn:
            conn.execute(update(db.flow_run).where(db.flow_run.c.id == run_id).values(state=state))


@pytest.fixture(autouse=True)
def no_stale_log_sink() -> Iterator[None]:
    """`cli.main` logs to its test's sys.stderr (capsys's, closed afterwards): removed after each test."""
    yield
    logger.remove()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """What `start` leaves: the schema at head and the default tenant."""
    services = open_services(ServerSettings(database_url=database_url, zombies_enabled=False))
    services.events.close()
    with db.read_tx(services.engine) as conn:
        tenant_id = conn.execute(db.tenant.select()).first().id  # type: ignore[union-attr]
    yield Store(database_url, services.engine, tenant_id)
    services.engine.dispose()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> list[list[str]]:
    """The rows of the `runs` table, split on the two-space column gaps."""
    return [re.split(r"\s{2,}", line) for line in out.strip().splitlines()]


@pytest.fixture
def history(store: Store) -> dict[str, str]:
    store.flow("etl", version=3)
    store.flow("report")
    agent_id = store.agent("agent-one")
    return {
        "done": store.run("etl", "calm-fox", "Success", timedelta(hours=-3), started=timedelta(hours=-3),
                          ended=timedelta(hours=-3, seconds=90), labels=["prod", "eu"], agent_id=agent_id),
        "failed": store.run("report", "red-owl", "Failed", timedelta(hours=-2), started=timedelta(hours=-2),
                            ended=timedelta(hours=-2, seconds=5), labels=["prod"], agent_id=agent_id),
        "running": store.run("etl", "busy-bee", "Running", timedelta(minutes=-5),
                             started=timedelta(minutes=-4), labels=["eu"], agent_id=agent_id),
        "upcoming": store.run("etl", "next-one", "Scheduled", timedelta(hours=1), auto=True),
    }


def test_runs_lists_the_newest_first_one_aligned_line_each(
    store: Store, history: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "runs", "--database-url", store.url)
    assert (code, err) == (0, "")
    assert "\x1b[" not in out  # not a terminal: no colours
    rows = table(out)
    assert rows[0][:4] == ["ID", "NAME", "FLOW", "STATE"]
    assert [row[0] for row in rows[1:]] == [history[k] for k in ("upcoming", "running", "failed", "done")]
    upcoming, running, failed, done = rows[1:]
    assert upcoming[1:5] == ["next-one (schedule)", "etl (v3)", "Scheduled",
                             (NOW + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")]
    assert done[1:4] == ["calm-fox", "etl (v3)", "Success"]
    assert done[7:] == ["1m 30s", "agent-one", "prod,eu"]
    assert failed[7] == "5.0s" and failed[-1] == "prod"
    # Still going: the time so far, which grows with the time since this module was imported (NOW).
    minutes, hours = re.fullmatch(r"(\d+)m \d\ds", running[7]), re.fullmatch(r"\d+h \d\dm", running[7])
    assert running[6] == "-" and (hours or (minutes and int(minutes[1]) >= 4)), running
    lines = out.splitlines()
    state_at = lines[0].index("STATE")
    assert all(line[state_at - 2:state_at] == "  " and line[state_at] != " " for line in lines)  # aligned


def test_runs_ahead_of_time_never_hide_what_happened(
    store: Store, history: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A scheduler keeps runs created ahead: by default only the soonest few lead the list."""
    store.flow("hourly")
    ahead = [store.run("hourly", f"tick-{hour}", "Scheduled", timedelta(hours=hour), auto=True)
             for hour in range(2, 12)]

    def ids(*args: str) -> list[str]:
        code, out, err = run_cli(capsys, "runs", "--database-url", store.url, *args)
        assert (code, err) == (0, "")
        return [row[0] for row in table(out)[1:]]

    soonest = [history["upcoming"], ahead[0], ahead[1]]  # in 1 h, 2 h, 3 h
    past = [history[k] for k in ("running", "failed", "done")]
    assert ids() == [*reversed(soonest), *past]  # newest first, as every other row
    assert ids("--upcoming", "0") == past
    assert ids("--limit", "4") == [*reversed(soonest), past[0]]
    assert len(ids("--state", "Scheduled")) == 11  # asked for by state: every one of them


def test_runs_filters_by_state_flow_and_label_and_limits(
    store: Store, history: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    def ids(*args: str) -> list[str]:
        code, out, err = run_cli(capsys, "runs", "--database-url", store.url, *args)
        assert (code, err) == (0, "")
        return [row[0] for row in table(out)[1:]] if out.strip() != "no flow runs" else []

    assert ids("--state", "failed", "RUNNING") == [history["running"], history["failed"]]
    assert ids("--state", "Failed", "--state", "Success") == [history["failed"], history["done"]]
    assert ids("--flow", "report") == [history["failed"]]
    assert ids("--label", "prod") == [history["failed"], history["done"]]
    assert ids("--label", "prod", "--label", "eu") == [history["done"]]
    assert ids("--label", "pro") == []  # whole labels, not substrings
    assert ids("--flow", "etl", "--limit", "2") == [history["upcoming"], history["running"]]
    assert ids("--flow", "nothing") == []


def test_runs_json_carries_every_field(
    store: Store, history: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "runs", "--json", "--limit", "4", "--database-url", store.url)
    assert code == 0
    runs = {run["id"]: run for run in json.loads(out)}
    done = runs[history["done"]]
    assert done["duration_s"] == 90.0 and done["agent_name"] == "agent-one" and done["flow_version"] == 3
    assert done["labels"] == ["prod", "eu"] and done["auto_scheduled"] is False
    assert datetime.fromisoformat(done["end_time"]) == NOW + timedelta(hours=-3, seconds=90)
    assert runs[history["upcoming"]]["auto_scheduled"] is True
    assert runs[history["upcoming"]]["start_time"] is None


def test_states_are_coloured_on_a_terminal_only(
    store: Store, history: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run_cli(capsys, "runs", "--database-url", store.url)
    assert code == 0
    assert "\x1b[31mFailed" in out and "\x1b[32mSuccess" in out
    plain = ANSI_ESCAPE.sub("", out).splitlines()
    state_at = plain[0].index("STATE")
    assert all(line[state_at - 2:state_at] == "  " and line[state_at] != " " for line in plain)


def test_bad_arguments_are_usage_errors(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["runs", "--state", "Nope"], ["runs", "--limit", "0"], ["logs", "x", "--level", "LOUD"]):
        with pytest.raises(SystemExit) as exited:
            cli.main([*args, "--database-url", store.url])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"local-agent-server {args[0]}: error:" in err and "Traceback" not in err


def test_logs_in_time_order_with_a_minimum_level(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.flow("etl")
    run_id = store.run("etl", "r", "Success", timedelta(0))
    store.log(run_id, "third", at=timedelta(seconds=3), level="ERROR", name="prefect.CloudTaskRunner")
    store.log(run_id, "first", at=timedelta(seconds=1), level="DEBUG")
    store.log(run_id, "second\nline two", at=timedelta(seconds=2), level="WARNING")
    store.log(run_id, "\x1b[2Jescape", at=timedelta(seconds=4))
    code, out, err = run_cli(capsys, "logs", run_id, "--database-url", store.url)
    assert (code, err) == (0, "")
    stamp = (NOW + timedelta(seconds=3)).strftime("%Y-%m-%d %H:%M:%S.000")
    assert out.splitlines() == [
        f"{(NOW + timedelta(seconds=1)).strftime('%Y-%m-%d %H:%M:%S.000')} DEBUG    prefect | first",
        f"{(NOW + timedelta(seconds=2)).strftime('%Y-%m-%d %H:%M:%S.000')} WARNING  prefect | second",
        "line two",
        f"{stamp} ERROR    prefect.CloudTaskRunner | third",
        f"{(NOW + timedelta(seconds=4)).strftime('%Y-%m-%d %H:%M:%S.000')} INFO     prefect | ?[2Jescape",
    ]
    code, out, _ = run_cli(capsys, "logs", run_id, "--level", "warning", "--database-url", store.url)
    assert [line.split(" | ")[-1] for line in out.splitlines()] == ["second", "line two", "third"]


def test_an_unknown_run_is_one_line_and_exit_1(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    for follow in ([], ["--follow"]):
        code, out, err = run_cli(capsys, "logs", "no-such-run", *follow, "--database-url", store.url)
        assert (code, out) == (1, "")
        assert err == "local-agent-server: flow run no-such-run not found\n"


@dataclass
class Script:
    """A stand-in for the follower's sleep: each poll's wait advances a clock and may change the database."""

    steps: list[Any]
    now: float = 0.0
    sleeps: int = 0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        assert self.sleeps < 100, "the follower never stopped"
        if self.steps:
            self.steps.pop(0)()

    def clock(self) -> float:
        return self.now


def test_follow_prints_each_new_line_once_and_stops_when_finished_and_quiet(store: Store) -> None:
    store.flow("etl")
    run_id = store.run("etl", "r", "Running", timedelta(0))
    store.log(run_id, "one", at=timedelta(seconds=10))
    script = Script([
        lambda: store.log(run_id, "two, stamped earlier", at=timedelta(seconds=5)),  # a late batch
        lambda: store.set_state(run_id, "Success"),
        lambda: store.log(run_id, "three, after the final state", at=timedelta(seconds=20)),
    ])
    out = io.StringIO()
    engine = lookups.open_reader(store.url)
    try:
        follower = lookups.LogFollower(engine, run_id, out, sleep=script.sleep, clock=script.clock)
        follower.run(follow=True)
    finally:
        engine.dispose()
    assert [line.split(" | ")[-1] for line in out.getvalue().splitlines()] == ["one", "two, stamped earlier",
                                                             "three, after the final state"]
    # The last line came at poll 3 (t=3), the run finished: polls 4 and 5 are the 2 s of quiet, then it ends.
    assert (script.sleeps, script.now) == (5, 5.0)


def test_follow_of_a_deleted_run_ends_with_one_line(store: Store) -> None:
    store.flow("etl")
    run_id = store.run("etl", "r", "Scheduled", timedelta(0))

    def delete() -> None:
        with db.write_tx(store.engine) as conn:
            conn.execute(db.flow_run.delete().where(db.flow_run.c.id == run_id))

    engine = lookups.open_reader(store.url)
    script = Script([delete])
    try:
        with pytest.raises(lookups.LookupFailed, match="no longer exists"):
            follower = lookups.LogFollower(engine, run_id, io.StringIO(), sleep=script.sleep,
                                           clock=script.clock)
            follower.run(follow=True)
    finally:
        engine.dispose()


def test_look_ups_cannot_write(store: Store) -> None:
    engine = lookups.open_reader(store.url)
    try:
        with pytest.raises(DBAPIError), lookups.reading(engine) as conn:
            conn.execute(db.lease.insert().values(name="x", holder="y", expires=db.utcnow()))
    finally:
        engine.dispose()


def test_a_database_without_the_schema_is_refused_in_one_line(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "runs", "--database-url", empty_database_url)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and ("no database at" in err or "has no schema yet" in err)
    if empty_database_url.startswith("sqlite"):
        assert not Path(empty_database_url.removeprefix("sqlite:///")).exists()  # a look-up creates nothing
        Path(empty_database_url.removeprefix("sqlite:///")).touch()
        code, _, err = run_cli(capsys, "logs", "x", "--database-url", empty_database_url)
        assert code == 1 and "has no schema yet: `local-agent-server db upgrade`" in err


@pytest.mark.sqlite_only(reason="Ctrl-C is handled by the CLI, the same on every backend")
def test_ctrl_c_ends_follow_with_exit_0_and_no_traceback(store: Store) -> None:
    store.flow("etl")
    run_id = store.run("etl", "r", "Running", timedelta(0))
    store.log(run_id, "hello", at=timedelta(0))
    follow = subprocess.Popen([sys.executable, "-m", "server", "logs", run_id, "--follow", "--database-url",
                               store.url], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline().endswith("| hello\n")  # following now
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
        follow.wait()
    assert (follow.returncode, out, err) == (0, "", "")


def without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The console entry with `module` unimportable, as after a `pip install .` without the extra."""
    code = (f"import sys; sys.modules[{module!r}] = None; from server.cli import main; "
            f"raise SystemExit(main({list(args)!r}))")
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOCAL_AGENT_SERVER_")}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize(("module", "args"), [
    ("sqlalchemy", ["runs"]), ("alembic", ["logs", "x", "--follow"]),
    ("graphql", ["token", "create", "--name", "x"]),
])
def test_without_the_server_extra_one_line_names_the_fix(module: str, args: list[str]) -> None:
    done = without(module, *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr == (f"local-agent-server: the server's dependencies are not installed (no module "
                           f"'{module}'): pip install 'local-agent[server]'\n")


def test_a_postgresql_url_also_needs_psycopg() -> None:
    done = without("psycopg", "runs", "--database-url", "postgresql+psycopg://u@127.0.0.1:1/db")
    assert done.returncode == 2 and done.stderr.endswith("(no module 'psycopg'): pip install "
                                                         "'local-agent[server]'\n")


def test_help_needs_no_server_extra() -> None:
    done = without("sqlalchemy", "runs", "--help")
    assert done.returncode == 0 and "--state STATE" in done.stdout


def test_the_fix_names_this_distribution() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == cli.DISTRIBUTION and "server" in project["optional-dependencies"]
    assert project["scripts"]["local-agent-server"] == "server.cli:main"
