"""Hello: a Parameter and three tasks; ends Success and logs the greeting.

Stored as a script in the example image (`/opt/prefect/flows/hello.py`), so `prefect execute flow-run`
inside the container loads the flow from this file instead of a pickle.
"""

import prefect
from prefect import Flow, Parameter, task
from prefect.run_configs import DockerRun
from prefect.storage import Docker


@task
def greet(name: str) -> str:
    return f"Hello, {name}!"


@task
def shout(greeting: str) -> str:
    return greeting.upper()


@task
def report(text: str) -> str:
    prefect.context.get("logger").info("greeting: %s", text)
    return text


with Flow(
    "hello",
    storage=Docker(
        image_name="local-agent-example-flow",
        image_tag="1.4.1",
        path="/opt/prefect/flows/hello.py",
        stored_as_script=True,
    ),
    run_config=DockerRun(),
) as flow:
    name = Parameter("name", default="world")
    report(shout(greet(name)))

if __name__ == "__main__":
    flow.run()
