"""Three server replicas on one PostgreSQL behind a round-robin balancer, three real agents, 200 due runs, and
one replica SIGKILLed halfway through the burst (restarted a few seconds later, as an orchestrator would).

Judged by Docker and the database, never by the agents' word: every run got exactly one flow container
(`create` and `start` events from the daemon's own stream, and `docker ps -a` by the run-id label at the
end), every run reached a final state with its "Submitted for execution" line, and the agents' logs hold no
traceback. The stand-in flow container exits at once; like `prefect execute flow-run`, the flow-runner
stand-in sets Success when the container starts (tests/support/chaos.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests

from tests.support.agent_fixtures import AgentProcess
from tests.support.balancer import Balancer
from tests.support.chaos import (
    CHAOS_LABEL,
    FLOW_RUN_LABEL,
    FlowRunnerStandIn,
    StartLog,
    Verdict,
    create_runs,
    read_runs,
    register_flow,
    wait_settled,
)
from tests.support.chaos_scenarios import new_tag
from tests.support.docker_fixtures import remove_containers
from tests.support.server_fixtures import ServerHandle, free_port, start_server

RUNS = 200  # at ~5 containers/s here: the kill lands ~20 s into a ~40 s burst
REPLICAS = 3
AGENTS = 3
DOWN_S = 3.0  # how long the killed replica stays down before the "orchestrator" restarts it
SETTLE_TIMEOUT_S = 200.0  # a bound on termination, not a speed target


class CreateLog:
    """Docker's own `create` events of the scenario's containers: how many containers each run ever had
    (the agents remove finished containers, so `docker ps -a` alone cannot tell)."""

    def __init__(self, tag: str) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._client = docker.from_env(timeout=60)
        filters = {"type": "container", "event": "create", "label": f"{CHAOS_LABEL}={tag}"}
        self._stream = self._client.events(decode=True, filters=filters)
        self._thread = threading.Thread(target=self._read, daemon=True, name="replica-burst-creates")
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                run_id = event.get("Actor", {}).get("Attributes", {}).get(FLOW_RUN_LABEL, "?")
                with self._lock:
                    self.counts[run_id] += 1
        except Exception:  # noqa: BLE001 - the stream ends when close() cuts it
            return

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)
        self._client.close()


@dataclass
class Cluster:
    replicas: list[ServerHandle]
    balancer: Balancer
    tag: str


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[Cluster]:
    """Three replicas on one fresh PostgreSQL database and a balancer in front; all stopped and the
    scenario's containers removed at the end. (`start_server`, not `server_factory`: this test is about
    PostgreSQL only, so it must not be doubled onto SQLite by the server modules' backend parameter.)"""
    tag = new_tag()
    replicas: list[ServerHandle] = []
    try:
        for index in range(REPLICAS):
            replicas.append(start_server(tmp_path / f"replica-{index}", database_url=postgres_url))
        with Balancer([("127.0.0.1", r.port) for r in replicas]) as front:
            yield Cluster(replicas, front, tag)
    finally:
        for replica in replicas:
            replica.stop()
        remove_containers(docker_client, f"{CHAOS_LABEL}={tag}")


def kill_and_restart(replica: ServerHandle, down_s: float) -> None:
    """SIGKILL (no graceful stop: requests in flight are cut), then the same command on the same port."""
    assert replica.proc is not None
    replica.proc.kill()
    replica.proc.wait(10)
    time.sleep(down_s)
    replica.start()


def containers_per_run(client: docker.DockerClient, tag: str) -> Counter[str]:
    found = client.api.containers(all=True, filters={"label": f"{CHAOS_LABEL}={tag}"})
    return Counter(c["Labels"].get(FLOW_RUN_LABEL, "?") for c in found)


def wait_for_starts(starts: StartLog, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(starts.snapshot()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} container starts after {timeout} s"
        time.sleep(0.1)


def test_the_balancer_skips_an_upstream_that_refuses(tmp_path: Path) -> None:
    """Round robin over a dead port and a live server: every request lands, the dead one is skipped."""
    live = start_server(tmp_path / "live")
    dead = ("127.0.0.1", free_port())
    try:
        with Balancer([dead, ("127.0.0.1", live.port)]) as front:
            for _ in range(4):  # a new connection each time, so each one is balanced
                body = requests.post(front.url, json={"query": "query { hello }"},
                                     headers={"Connection": "close"}, timeout=10).json()
                assert body["data"]["hello"]
            assert front.skipped[dead] == 2 and front.refused == 0
            assert front.connections[("127.0.0.1", live.port)] == 4
        with Balancer([dead]) as nowhere, pytest.raises(requests.ConnectionError):
            requests.post(nowhere.url, json={"query": "query { hello }"}, timeout=10)
        assert nowhere.refused == 1
    finally:
        live.stop()


@pytest.mark.postgres
@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_replica_killed_mid_burst_loses_and_doubles_nothing(
        cluster: Cluster, stand_in_image: str, agent_factory: Callable[..., AgentProcess],
        docker_client: docker.DockerClient) -> None:
    first = cluster.replicas[0]
    flow_id = register_flow(first, stand_in_image, cluster.tag)
    run_ids = create_runs(first, flow_id, RUNS, cluster.tag)
    runner = FlowRunnerStandIn(cluster.balancer.url)
    starts = StartLog(cluster.tag, on_start=runner.started)
    creates = CreateLog(cluster.tag)
    try:
        t0 = time.time()
        agents = [agent_factory(cluster.balancer, level="INFO", no_pull=True, labels=[cluster.tag],
                                container_labels={CHAOS_LABEL: cluster.tag}) for _ in range(AGENTS)]
        wait_for_starts(starts, RUNS // 2)
        started_at_kill = len(starts.snapshot())
        victim = cluster.replicas[1]
        cut_at_kill = cluster.balancer.open_to(("127.0.0.1", victim.port))
        kill_and_restart(victim, DOWN_S)
        settled = wait_settled(first, run_ids, starts, SETTLE_TIMEOUT_S)
        wall_s = time.time() - t0
        verdict = Verdict("replica_burst", RUNS, starts.counts(), read_runs(first, run_ids), wall_s=wall_s)
        created = creates.snapshot()
    finally:
        creates.close()
        starts.close()
        runner.close()
    print(json.dumps({**verdict.summary(), "started_at_kill": started_at_kill, "cut_at_kill": cut_at_kill,
                      "balancer": cluster.balancer.counts()}, indent=1))
    assert started_at_kill < RUNS, "the burst was over before the kill: this proved nothing"
    assert cut_at_kill > 0, "no client was connected to the killed replica: this proved nothing"
    assert settled, f"the burst did not settle: {verdict.summary()}"
    assert verdict.problems() == []
    assert {run: created[run] for run in run_ids if created[run] != 1} == {}, "not one container per run"
    left = containers_per_run(docker_client, cluster.tag)
    assert {run: n for run, n in left.items() if n > 1} == {}
    for agent in agents:
        output = agent.output()
        assert agent.returncode is None, f"{agent.name} exited {agent.returncode}:\n{output[-3000:]}"
        assert "Traceback" not in output, f"{agent.name} logged a traceback:\n{output[-5000:]}"
