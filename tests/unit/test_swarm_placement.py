"""A run's own Swarm placement (`host_config.placement`): judged by the same policy as every other key, only
under the swarm engine, and joined to the agent's placement so that a run can narrow where it runs, never
widen it. Hostile placements are generated; the real swarm judges them in
`tests/integration/test_swarm_runtime.py`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.api.models import FlowRun
from agent.launch.plan import Identity, plan_container
from agent.policy.rules import PolicyDenied
from agent.runtime.engines import swarm_options
from agent.runtime.swarm_spec import service_spec
from agent.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_prefect_env")

AGENT_CONSTRAINTS = ["node.labels.pool==flows", "node.role!=manager"]
STORAGE = {"type": "Docker", "image_name": "img", "image_tag": "1"}


def _run(host_config: Any) -> FlowRun:
    return FlowRun.model_validate({
        "id": "run-p", "version": 1, "run_config": {"type": "DockerRun", "host_config": host_config},
        "flow": {"id": "f", "name": "flow", "core_version": "1.4.1", "storage": STORAGE},
    })


def placement_of(host_config: Any, **overrides: Any) -> dict[str, Any]:
    """The `Placement` of the service the swarm engine would create for a run with `host_config`."""
    settings = Settings(engine="swarm", swarm_constraints=AGENT_CONSTRAINTS,
                        swarm_preferences=["node.labels.zone"], **overrides)
    planned = plan_container(_run(host_config), "img:1", settings, Identity("a", [], "t", "http://api", []))
    kwargs = service_spec(planned.spec, swarm_options(settings), "img:1")
    return dict(kwargs["task_template"]["Placement"])


def test_a_runs_constraints_join_the_agents_and_its_preferences_follow_them() -> None:
    placement = placement_of({"placement": {"constraints": ["node.labels.gpu==true", " node.role!=manager "],
                                            "preferences": ["node.labels.rack"]}})
    assert placement["Constraints"] == [*AGENT_CONSTRAINTS, "node.labels.gpu==true"]
    assert placement["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}},
                                        {"Spread": {"SpreadDescriptor": "node.labels.rack"}}]


def test_placement_is_denied_under_the_docker_engine_with_the_way_out() -> None:
    run = _run({"placement": {"constraints": ["node.labels.gpu==true"]}})
    with pytest.raises(PolicyDenied) as denied:
        plan_container(run, "img:1", Settings(), Identity("a", [], "t", "http://api", []))
    assert "host_config.placement" in str(denied.value) and "ENGINE=swarm" in str(denied.value)


@pytest.mark.parametrize("placement", [
    {"constraints": ["node.role==manager,node.labels.x==1"]},  # two in one: a comma is no separator here
    {"constraints": ["node.role=='"]},  # outside Swarm's value alphabet (Swarm itself: "value is invalid")
    {"constraints": ["node.labels.x==a b"]},
    {"constraints": ["node.role"]},
    {"constraints": ["node.role==manager", 3]},
    {"preferences": ["node.hostname"]},  # only label spreads exist
    {"Constraints": ["node.role==manager"]},  # exact spellings only
    {"constraints": ["node.labels.a==b"] * 33},
    {"constraints": "node.role==manager"},
])
def test_malformed_placements_are_denied_before_anything_is_created(placement: dict[str, Any]) -> None:
    with pytest.raises(PolicyDenied) as denied:
        placement_of({"placement": placement})
    assert "placement" in str(denied.value)


CONSTRAINT = st.builds(
    lambda key, op, value: f"{key}{op}{value}",
    st.sampled_from(["node.role", "node.labels.pool", "node.hostname", "engine.labels.x", "node.id"]),
    st.sampled_from(["==", "!="]),
    st.text(st.sampled_from("abcXYZ019:_.*()?+[]\\^$|/-"), min_size=1, max_size=20),  # Swarm's value alphabet
)


@settings(max_examples=60, deadline=None)
@given(st.lists(CONSTRAINT, max_size=6), st.lists(st.sampled_from(["node.labels.a", "node.labels.b"]),
                                                    max_size=3))
def test_no_run_placement_ever_drops_an_agent_constraint(constraints: list[str], spreads: list[str]) -> None:
    placement = placement_of({"placement": {"constraints": constraints, "preferences": spreads}})
    kept = placement["Constraints"]
    assert kept[:len(AGENT_CONSTRAINTS)] == AGENT_CONSTRAINTS
    assert set(kept) == set(AGENT_CONSTRAINTS) | {c.strip() for c in constraints}


@pytest.mark.parametrize("host_config", [
    {"binds": ["/srv/flows/x:/mnt"]},
    {"volumes": {"/srv/flows": {"bind": "/data", "mode": "ro"}}},
    {"mounts": [{"Type": "bind", "Source": "/srv/flows", "Target": "/data"}]},
])
def test_a_runs_host_path_needs_its_own_override_under_swarm(host_config: dict[str, Any]) -> None:
    """The agent resolves host paths on its own host; Swarm binds them on another node, where a symlink the
    agent cannot see may lead anywhere. Allowed paths alone are not enough there."""
    with pytest.raises(PolicyDenied) as denied:
        placement_of(host_config, allowed_host_paths=["/srv/flows"])
    assert "--allowed-run-overrides swarm_host_paths" in str(denied.value)
    placement_of(host_config, allowed_host_paths=["/srv/flows"], allowed_run_overrides=["swarm_host_paths"])
    with pytest.raises(PolicyDenied):  # the override adds to the allow-list, it does not replace it
        placement_of({"binds": ["/etc:/mnt"]}, allowed_host_paths=["/srv/flows"],
                     allowed_run_overrides=["swarm_host_paths"])


def test_named_volumes_and_the_agents_own_volumes_need_no_swarm_override() -> None:
    placement_of({"binds": ["cache:/cache"]}, allowed_run_overrides=["volumes"])
    placement_of(None, volumes=["/srv/shared:/shared:ro"])
