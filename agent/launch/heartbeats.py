"""Flow-run heartbeats while the agent itself holds a run (pulling its image, creating its container).

The backend's zombie handler (Prefect Server's Lazarus) reschedules Submitted runs whose heartbeat is older
than 10 minutes. Submitted sets the heartbeat once; a pull longer than that would otherwise get the run
rescheduled while it is still being launched, and a second agent could start it too (peers.md, point 2).
Once the container runs, the flow runner sends its own heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from loguru import logger

from agent.api.cloud import ApiError, CloudClient
from agent.ops.metrics import METRICS


async def send_heartbeat(cloud: CloudClient, flow_run_id: str) -> None:
    """One heartbeat (no retries: the next beat is the retry)."""
    await cloud.heartbeat(flow_run_id)
    METRICS.heartbeats.inc()


async def _beat(cloud: CloudClient, flow_run_id: str, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await send_heartbeat(cloud, flow_run_id)
        except ApiError as exc:  # a missed beat is harmless unless it lasts 10 minutes; keep trying
            logger.debug("flow run {id}: heartbeat failed: {error}", id=flow_run_id, error=exc)


@contextlib.asynccontextmanager
async def run_heartbeats(cloud: CloudClient, flow_run_id: str, interval: float) -> AsyncIterator[None]:
    """Send the run's heartbeat every `interval` s while the body runs (the claim already sent the first)."""
    task = asyncio.create_task(_beat(cloud, flow_run_id, interval), name=f"heartbeat-{flow_run_id}")
    try:
        yield
    finally:
        task.cancel()  # not awaited: the body's own outcome (or cancellation) must not wait on a beat
