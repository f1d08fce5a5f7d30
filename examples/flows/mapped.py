"""Mapped: a task mapped over `count` items (the backend creates the children on demand), then a reduce."""

import prefect
from prefect import Flow, Parameter, task
from prefect.run_configs import DockerRun
from prefect.storage import Docker


@task
def numbers(count: int) -> list:
    return list(range(1, count + 1))


@task
def square(x: int) -> int:
    return x * x


@task
def total(values: list) -> int:
    result = sum(values)
    prefect.context.get("logger").info("sum of squares: %s", result)
    return result


with Flow(
    "mapped",
    storage=Docker(
        image_name="local-agent-example-flow",
        image_tag="1.4.1",
        path="/opt/prefect/flows/mapped.py",
        stored_as_script=True,
    ),
    run_config=DockerRun(),
) as flow:
    count = Parameter("count", default=3)
    total(square.map(numbers(count)))

if __name__ == "__main__":
    flow.run()
