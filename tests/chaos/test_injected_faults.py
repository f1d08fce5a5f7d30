"""Engine faults at create and start never fail, lose or double a run: three agents compete for 150 due runs
through a proxy that fails 8 % of starts and 4 % of creates, judged by Docker's events and the server.

Each fault is `before` (Docker never saw the call) or `after` (Docker created or started the container and
the answer was lost) at random, seeded, so a failure replays with the same fault sequence.
"""

from __future__ import annotations

import json

import pytest

from tests.support.chaos_scenarios import ChaosEnv, fault_burst

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_every_run_starts_exactly_once_under_engine_faults(chaos_env: ChaosEnv) -> None:
    verdict = fault_burst(chaos_env, runs=150, agents=3, fail_start=0.08, fail_create=0.04, mode="mixed")
    print(json.dumps(verdict.summary(), indent=1))
    faults = chaos_env.proxy.counters().faults
    assert verdict.faults["faults_total"] > 0, "no fault was injected: this test proved nothing"
    assert {mode for _, mode in faults} == {"before", "after"}, f"both fault modes must occur: {faults}"
    assert verdict.problems() == []
