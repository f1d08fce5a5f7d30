"""`local-agent start | config`: the entry point, the only place that configures logging and builds settings.

Every setting gets a `start` flag generated from the settings model, so a new field cannot be forgotten.
Exit codes: 0 clean stop, 1 the backend refused the agent (token, scope, tenant), 2 invalid configuration,
3 the Docker daemon is unreachable at start.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from agent import __version__
from agent.settings import Settings, effective_config, env_name, load_settings

EXIT_CONFIG = 2
# Short and historical flag names (Prefect's `prefect agent local start` used -t, -l, -e, -n).
FLAG_NAMES: dict[str, list[str]] = {
    "api_token": ["-t", "--token"],
    "labels": ["-l", "--label"],
    "env_vars": ["-e", "--env"],
    "container_labels": ["--container-label"],
    "name": ["-n", "--name"],
    "api": ["--api"],
    "volumes": ["-v", "--volume"],
}
REPEATABLE = {"labels", "env_vars", "container_labels", "network", "volumes", "allowed_images",
              "allowed_run_overrides", "allowed_host_paths"}


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return isinstance(annotation, types.UnionType) and bool in typing.get_args(annotation)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field; unset flags stay absent so env and files still apply."""
    for name, field in Settings.model_fields.items():
        flags = FLAG_NAMES.get(name, [f"--{name.replace('_', '-')}"])
        help_text = f"env {env_name(name)} (default: {field.get_default(call_default_factory=True)!r})"
        if name == "api_token":
            help_text = "API token/key; env PREFECT__CLOUD__AGENT__API_TOKEN (or secret file, config.toml)"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if _is_bool(field.annotation) and name.startswith("no_"):
            parser.add_argument(*flags, action="store_true", **kwargs)
        elif _is_bool(field.annotation):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        elif name in REPEATABLE:
            parser.add_argument(*flags, action="append", metavar="VALUE", **kwargs)
        else:
            parser.add_argument(*flags, metavar=name.upper(), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="local-agent", description="Prefect 1.x Local Agent (Docker).")
    parser.add_argument("--version", action="version", version=f"local-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start the agent (blocks until SIGTERM/SIGINT)")
    add_setting_flags(start)
    config = commands.add_parser("config", help="print the effective settings as JSON (secrets masked)")
    add_setting_flags(config)
    explain = commands.add_parser(
        "explain", help="print the container the agent would create for a flow run, and where each field "
        "comes from (claims nothing, creates nothing)")
    explain.add_argument("flow_run_id", help="the flow run's id")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_setting_flags(explain)
    check = commands.add_parser(
        "check", help="ask the running agent's health server (HEALTH_ADDRESS): exit 0 if healthy, else 1")
    check.add_argument("--ready", action="store_true", help="ask /ready (can it take work?) not /api/health")
    add_setting_flags(check)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    return load_settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"local-agent: invalid configuration: {errors}", file=sys.stderr)  # no traceback wall
        return EXIT_CONFIG
    if args.command == "config":
        print(json.dumps(effective_config(settings), indent=2, sort_keys=True))
        return 0
    if args.command == "check":
        from agent.health import check

        code, message = check(settings, ready=args.ready)
        print(f"local-agent check: {message}", file=sys.stdout if code == 0 else sys.stderr)
        return code
    if args.command == "explain":
        from agent.explain import run_explain

        return run_explain(settings, args.flow_run_id, as_json=args.json)
    return run_agent(settings)


def run_agent(settings: Settings) -> int:
    """Start the agent; a start-up refusal is one clear log line and a non-zero exit code."""
    from loguru import logger

    from agent.agent import LocalAgent, StartupError
    from agent.logs import configure_logging

    configure_logging(settings.level, secrets=[settings.token])
    try:
        LocalAgent(settings).start(configure_logs=False)
    except StartupError as exc:
        logger.error("{error}", error=exc)
        return exc.exit_code
    return 0
