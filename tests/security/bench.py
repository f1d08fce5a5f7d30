"""The bench: a run config through the agent's policy and, when accepted, onto the real daemon for the judge.

What the policy accepts is created (never started) from `plan.spec` with `DockerRuntime.create`, the very
path a launch takes, then inspected, judged and removed with every volume it made. A config the daemon
refuses is fine: nothing was created, so nothing escaped.
"""

from __future__ import annotations

import itertools
import os
import threading
import traceback
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest

from agent.api.models import FlowRun
from agent.launch.plan import Identity, plan_container
from agent.policy.rules import PolicyDenied
from agent.runtime.docker import ContainerSpec, DockerError, DockerRuntime
from agent.settings import Settings
from tests.security.judge import Daemon, JudgePolicy, Violation, judge
from tests.security.strategies import VOLUME_PREFIX
from tests.support.docker_fixtures import RUN_ID

IDENTITY = Identity("security-judge", [], "tenant-1", "http://host.docker.internal:4200", [])
STORAGE = {"type": "Docker", "image_name": "local/busybox", "image_tag": "latest", "registry_url": None}


@dataclass(frozen=True)
class PolicyCase:
    """One operator policy, as agent settings and as the judge's independent reading of it."""

    name: str
    settings: Settings
    judged: JudgePolicy


@dataclass(frozen=True)
class Outcome:
    kind: str  # denied | refused | created
    detail: str = ""
    violations: tuple[Violation, ...] = ()

    def __str__(self) -> str:
        found = "; ".join(map(str, self.violations))
        return f"{self.kind}: {found or self.detail}"


class Escape(AssertionError):
    """A container exceeded the policy. One subclass per violated need, so that hypothesis (which tells
    failures apart by exception type) shrinks and reports each kind of escape separately."""

    _kinds: dict[str, type[Escape]] = {}

    @classmethod
    def named(cls, need: str) -> type[Escape]:
        if need not in cls._kinds:
            cls._kinds[need] = type(f"Escape_{need}", (cls,), {})
        return cls._kinds[need]


class Stats:
    """Outcome counts, from the test's thread and the bench's workers."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1


@contextmanager
def clean_prefect_env(home: str) -> Iterator[None]:
    """Settings built without the developer's PREFECT__* variables or Prefect config file."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("PREFECT__"):
                patch.delenv(name)
        patch.setenv("PREFECT__HOME_DIR", home)
        yield


def flow_run(run_id: str, run_config: Mapping[str, Any]) -> FlowRun:
    return FlowRun.model_validate(
        {
            "id": run_id,
            "version": 1,
            "run_config": dict(run_config),
            "flow": {"id": "flow-1", "name": "hostile", "core_version": "1.4.1", "storage": STORAGE},
        }
    )


class Bench:
    """Runs configs through `plan_container` in the caller's thread (cheap, and most are denied) and has a
    few workers create, judge and remove what was accepted. Identical create arguments are judged once."""

    def __init__(
        self, runtime: DockerRuntime, client: docker.DockerClient, image: str, workers: int = 3
    ) -> None:
        self.runtime, self.client, self.image = runtime, client, image
        self.daemon = Daemon.from_info(client.info())
        self.stats = Stats()
        self._ids = itertools.count()
        self._seen: dict[str, Future[Outcome]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="security-bench")
        self._local = threading.local()
        self._clients: list[docker.DockerClient] = []

    def submit(self, case: PolicyCase, run_config: Mapping[str, Any]) -> Future[Outcome]:
        """The policy's answer now; for an accepted config, the judge's answer once a worker has it."""
        done: Future[Outcome] = Future()
        run = flow_run(f"sec-{RUN_ID}-{next(self._ids)}", run_config)
        try:
            spec = plan_container(run, self.image, case.settings, IDENTITY).spec
        except PolicyDenied as denied:
            self.stats.add("denied")
            done.set_result(Outcome("denied", str(denied)))
            return done
        except Exception as crash:  # the policy must deny what it cannot read, not fail with a traceback
            self.stats.add("crashed")
            where = traceback.extract_tb(crash.__traceback__)[-1]
            detail = f"{type(crash).__name__}: {crash} at {where.filename}:{where.lineno}"
            done.set_result(Outcome("crashed", detail, (Violation("policy_crash", detail),)))
            return done
        kwargs = {k: v for k, v in spec.create_kwargs().items() if k not in ("name", "environment", "labels")}
        key = f"{case.name}|{kwargs!r}"  # insertion order kept: the daemon's decoder keeps the last spelling
        if key not in self._seen:
            self._seen[key] = self._pool.submit(self.create_and_judge, spec, case.judged)
        return self._seen[key]

    def verdict(self, case: PolicyCase, run_config: Mapping[str, Any]) -> Outcome:
        return self.submit(case, run_config).result()

    def create_and_judge(self, spec: ContainerSpec, policy: JudgePolicy) -> Outcome:
        try:
            container_id = self.runtime.create(spec)
        except DockerError as refused:
            self.runtime.ping()  # refused, not unreachable: a daemon that went away fails the test
            self.remove(spec.name)
            self.stats.add("refused")
            return Outcome("refused", refused.message)
        try:
            self.stats.add("created")
            return Outcome("created", violations=tuple(self.judge(container_id, policy)))
        finally:
            self.remove(container_id)

    @property
    def api(self) -> docker.APIClient:
        """This thread's client (docker-py does not promise thread safety)."""
        client: docker.DockerClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = docker.from_env(timeout=120)
            self._clients.append(client)
        return client.api

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.remove_all_volumes()
        for client in self._clients:
            client.close()

    def judge(self, container: str, policy: JudgePolicy) -> list[Violation]:
        attrs = self.api.inspect_container(container)
        names = [m.get("Name") for m in attrs.get("Mounts") or [] if m.get("Type") == "volume"]
        volumes = {}
        for name in filter(None, names):
            try:
                volumes[name] = self.api.inspect_volume(name)
            except docker.errors.NotFound:
                continue  # the judge reports a volume it cannot see
        return judge(attrs, volumes, policy, self.daemon)

    def remove(self, container: str) -> None:
        """The container, its anonymous volumes and the named volumes generated configs may create."""
        try:
            attrs = self.api.inspect_container(container)
        except docker.errors.NotFound:
            return
        self.api.remove_container(container, v=True, force=True)
        for mount in attrs.get("Mounts") or []:
            if str(mount.get("Name") or "").startswith(VOLUME_PREFIX):
                self.remove_volume(mount["Name"])

    def remove_volume(self, name: str) -> None:
        try:
            self.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # in use by another worker's container: its removal removes it
                raise

    def remove_all_volumes(self) -> None:
        """Volumes a refused create left behind (the daemon creates mounts' volumes before it fails)."""
        for volume in self.api.volumes(filters={"name": VOLUME_PREFIX}).get("Volumes") or []:
            if volume["Name"].startswith(VOLUME_PREFIX):
                self.remove_volume(volume["Name"])
