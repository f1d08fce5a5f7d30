"""An agent SIGKILLed with launches in flight and restarted under its name, and a server restarted in the
middle of a burst, never fail, lose or double a run (judged by Docker's events and the server)."""

from __future__ import annotations

import json

import pytest

from tests.support.chaos_scenarios import ChaosEnv, kill_restart, server_restart

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_agent_killed_mid_burst_and_restarted_under_its_name(chaos_env: ChaosEnv) -> None:
    verdict = kill_restart(chaos_env, runs=120, agents=3, delay_s=0.4)
    print(json.dumps(verdict.summary(), indent=1))
    assert verdict.figures["in_flight_at_kill"] > 0, "the kill left no launch in flight: this proved nothing"
    assert verdict.problems() == []


def test_server_restarted_mid_burst(chaos_env: ChaosEnv) -> None:
    verdict = server_restart(chaos_env, runs=150, agents=3)
    print(json.dumps(verdict.summary(), indent=1))
    assert verdict.problems() == []
