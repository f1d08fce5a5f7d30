"""Sleepy: one task sleeps `seconds` (default 300), long enough to cancel the run while it is Running.

The sleep is sliced so the SIGINT sent by the Cloud flow runner's cancellation watcher lands promptly.
"""

import time

import prefect
from prefect import Flow, Parameter, task
from prefect.run_configs import DockerRun
from prefect.storage import Docker


@task
def nap(seconds: float) -> float:
    logger = prefect.context.get("logger")
    logger.info("sleeping %s s", seconds)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    return float(seconds)


with Flow(
    "sleepy",
    storage=Docker(
        image_name="local-agent-example-flow",
        image_tag="1.4.1",
        path="/opt/prefect/flows/sleepy.py",
        stored_as_script=True,
    ),
    run_config=DockerRun(),
) as flow:
    seconds = Parameter("seconds", default=300)
    nap(seconds)

if __name__ == "__main__":
    flow.run()
