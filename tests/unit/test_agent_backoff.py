"""Poll-loop delays: Prefect's idle sequence and the capped, jittered failure backoff."""

from __future__ import annotations

from agent.ops.backoff import FailureBackoff, IdleBackoff


def test_idle_backoff_sequence_caps_at_10_and_resets() -> None:
    idle = IdleBackoff()
    assert [idle.next() for _ in range(9)] == [0.25, 0.5, 1, 2, 4, 8, 10, 10, 10]
    idle.reset()
    assert idle.next() == 0.25


def test_failure_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = FailureBackoff(base=1.0, cap=8.0, jitter=0.2)
    assert backoff.delay() == 0
    delays = [backoff.failed() for _ in range(6)]
    for n, delay in enumerate(delays):
        nominal = min(2.0**n, 8.0)
        assert 0.8 * nominal <= delay <= 1.2 * nominal
    assert backoff.failures == 6
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.delay() == 0
