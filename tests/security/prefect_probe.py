"""What Prefect 1.4.1 makes of a flow container's environment: run inside the Prefect 1.4.1 virtualenv.

Reads a JSON list of environments on stdin and prints, for each, what `prefect execute flow-run` would use:
the client's API URL, key and tenant (`prefect.Client()` under `prefect.context.config`), the backend, the
flow run in context, the default flow/task runner and executor classes, and what requests adds to a call to
the API (proxies, CA bundle). Nothing is computed by this file itself: Prefect's own import loads the config.

Each environment is judged by a fresh `import prefect` with exactly that `os.environ`: in a forked child of a
process that has imported only Prefect's third-party dependencies (`--fork`, the default, fast), or in a
fresh interpreter (`--fresh`, the reference the test compares the fork mode against).
Usage: python prefect_probe.py [--fork|--fresh|--one] < envs.json > results.json
It must import nothing from the project: it runs in a virtualenv that has only Prefect.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from typing import Any

JOBS = 2  # forked children at once (the test machine has two cores)
# Run as a script, this directory would lead sys.path and its modules could shadow Prefect's dependencies.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def observe() -> dict[str, Any]:
    """What the flow runner would use, from a fresh `import prefect` under the current os.environ."""
    import prefect  # type: ignore[import-not-found]  # only in the Prefect 1.4.1 virtualenv
    import requests
    from prefect.engine import (  # type: ignore[import-not-found]
        get_default_executor_class,
        get_default_flow_runner_class,
        get_default_task_runner_class,
    )

    client = prefect.Client()
    executor = get_default_executor_class()()
    session = requests.Session()
    transport = session.merge_environment_settings(client.api_server, {}, None, True, None)
    proxy = requests.utils.select_proxy(client.api_server, transport["proxies"])
    return {
        "api": client.api_server,
        "api_key": client.api_key,
        "tenant_id": client._tenant_id,
        "backend": prefect.config.backend,
        "context_backend": prefect.context.config.backend,
        "flow_run_id": prefect.context.get("flow_run_id"),
        "flow_id": prefect.context.get("flow_id"),
        "flow_runner": _qualname(get_default_flow_runner_class()),
        "task_runner": _qualname(get_default_task_runner_class()),
        "executor": _qualname(type(executor)),
        "executor_address": getattr(executor, "address", None),
        "executor_cluster": _qualname(getattr(executor, "cluster_class", None)),
        "proxy": proxy,
        "verify": transport["verify"],
        "key_copies": key_copies(prefect.context, client.api_key),
    }


def key_copies(context: Any, key: str | None) -> list[str]:
    """Where else in the logging config the API key landed (a `${cloud.api_key}` or `$PREFECT__CLOUD__API_KEY`
    in the value): the CloudHandler formats every log line with it and sends it to the run's logs."""
    from prefect.utilities.collections import dict_to_flatdict  # type: ignore[import-not-found]

    if not key:
        return []
    own = {("config", "cloud", "api_key"), ("config", "cloud", "auth_token")}
    flat = dict_to_flatdict(dict(context))
    return sorted(".".join(map(str, path)) for path, value in flat.items()
                  if tuple(path) not in own and path[:2] == ("config", "logging") and key in str(value))


def _qualname(obj: Any) -> str | None:
    if obj is None:
        return None
    if isinstance(obj, str):
        return obj
    return f"{obj.__module__}.{obj.__qualname__}"


def observe_safely() -> dict[str, Any]:
    """A config Prefect cannot load stops the runner before it sends anything: reported, not raised."""
    try:
        return observe()
    except BaseException as exc:  # noqa: BLE001 - any failure of Prefect's import is a result
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return {"error": f"{type(exc).__name__}: {exc} ({os.path.basename(last.filename)}:{last.lineno})"}


def set_environ(env: dict[str, str]) -> None:
    """Exactly `env`, in its order (Prefect reads os.environ in order; later duplicates of a key win)."""
    os.environ.clear()
    os.environ.update(env)


def preload() -> None:
    """Import Prefect's third-party dependencies (not Prefect) so each forked child imports only Prefect."""
    names = subprocess.run(
        [sys.executable, "-c", "import sys, prefect; print('\\n'.join(sorted({m.split('.')[0] "
         "for m in sys.modules if not m.startswith(('prefect', '_', '__'))})))"],
        env={"PATH": os.environ.get("PATH", "")}, capture_output=True, text=True, check=True,
    ).stdout.split()
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - an optional module missing here is missing in children too
            continue


def judge_forked(envs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One forked child per environment, JOBS at a time; each writes its JSON result to a pipe."""
    preload()
    results: list[dict[str, Any]] = [{} for _ in envs]
    for start in range(0, len(envs), JOBS):
        children = [(index, *_fork(envs[index])) for index in range(start, min(start + JOBS, len(envs)))]
        for index, pid, reader in children:
            with os.fdopen(reader) as stream:
                text = stream.read()
            os.waitpid(pid, 0)
            results[index] = json.loads(text) if text else {"error": "probe child wrote nothing"}
    return results


def _fork(env: dict[str, str]) -> tuple[int, int]:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(reader)
        set_environ(env)
        payload = json.dumps(observe_safely(), default=str)
        with os.fdopen(writer, "w") as stream:
            stream.write(payload)
        os._exit(0)
    os.close(writer)
    return pid, reader


def judge_fresh(envs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The reference: a new interpreter per environment, given exactly that environment."""
    results = []
    for env in envs:
        proc = subprocess.run([sys.executable, __file__, "--one"], env=env, capture_output=True, text=True,
                              timeout=60)
        results.append(json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]})
    return results


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "--fork"
    if mode == "--one":
        print(json.dumps(observe_safely(), default=str))
        return
    envs = json.load(sys.stdin)
    judge = judge_fresh if mode == "--fresh" else judge_forked
    print(json.dumps(judge(envs), default=str))


if __name__ == "__main__":
    main()
