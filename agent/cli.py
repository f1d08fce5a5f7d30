"""`local-agent start | config | check | explain`: the entry point, the only place that configures logging
and builds settings.

Every setting gets a flag generated from the settings model (on each subcommand, `cli_flags.py`), so a new
field cannot be forgotten; Prefect 1.x agent flags are accepted where they mean the same thing.

* `start` runs the agent. Exit codes: 0 clean stop after SIGTERM/SIGINT and the drain; 1 the backend refused
  the agent (token, scope, tenant), a second signal during the drain, or a crash; 2 invalid configuration or
  an unbindable `HEALTH_ADDRESS`; 3 the Docker daemon unreachable at start, or for `DOCKER_OUTAGE_EXIT_S`
  while running.
* `config` prints the effective settings as JSON, secrets masked: 0, or 2 on invalid configuration.
* `explain FLOW_RUN_ID` prints the container the agent would create for a run (claims nothing): 0 when
  explained, whatever the verdict; 1 when the run cannot be read; 2 on invalid configuration.
* `check` asks the running agent's health server: 0 healthy, 1 anything else, invalid configuration and
  bad arguments included. Docker reserves exit code 2 of a HEALTHCHECK command ("reserved, do not use").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from agent.cli_flags import CommandParser, HelpFormatter, add_setting_flags
from agent.exits import EXIT_CONFIG, EXIT_UNHEALTHY
from agent.settings import Settings, effective_config, load_settings
from agent.version import __version__

EPILOG = (
    "Every option is also an environment variable (shown with it). Precedence: flags > environment > secret "
    "files > ~/.prefect/config.toml > defaults. Prefect 1.x `prefect agent docker start` flags are accepted "
    "where they mean the same thing (docs/running.md)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="local-agent", description="Prefect 1.x Local Agent (Docker).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"local-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    command: dict[str, Any] = {"usage": "%(prog)s [options]", "epilog": EPILOG,
                               "formatter_class": HelpFormatter}
    start_help = "start the agent (blocks until SIGTERM/SIGINT)"
    start = commands.add_parser("start", help=start_help, description=start_help, **command)
    add_setting_flags(start)
    config_help = "print the effective settings as JSON (secrets masked)"
    config = commands.add_parser("config", help=config_help, description=config_help, **command)
    add_setting_flags(config)
    explain_help = ("print the container the agent would create for a flow run, and where each field comes "
                    "from (claims nothing, creates nothing)")
    explain = commands.add_parser("explain", help=explain_help, description=explain_help,
                                  **{**command, "usage": "%(prog)s [options] FLOW_RUN_ID"})
    explain.add_argument("flow_run_id", help="the flow run's id")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_setting_flags(explain)
    check_help = "ask the running agent's health server (HEALTH_ADDRESS): exit 0 if healthy, else 1"
    check = commands.add_parser("check", help=check_help, description=check_help, **command)
    check.add_argument("--ready", action="store_true", help="ask /ready (can it take work?) not /api/health")
    add_setting_flags(check)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    return load_settings(**overrides)


def _is_check(argv: Sequence[str] | None) -> bool:
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    return bool(words) and words[0] == "check"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse exits 2 on bad arguments; for `check` (a HEALTHCHECK command) that becomes 1."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None) and _is_check(argv):
            raise SystemExit(EXIT_UNHEALTHY) from None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"local-agent: invalid configuration: {errors}", file=sys.stderr)  # no traceback wall
        return EXIT_UNHEALTHY if args.command == "check" else EXIT_CONFIG
    if args.command == "config":
        print(json.dumps(masked_config(settings), indent=2, sort_keys=True))
        return 0
    if args.command == "check":
        from agent.ops.health import check

        code, message = check(settings, ready=args.ready)
        print(f"local-agent check: {message}", file=sys.stdout if code == 0 else sys.stderr)
        return code
    if args.command == "explain":
        from agent.explain import run_explain

        return run_explain(settings, args.flow_run_id, as_json=args.json)
    return run_agent(settings)


def masked_config(settings: Settings) -> dict[str, Any]:
    """`effective_config` as `config` prints it: `ENV_VARS` with secret names as `***`, and every URL
    password or known secret (token, registry passwords) masked wherever it appears."""
    from agent.ops.logs import Masker
    from agent.ops.redact import mask_data, mask_env
    from agent.settings import settings_secrets

    mask = Masker(settings_secrets(settings))
    data = effective_config(settings)
    data["env_vars"] = mask_env(data.get("env_vars") or {}, mask)
    return dict(mask_data(data, mask))


def run_agent(settings: Settings) -> int:
    """Start the agent; a start-up refusal is one clear log line and a non-zero exit code."""
    from loguru import logger

    from agent.startup import warm_docker

    runtime = warm_docker(settings)  # connects in a thread while the agent's modules are imported
    from agent.agent import LocalAgent, StartupError
    from agent.ops.logs import configure_logging
    from agent.settings import settings_secrets

    configure_logging(settings.level, secrets=settings_secrets(settings))
    try:
        LocalAgent(settings, runtime=runtime).start(configure_logs=False)
    except StartupError as exc:
        logger.error("{error}", error=exc)
        return exc.exit_code
    return 0
