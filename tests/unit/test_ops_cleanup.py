"""Which of the agent's containers the cleanup removes, and when (pure decisions, no Docker)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from agent.runtime.docker_types import ContainerInfo
from agent.supervise.cleanup import GONE, keep_notice, removal_reason, remove_at_once, succeeded

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def info(status: str = "exited", code: int | None = 0, oom: bool = False,
         age_s: float = 120) -> ContainerInfo:
    finished = (NOW - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    return ContainerInfo(id="c" * 64, name="prefect-x", status=status, labels={}, exit_code=code,
                         oom_killed=oom, created="", finished_at=None if status == "running" else finished)


@pytest.mark.parametrize(("container", "state", "expected"), [
    (info(), "Success", "succeeded"),
    (info(), "Cancelled", None),  # cancelled is not successful: kept like a failed run
    (info(), "Scheduled", "succeeded"),  # a retry: the next attempt must not find the old container
    (info(), GONE, "succeeded"),  # the run was deleted
    (info(age_s=30), "Success", None),  # younger than one sweep interval: still there to look at
    (info(), "Failed", None),  # exit 0 but the flow failed: evidence is kept
    (info(), "Submitted", None),  # exit not recorded in the run yet
    (info(), None, None),  # the API could not be asked
    (info(code=1), "Success", None),
    (info(code=137, oom=True), "Failed", None),
    (info(code=1, age_s=25 * 3600), "Failed", "expired"),
    (info(code=0, age_s=25 * 3600), "Submitted", "expired"),
    (info(code=1, age_s=25 * 3600), None, "expired"),
    (info(status="running", code=None), "Success", None),
    (info(status="created", code=None), GONE, None),
])
def test_removal_reason(container: ContainerInfo, state: str | None, expected: str | None) -> None:
    assert removal_reason(container, state, keep_hours=24, min_age_s=60, now=NOW) == expected


def test_kept_successful_containers_wait_their_own_hours_not_the_failed_ones() -> None:
    old = info(age_s=2 * 3600)
    assert removal_reason(old, "Success", keep_hours=1, min_age_s=60, now=NOW,
                          keep_successful_hours=3) is None
    assert removal_reason(old, "Success", keep_hours=24, min_age_s=60, now=NOW,
                          keep_successful_hours=1) == "succeeded"


@pytest.mark.parametrize(("container", "ended", "keep", "expected"), [
    (info(age_s=0), "Success", 0, True),
    (info(age_s=0), "Cached", 0, True),
    (info(age_s=0), "Success", 0.5, False),  # the operator keeps them
    (info(code=1), "Success", 0, False),
    (info(code=137, oom=True), "Success", 0, False),
    (info(), "Failed", 0, False),
    (info(), "Cancelled", 0, False),
    (info(), "state still Running", 0, False),  # exit 0 without a final state: the sweep decides later
    (info(), "Scheduled", 0, False),
    (info(), None, 0, False),  # the run is gone or unknown
    (info(status="running", code=None), "Success", 0, False),
    (None, "Success", 0, False),
])
def test_remove_at_once_only_after_a_successful_end(container: ContainerInfo | None, ended: str | None,
                                                    keep: float, expected: bool) -> None:
    assert remove_at_once(container, ended, keep) is expected


def test_keep_zero_hours_removes_failed_ones_at_once() -> None:
    assert removal_reason(info(code=1, age_s=1), "Failed", keep_hours=0, min_age_s=60, now=NOW) == "expired"


def test_keep_notice_tells_how_to_read_the_evidence() -> None:
    assert keep_notice("prefect-x", 24) == ("The container is kept for 24 h on the agent's Docker host for "
                                            "debugging: docker logs prefect-x")
    assert "removed at the next cleanup" in keep_notice("prefect-x", 0)


def test_a_cancelled_runs_container_is_kept_like_a_failed_ones_even_after_exit_0() -> None:
    now = time.time()
    finished = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(now - 600))
    container = ContainerInfo(id="c" * 64, name="prefect-x", status="exited", labels={}, exit_code=0,
                              oom_killed=False, created="", finished_at=finished)
    assert not succeeded(container, "Cancelled")
    assert removal_reason(container, "Cancelled", keep_hours=24, min_age_s=60) is None
    assert removal_reason(container, "Cancelled", keep_hours=0.1, min_age_s=60) == "expired"
    assert removal_reason(container, "Success", keep_hours=24, min_age_s=60) == "succeeded"
