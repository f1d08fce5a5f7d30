"""Retry: a task that fails on its first attempt and succeeds on the retry; the flow run ends Success.

"First attempt" is `prefect.context.task_run_count`, which the Cloud task runner restores from the run's
state in the backend, so the outcome is the same in every process (no local files, no randomness).
"""

from datetime import timedelta

import prefect
from prefect import Flow, task
from prefect.run_configs import DockerRun
from prefect.storage import Docker


@task(max_retries=1, retry_delay=timedelta(seconds=1))
def flaky() -> str:
    attempt = prefect.context.get("task_run_count", 1)
    if attempt < 2:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return f"succeeded on attempt {attempt}"


@task
def confirm(message: str) -> str:
    prefect.context.get("logger").info(message)
    return message


with Flow(
    "retry",
    storage=Docker(
        image_name="local-agent-example-flow",
        image_tag="1.4.1",
        path="/opt/prefect/flows/retry.py",
        stored_as_script=True,
    ),
    run_config=DockerRun(),
) as flow:
    confirm(flaky())

if __name__ == "__main__":
    flow.run()
