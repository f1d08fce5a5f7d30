"""Our extension `set_flow_run_states_input.partial` (capability "partial_states"): per-element outcomes."""

from __future__ import annotations

import pytest

from tests.support import api
from tests.support.server_fixtures import InProcessServer
from tests.unit.test_server_states import state

SET_FLOW = (
    "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) "
    "{ states { id status message } } }"
)
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def run_ids(inproc_server: InProcessServer) -> list[str]:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="img", image_tag="1")
    return [api.create_flow_run(inproc_server, flow_id) for _ in range(3)]


def test_capability_is_advertised(inproc_server: InProcessServer) -> None:
    body = inproc_server.graphql("{ api { capabilities } }")
    assert "partial_states" in body["data"]["api"]["capabilities"]


def test_one_lost_claim_does_not_fail_the_others(inproc_server: InProcessServer, run_ids: list[str]) -> None:
    _first, second, third = run_ids
    assert "errors" not in api.set_flow_run_state(inproc_server, second, state("Submitted"), 1)  # lost race
    elements = [{"flow_run_id": run_id, "version": 1, "state": state("Submitted")} for run_id in run_ids]
    elements.append({"flow_run_id": UNKNOWN, "version": 1, "state": state("Submitted")})
    elements.append({"flow_run_id": third, "version": 2, "state": {"type": "Nonsense"}})
    body = inproc_server.graphql(SET_FLOW, {"input": {"states": elements, "partial": True}})
    assert "errors" not in body
    outcomes = body["data"]["set_flow_run_states"]["states"]
    assert [o["status"] for o in outcomes] == [
        "SUCCESS", "VERSION_LOCKING_ERROR", "SUCCESS", "NOT_FOUND", "BAD_REQUEST"]
    assert outcomes[1]["message"].startswith("State update failed")
    assert "unsupported state type" in outcomes[4]["message"]
    assert [api.flow_run(inproc_server, r)["version"] for r in run_ids] == [2, 2, 2]
    assert api.flow_run(inproc_server, third)["state"] == "Submitted"


def test_without_partial_a_batch_stays_all_or_nothing(inproc_server: InProcessServer,
                                                      run_ids: list[str]) -> None:
    elements = [{"flow_run_id": run_ids[0], "version": 1, "state": state("Submitted")},
                {"flow_run_id": UNKNOWN, "version": 1, "state": state("Submitted")}]
    for partial in (False, None):
        body = inproc_server.graphql(SET_FLOW, {"input": {"states": elements, "partial": partial}})
        assert body["errors"] and body["data"] == {"set_flow_run_states": None}
    assert api.flow_run(inproc_server, run_ids[0])["state"] == "Scheduled"
