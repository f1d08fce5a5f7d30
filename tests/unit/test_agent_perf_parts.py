"""The pieces behind issue 7's targets: launch gate, claim batching policy, Docker fact caches, start-up
steps side by side, malloc trimming, and the JSON transport (against a local aiohttp app)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from agent import startup
from agent.api.cloud import ApiError, StateUpdateFailed, TransientApiError, classify_exception
from agent.api.transport import GraphQLHttp, HttpStatusError, NetworkError, ProtocolError
from agent.launch.claims import ClaimBatcher, outcome_error
from agent.launch.gate import LaunchGate
from agent.launch.prelaunch import DockerProbe, ImagePresence
from agent.ops import memory


class FakeCloud:
    def __init__(self, statuses: dict[str, str] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.statuses = statuses or {}

    async def set_flow_run_states_partial(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batches.append([e["flow_run_id"] for e in entries])
        status = self.statuses.get
        return [{"id": e["flow_run_id"], "status": status(e["flow_run_id"], "SUCCESS"), "message": "m"}
                for e in entries]


def test_outcomes_map_to_the_errors_the_pipeline_knows() -> None:
    assert outcome_error("SUCCESS", None) is None
    assert isinstance(outcome_error("VERSION_LOCKING_ERROR", "x"), StateUpdateFailed)
    assert isinstance(outcome_error("NOT_FOUND", "State update failed for flow run ID 1: not found."),
                      StateUpdateFailed)
    error = outcome_error("BAD_REQUEST", "Invalid state")
    assert isinstance(error, ApiError) and not isinstance(error, StateUpdateFailed)


async def test_claims_of_one_instant_share_a_request_and_fail_alone() -> None:
    cloud = FakeCloud({"b": "VERSION_LOCKING_ERROR"})
    batcher = ClaimBatcher(cloud, partial=True)  # type: ignore[arg-type]
    results = await asyncio.gather(*(batcher.set_state(r, {}, 1) for r in "abc"), return_exceptions=True)
    await batcher.close()
    assert cloud.batches == [["a", "b", "c"]]
    assert results[0] is None and isinstance(results[1], StateUpdateFailed) and results[2] is None


async def test_claims_are_held_while_claimed_runs_wait_for_launch_slots() -> None:
    cloud, hold, room = FakeCloud(), [True], asyncio.Event()
    batcher = ClaimBatcher(cloud, partial=True, hold=lambda: hold[0], room=room)  # type: ignore[arg-type]
    claims = [asyncio.ensure_future(batcher.set_state(r, {}, 1)) for r in "abc"]
    await asyncio.sleep(0.05)
    assert cloud.batches == []
    hold[0] = False
    room.set()  # a claimed run got its launch slot (the gate's event)
    await asyncio.gather(*claims)
    await batcher.close()
    assert cloud.batches == [["a", "b", "c"]]


async def test_the_gate_counts_due_unclaimed_runs_and_bounds_the_window() -> None:
    gate, go = LaunchGate(launches=1, ahead=2), asyncio.Event()  # window: 2 claimed or launching
    entered: list[int] = []

    async def run(index: int) -> None:
        async with gate.ticket() as ticket:
            entered.append(index)
            await go.wait()  # "claiming"
            async with ticket.launching():
                await asyncio.sleep(0.01)

    tasks = [asyncio.ensure_future(run(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert gate.unclaimed == 4 and entered == [0, 1]  # two hold the window, two wait for it
    polling = asyncio.ensure_future(gate.room_to_poll(timeout=5))
    await asyncio.sleep(0.01)
    assert not polling.done()  # 4 due runs held >= 1 launch slot: a poll would return them again
    go.set()
    await asyncio.wait_for(polling, 5)
    await asyncio.gather(*tasks)
    assert gate.unclaimed == 0 and gate.ready == 0 and entered == [0, 1, 2, 3]


class FakeRuntime:
    def __init__(self) -> None:
        self.pings = 0
        self.present = True

    async def ping(self) -> None:
        await asyncio.sleep(0.01)
        self.pings += 1

    async def image_present(self, image: str) -> bool:
        await asyncio.sleep(0.01)
        return self.present


async def test_one_ping_answers_for_a_burst_and_absence_is_never_cached() -> None:
    runtime = FakeRuntime()
    probe, images = DockerProbe(runtime, ttl=60), ImagePresence(runtime, ttl=60)  # type: ignore[arg-type]
    await asyncio.gather(*(probe.ping() for _ in range(10)))
    assert runtime.pings == 1
    assert all(await asyncio.gather(*(images.present("img") for _ in range(10))))
    assert images.checks == 1
    images.forget("img")
    runtime.present = False
    assert not await images.present("img") and not await images.present("img")
    assert images.checks == 3


async def test_a_failed_docker_check_wins_over_the_backend_work() -> None:
    async def docker_down() -> None:
        raise RuntimeError("docker down")

    async def backend() -> str:
        await asyncio.sleep(5)
        return "connected"

    async def docker_up() -> None:
        await asyncio.sleep(0.01)

    with pytest.raises(RuntimeError, match="docker down"):
        await asyncio.wait_for(startup.alongside(docker_down(), backend()), 1)
    assert await startup.alongside(docker_up(), asyncio.sleep(0.02, "connected")) == (None, "connected")


def test_malloc_trim_runs_at_most_once_a_minute() -> None:
    if not memory.limit_arenas():
        pytest.skip("not glibc")
    assert memory.trim_when_idle(now=1e9)
    assert not memory.trim_when_idle(now=1e9 + 1)
    assert memory.trim_when_idle(now=1e9 + memory.TRIM_EVERY_S)


async def test_transport_outcomes(aiohttp_free_port: int) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        kind = body["variables"]["kind"]
        if kind == "errors":
            return web.json_response({"errors": [{"message": "no"}]}, status=400)
        if kind == "proxy":
            return web.Response(text="<html>bad gateway</html>", status=502)
        if kind == "html":
            return web.Response(text="<html>hello</html>")
        if kind == "redirect":
            return web.Response(status=308, headers={"Location": "https://elsewhere.example/graphql"})
        return web.json_response({"data": {"echo": body["query"]}})

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", aiohttp_free_port).start()
    http = GraphQLHttp(f"http://127.0.0.1:{aiohttp_free_port}/", {})
    await http.connect()
    try:
        answer = await http.post("{ hello }", {"kind": "data"})
        assert answer["data"]["echo"].split() == ["{", "hello", "}"]  # gql sends the parsed document
        assert (await http.post("{ hello }", {"kind": "errors"}))["errors"] == [{"message": "no"}]
        with pytest.raises(HttpStatusError) as raised:
            await http.post("{ hello }", {"kind": "proxy"})
        assert raised.value.code == 502 and "\n" not in str(raised.value)  # one log line
        assert type(classify_exception(raised.value)) is TransientApiError
        with pytest.raises(HttpStatusError) as raised:  # not followed: http -> https would go unverified
            await http.post("{ hello }", {"kind": "redirect"})
        redirect = classify_exception(raised.value)
        assert type(redirect) is ApiError and "redirect (HTTP 308)" in str(redirect)
        with pytest.raises(ProtocolError):
            await http.post("{ hello }", {"kind": "html"})
    finally:
        await http.close()
        await runner.cleanup()


async def test_an_unreachable_api_is_a_transient_network_error(aiohttp_free_port: int) -> None:
    http = GraphQLHttp(f"http://127.0.0.1:{aiohttp_free_port}/", {})  # nothing listens there
    await http.connect()
    try:
        with pytest.raises(NetworkError) as raised:
            await http.post("{ hello }")
    finally:
        await http.close()
    assert str(raised.value).startswith("ConnectError: ")
    assert type(classify_exception(raised.value)) is TransientApiError


@pytest.fixture
def aiohttp_free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_claims_waiting_when_the_agent_stops_are_withdrawn_not_sent() -> None:
    from agent.launch.claims import ClaimWithdrawn

    cloud, stop = FakeCloud(), asyncio.Event()
    batcher = ClaimBatcher(cloud, partial=True, hold=lambda: True, stop=stop)  # type: ignore[arg-type]
    claims = [asyncio.ensure_future(batcher.set_state(r, {}, 1)) for r in "ab"]
    await asyncio.sleep(0.02)
    stop.set()
    results = await asyncio.wait_for(asyncio.gather(*claims, return_exceptions=True), 2)
    late = await asyncio.gather(batcher.set_state("c", {}, 1), return_exceptions=True)
    await batcher.close()
    assert cloud.batches == []
    assert all(isinstance(r, ClaimWithdrawn) for r in [*results, *late])
