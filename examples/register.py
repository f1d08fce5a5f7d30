"""Register the example flows with a Prefect 1.x backend and optionally create flow runs.

Runs with Prefect 1.4.1, on a host virtualenv or inside the example flow image (`/opt/prefect/register.py`):

    PREFECT__BACKEND=server PREFECT__CLOUD__API=http://localhost:4200 python register.py --create-run
    PREFECT__BACKEND=cloud PREFECT__CLOUD__API=... PREFECT__CLOUD__API_KEY=... python register.py

Each flow keeps its Docker storage (`build=False`: the image already exists, nothing is built or pushed); the
image name, tag and registry recorded in the storage come from the arguments, so an agent starts the right
image. A JSON summary (flow ids, run ids) is printed on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pendulum
import prefect
import requests
from prefect import Client
from prefect.utilities.storage import extract_flow_from_file

HERE = Path(__file__).resolve().parent
DEFAULT_FLOWS = ("hello", "failing", "mapped", "retry", "sleepy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", default=env("EXAMPLE_PROJECT", "examples"))
    parser.add_argument(
        "--flow", action="append", dest="flows", help="flow file stem (repeatable; default: all)"
    )
    parser.add_argument("--flows-dir", type=Path, default=Path(env("EXAMPLE_FLOWS_DIR", str(HERE / "flows"))),
                        help="where the flow files are read from")
    parser.add_argument("--storage-dir", default=env("EXAMPLE_STORAGE_DIR"),
                        help="directory recorded as the script path in storage (default: as in the flow)")
    parser.add_argument("--image-name", default=env("EXAMPLE_FLOW_IMAGE_NAME", "local-agent-example-flow"))
    parser.add_argument("--image-tag", default=env("EXAMPLE_FLOW_IMAGE_TAG", "1.4.1"))
    parser.add_argument("--registry-url", default=env("EXAMPLE_REGISTRY_URL") or None)
    parser.add_argument("--label", action="append", dest="labels",
                        default=[x for x in env("EXAMPLE_FLOW_LABELS", "").split(",") if x],
                        help="run label (repeatable; env EXAMPLE_FLOW_LABELS is comma-separated)")
    parser.add_argument("--create-run", action="store_true", help="create flow run(s) after registering")
    parser.add_argument("--runs-per-flow", type=int, default=1)
    parser.add_argument("--parameters", type=json.loads, default={},
                        help="JSON object; each run gets the keys its flow declares as Parameters")
    parser.add_argument("--scheduled-in", type=float, default=0.0, help="seconds from now to schedule runs")
    parser.add_argument("--wait-api", type=float, default=60.0, help="seconds to wait for the API to answer")
    parser.add_argument("--dump-json", type=Path,
                        help="write a `prefect register --json` file instead of registering")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_api(api: str, timeout: float) -> None:
    """Poll the endpoint until it answers HTTP at all: in compose the server may still be starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.post(api, json={"query": "query { hello }"}, timeout=5)
            return
        except requests.RequestException as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(f"API {api} did not answer within {timeout:.0f} s: {exc}") from exc
            time.sleep(1)


def load_flow(args: argparse.Namespace, stem: str) -> prefect.Flow:
    """Load one example flow and point its Docker storage at the requested image and script path."""
    flow = extract_flow_from_file(file_path=str(args.flows_dir / f"{stem}.py"))
    storage = flow.storage
    storage.image_name = args.image_name
    storage.image_tag = args.image_tag
    storage.registry_url = args.registry_url
    if args.storage_dir:
        storage.path = f"{args.storage_dir.rstrip('/')}/{stem}.py"
    storage.add_flow(flow)  # build=False skips add_flow, but storage.flows must map name -> script path
    if args.labels:
        flow.run_config.labels.update(args.labels)
    return flow


def create_runs(client: Client, flow: prefect.Flow, flow_id: str, args: argparse.Namespace) -> list[str]:
    declared = {p.name for p in flow.parameters()}
    parameters = {k: v for k, v in args.parameters.items() if k in declared}
    start = pendulum.now("UTC").add(seconds=args.scheduled_in) if args.scheduled_in else None
    return [
        client.create_flow_run(flow_id=flow_id, parameters=parameters or None, scheduled_start_time=start)
        for _ in range(args.runs_per_flow)
    ]


def dump_json(flows: list[prefect.Flow], path: Path) -> None:
    """The file format of `prefect build`, so `prefect register --json` takes the CLI registration path."""
    path.write_text(json.dumps({"version": 1, "flows": [f.serialize(build=False) for f in flows]}))
    log(f"wrote {len(flows)} flows to {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    flows = [load_flow(args, stem) for stem in (args.flows or DEFAULT_FLOWS)]
    if args.dump_json:
        dump_json(flows, args.dump_json)
        return {"json": str(args.dump_json), "flows": [f.name for f in flows]}
    api = prefect.config.cloud.api
    wait_for_api(api, args.wait_api)
    client = Client()
    project_id = client.create_project(project_name=args.project)  # handles "Uniqueness violation."
    summary: dict[str, Any] = {"api": api, "backend": prefect.config.backend, "project": args.project,
                               "project_id": project_id, "flows": {}}
    for flow in flows:
        flow_id = flow.register(
            project_name=args.project, build=False, set_schedule_active=False, no_url=True
        )
        runs = create_runs(client, flow, flow_id, args) if args.create_run else []
        log(f"registered {flow.name!r} as {flow_id} (image {flow.storage.name}); runs: {runs}")
        summary["flows"][flow.name] = {"flow_id": flow_id, "image": flow.storage.name,
                                       "labels": sorted(flow.run_config.labels), "runs": runs}
    return summary


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):  # Prefect prints progress; stdout carries only the JSON
        result = main()
    print(json.dumps(result), flush=True)
