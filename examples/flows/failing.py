"""Failing: the second task raises, so the flow run ends Failed (and the downstream task TriggerFailed)."""

from prefect import Flow, task
from prefect.run_configs import DockerRun
from prefect.storage import Docker


@task
def prepare() -> int:
    return 42


@task
def explode(value: int) -> None:
    raise ValueError(f"example failure (input {value})")


@task
def never_runs(_: None) -> None:
    """Upstream failed, so the all_successful trigger marks this TriggerFailed."""


with Flow(
    "failing",
    storage=Docker(
        image_name="local-agent-example-flow",
        image_tag="1.4.1",
        path="/opt/prefect/flows/failing.py",
        stored_as_script=True,
    ),
    run_config=DockerRun(),
) as flow:
    never_runs(explode(prepare()))

if __name__ == "__main__":
    flow.run()
