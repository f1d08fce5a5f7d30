"""The agent's Docker API surface, recorded while the tests run and held to docs/docker-api.md.

The list is what a socket proxy in front of the agent allows, so a call the agent starts making must show
up as a failing run, not as a denied call in production. Every Docker call of the agent under test (the
`runtime` fixture, in-process `SwarmRuntime`s, `local-agent` processes from tests/support/agent_fixtures.py,
tests/support/docker_proxy.py chains) goes through a recording unix-socket proxy, one socket per engine so
the Engine column is checked too. At session end every recorded `(method, template, engine)` must be listed,
else the session fails naming each new call and the test that made it first; listed endpoints no test
reached are only reported (a partial run cannot reach them all). `LOCAL_AGENT_API_SURFACE=off` turns the
recorder off (to measure its cost, or on a machine whose DOCKER_HOST is not a unix socket it is off anyway).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.api_heads import RequestReader
from tests.support.api_templates import (
    API_LIST,
    ENGINES,
    ApiListError,
    Endpoint,
    clean_path,
    load_allowed,
    match,
    template_for,
)
from tests.support.docker_proxy import DOCKER_SOCKET, DockerSocketProxy, Watcher

__all__ = ["ApiRecorder", "agent_base_url", "agent_upstream", "compare", "load_allowed"]

OFF_SWITCH = "LOCAL_AGENT_API_SURFACE"
SESSION = "<session>"  # calls made outside any test (session fixtures' setup order aside, none expected)
UNPARSED = "<unparsed>"


@dataclass
class Seen:
    first_test: str
    count: int = 1


class ApiRecorder:
    """Recording proxies in front of `upstream`, one per engine, started on first use."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.current_test = SESSION
        self.calls: dict[tuple[str, str, str], Seen] = {}  # (engine, method, clean path), in call order
        self.unparsed: list[tuple[str, str, str]] = []  # (engine, test, why)
        self._proxies: dict[str, DockerSocketProxy] = {}  # "<engine> <upstream>" -> its recording proxy
        self._lock = threading.Lock()

    def socket(self, engine: str, upstream: str | None = None) -> str:
        """The recording socket for `engine` in front of `upstream` (the daemon's unless given: a Podman
        service's socket)."""
        target = upstream or self.upstream
        with self._lock:
            proxy = self._proxies.get(f"{engine} {target}")
            if proxy is None:
                proxy = DockerSocketProxy(target, observe=lambda: self._watcher(engine))
                proxy.start()
                self._proxies[f"{engine} {target}"] = proxy
        return proxy.path

    def base_url(self, engine: str) -> str:
        return f"unix://{self.socket(engine)}"

    def _watcher(self, engine: str) -> Watcher:
        return RequestReader(lambda method, target: self.record(engine, method, target),
                             lambda why: self._unparsed(engine, why)).feed

    def record(self, engine: str, method: str, target: str) -> None:
        key = (engine, method, clean_path(target))
        with self._lock:
            seen = self.calls.get(key)
            if seen is None:
                self.calls[key] = Seen(self.current_test)
            else:
                seen.count += 1

    def _unparsed(self, engine: str, why: str) -> None:
        with self._lock:
            self.unparsed.append((engine, self.current_test, why))

    def close(self) -> None:
        with self._lock:
            proxies, self._proxies = list(self._proxies.values()), {}
        for proxy in proxies:
            proxy.close()


@dataclass
class Call:
    engine: str
    method: str
    template: str
    listed: bool  # for this engine
    first_test: str
    example: str
    count: int = 0
    hint: str = ""


@dataclass
class Report:
    calls: list[Call]
    unseen: list[tuple[Endpoint, str]]  # (endpoint, engine)
    unparsed: list[tuple[str, str, str]]
    problems: list[str] = field(default_factory=list)  # the list itself is broken

    @property
    def new(self) -> list[Call]:
        return [c for c in self.calls if not c.listed]

    @property
    def failed(self) -> bool:
        return bool(self.new or self.unparsed or self.problems)


def compare(calls: dict[tuple[str, str, str], Seen], unparsed: list[tuple[str, str, str]],
            allowed: list[Endpoint]) -> Report:
    """Fold recorded concrete calls into endpoints and hold them to `allowed`."""
    folded: dict[tuple[str, str, str], Call] = {}
    for (engine, method, path), seen in calls.items():
        template, _ = template_for(method, path, allowed)
        endpoint = match(method, path, allowed)
        call = folded.get((engine, method, template))
        if call is None:
            listed = endpoint is not None and engine in endpoint.engines
            engines = ", ".join(sorted(endpoint.engines)) if endpoint is not None else ""
            hint = "" if listed or endpoint is None else f"listed for {engines} only"
            call = Call(engine, method, template, listed, seen.first_test, path, hint=hint)
            folded[(engine, method, template)] = call
        call.count += seen.count
    reached = set(folded)
    unseen = [(e, engine) for e in allowed for engine in sorted(e.engines)
              if (engine, e.method, e.template) not in reached]
    ordered = sorted(folded.values(), key=lambda c: (c.template, c.method, c.engine))
    return Report(ordered, unseen, list(unparsed))


def failure_lines(report: Report) -> Iterator[str]:
    for problem in report.problems:
        yield f"{API_LIST.name} is broken: {problem}"
    if report.new:
        yield (f"The agent made Docker API calls {API_LIST.relative_to(API_LIST.parents[1])} does not list "
               "(add each row with a short Why; the socket proxy allows only what is listed):")
    for call in report.new:
        hint = f" ({call.hint}: add {call.engine} to its Engine)" if call.hint else ""
        yield f"  | {call.method} | {call.template} | {call.engine} | ... |{hint}"
        yield f"      first by {call.first_test}, e.g. {call.method} {call.example}"
    for engine, test, why in report.unparsed:
        yield f"  {UNPARSED} a {engine}-engine connection in {test} could not be read ({why}): calls missed?"


# -- the session's recorder

class _Session:
    enabled = False
    recorder: ApiRecorder | None = None
    test = SESSION


_SESSION = _Session()
_LOCK = threading.Lock()


def daemon_socket() -> str | None:
    """The daemon's unix socket (DOCKER_HOST's, else the default), or None when it is not a unix socket."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DOCKER_SOCKET
    return host.removeprefix("unix://") if host.startswith("unix://") else None


def recorder() -> ApiRecorder | None:
    """The session's recorder (started on first use), or None when off or there is no daemon socket."""
    with _LOCK:
        if _SESSION.recorder is None and _SESSION.enabled:
            upstream = daemon_socket()
            if upstream is not None and os.path.exists(upstream):
                _SESSION.recorder = ApiRecorder(upstream)
                _SESSION.recorder.current_test = _SESSION.test
        return _SESSION.recorder


def agent_base_url(engine: str = "docker") -> str | None:
    """The base_url an agent under test gets: the recorder's socket for `engine`, or None (the default;
    also for an engine the list has no column for, whose daemon may not be Docker's)."""
    if engine not in ENGINES:
        return None
    found = recorder()
    return found.base_url(engine) if found is not None else None


def recorded_base_url(engine: str, upstream: str) -> str | None:
    """A recording socket for `engine` in front of another engine's socket (Podman), or None when off."""
    found = recorder()
    return f"unix://{found.socket(engine, upstream)}" if found is not None else None


def agent_upstream(engine: str = "docker") -> str:
    """What a test's own proxy in front of an agent forwards to: the recorder, else the daemon."""
    found = recorder()
    return found.socket(engine) if found is not None else (daemon_socket() or DOCKER_SOCKET)


def route_swarm_runtimes() -> None:
    """In-process `SwarmRuntime(...)` without a base_url (tests/integration/test_swarm_runtime.py builds its
    own) goes through the recorder's swarm socket; the tests' own docker-py clients do not."""
    from agent.runtime.swarm import SwarmRuntime
    from agent.runtime.swarm_types import SwarmOptions

    original = SwarmRuntime.__init__
    if getattr(original, "api_surface_routed", False):
        return

    def routed(self: SwarmRuntime, base_url: str | None = None, timeout: float = 60.0,
               options: SwarmOptions | None = None) -> None:
        original(self, base_url if base_url is not None else agent_base_url("swarm"), timeout, options)

    routed.api_surface_routed = True  # type: ignore[attr-defined]
    setattr(SwarmRuntime, "__init__", routed)  # noqa: B010 - mypy refuses assigning to a method


# -- the pytest plugin (registered in tests/conftest.py)

def pytest_configure(config: pytest.Config) -> None:
    _SESSION.enabled = os.environ.get(OFF_SWITCH, "").lower() not in {"0", "off", "false", "no"}


def pytest_collection_finish(session: pytest.Session) -> None:
    if _SESSION.enabled and any(item.get_closest_marker("swarm") for item in session.items):
        route_swarm_runtimes()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _set_test(item.nodeid)
    yield
    _set_test(SESSION)


def _set_test(nodeid: str) -> None:
    with _LOCK:
        _SESSION.test = nodeid
        if _SESSION.recorder is not None:
            _SESSION.recorder.current_test = nodeid


def pytest_sessionfinish(session: pytest.Session) -> None:
    with _LOCK:
        found, _SESSION.recorder = _SESSION.recorder, None
    if found is None:
        return
    found.close()
    if not found.calls and not found.unparsed:
        return
    try:
        allowed = load_allowed()
        report = compare(found.calls, found.unparsed, allowed)
    except (OSError, ApiListError) as exc:
        report = compare(found.calls, found.unparsed, [])
        report.problems.append(str(exc))
    session.config.stash[REPORT_KEY] = (report, write_json(session.config, report))
    if report.failed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


REPORT_KEY = pytest.StashKey[tuple[Report, Path]]()


def write_json(config: pytest.Config, report: Report) -> Path:
    """The recorded set, for inspection (and for regenerating the list's rows)."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        path = Path(cache.mkdir("api-surface")) / "recorded.json"
    else:
        path = Path(tempfile.gettempdir()) / "local-agent-api-surface.json"
    path.write_text(json.dumps({
        "calls": [vars(call) for call in report.calls],
        "unseen": [{"method": e.method, "template": e.template, "engine": n} for e, n in report.unseen],
        "unparsed": [{"engine": e, "test": t, "why": w} for e, t, w in report.unparsed],
        "problems": report.problems,
    }, indent=1))
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    stashed = config.stash.get(REPORT_KEY, None)
    if stashed is None:
        return
    report, path = stashed
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "Docker API surface", red=report.failed, green=not report.failed)
    for line in failure_lines(report):
        write(line)
    listed = sum(1 for c in report.calls if c.listed)
    write(f"{listed} listed endpoint(s) called, {len(report.new)} new; recorded set: {path}")
    for engine in sorted({engine for _, engine in report.unseen}):
        unseen = [f"{e.method} {e.template}" for e, n in report.unseen if n == engine]
        write(f"listed for {engine} but not called in this run ({len(unseen)}): {', '.join(unseen)}")
