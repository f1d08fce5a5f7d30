"""Every GraphQL document the agent sends is valid against the contract SDL (and our server's SDL).

The long-poll pieces are our extension, so they are checked against `server/schema.graphql` (the contract plus
extensions) only; every other document must also pass the contract's `cloud-api.graphql` unchanged.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
from graphql import build_schema, parse, validate

REPO = Path(__file__).resolve().parents[2]
CONTRACT_SDL = REPO.parent / "shared" / "design" / "cloud-api.graphql"
SERVER_SDL = REPO / "server" / "schema.graphql"
EXTENSION_DOCUMENTS = {"capabilities.graphql", "create_flow_run_token.graphql"}
DOCUMENTS = sorted(p.name for p in files("agent.api.operations").iterdir() if p.name.endswith(".graphql"))


def errors_against(sdl: Path, name: str) -> list[str]:
    if not sdl.exists():
        pytest.skip(f"{sdl} not present")
    document = parse(files("agent.api.operations").joinpath(name).read_text())
    return [e.message for e in validate(build_schema(sdl.read_text()), document)]


def test_the_documents_we_expect_exist() -> None:
    assert {
        "tenant.graphql",
        "auth_info.graphql",
        "register_agent.graphql",
        "hello.graphql",
        "get_runs_in_queue.graphql",
        "flow_runs.graphql",
        "set_flow_run_states.graphql",
        "set_task_run_states.graphql",
        "write_run_logs.graphql",
        "capabilities.graphql",
    } <= set(DOCUMENTS)


@pytest.mark.parametrize("name", [d for d in DOCUMENTS if d not in EXTENSION_DOCUMENTS])
def test_valid_against_the_contract(name: str) -> None:
    assert errors_against(CONTRACT_SDL, name) == []


@pytest.mark.parametrize("name", DOCUMENTS)
def test_valid_against_our_server_schema(name: str) -> None:
    assert errors_against(SERVER_SDL, name) == []


def test_extension_documents_really_are_extensions() -> None:
    """If this fails the contract gained the field: move the document out of EXTENSION_DOCUMENTS."""
    for name in EXTENSION_DOCUMENTS:
        assert errors_against(CONTRACT_SDL, name) != []


def variable_errors(sdl: Path, name: str, variables: dict) -> list[str]:
    """What the server would say about `variables` for document `name` (input coercion against `sdl`)."""
    from graphql import OperationDefinitionNode
    from graphql.execution.values import get_variable_values

    document = parse(files("agent.api.operations").joinpath(name).read_text())
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    result = get_variable_values(build_schema(sdl.read_text()), operation.variable_definitions, variables)
    return [e.message for e in result] if isinstance(result, list) else []


BATCH_CLAIM = {"input": {"partial": True, "states": [
    {"flow_run_id": "00000000-0000-4000-8000-000000000001", "version": 1, "state": {"type": "Submitted"}},
    {"flow_run_id": "00000000-0000-4000-8000-000000000002", "version": 3, "state": {"type": "Submitted"}}]}}
TIMESTAMPED_LOGS = {"input": {"logs": [
    {"flow_run_id": "00000000-0000-4000-8000-000000000001", "name": "agent", "message": "Submitted",
     "level": "INFO", "timestamp": "2026-01-01T00:00:00.123456+00:00"}]}}


def test_batched_claims_are_our_extension() -> None:
    """The claims send `partial: true` only to a backend advertising "partial_states" (our server)."""
    assert variable_errors(SERVER_SDL, "set_flow_run_states.graphql", BATCH_CLAIM) == []
    if CONTRACT_SDL.exists():
        assert variable_errors(CONTRACT_SDL, "set_flow_run_states.graphql", BATCH_CLAIM) != []


def test_buffered_run_logs_carry_their_timestamp_in_the_contract() -> None:
    for sdl in (CONTRACT_SDL, SERVER_SDL):
        if sdl.exists():
            assert variable_errors(sdl, "write_run_logs.graphql", TIMESTAMPED_LOGS) == []
