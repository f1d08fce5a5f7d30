"""The settings flags of `local-agent start | config | check | explain`, generated from the settings model.

One flag per `Settings` field, so a new field cannot be forgotten; its help is the field's sentence
(`settings_help.py`), its environment variable and its default as a user would type it. Prefect 1.x's
`prefect agent docker start` flags are accepted where they mean the same thing, and refused with the
replacement where they do not, because users type them from habit.
"""

from __future__ import annotations

import argparse
import difflib
import re
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from agent.settings import Settings, env_name
from agent.settings_help import SETTING_HELP

# Short and historical names: Prefect 1.x's `prefect agent docker start` / `local start` spell them so.
FLAG_NAMES: dict[str, list[str]] = {
    "api": ["-a", "--api"],
    "api_token": ["-t", "--token", "-k", "--key"],  # metavar TOKEN, below
    "name": ["-n", "--name"],
    "labels": ["-l", "--label"],
    "env_vars": ["-e", "--env"],
    "container_labels": ["--container-label"],
    "volumes": ["-v", "--volume"],
    "base_url": ["-b", "--base-url"],
    "show_flow_logs": ["-f", "--show-flow-logs"],
    "level": ["--level", "--log-level"],
    "docker_timeout": ["--docker-timeout", "--docker-client-timeout"],
}
# The option groups of `--help`, in the order of docs/running.md, docs/run-options.md and docs/operations.md.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the API and the agent's identity", (
        "api", "api_token", "name", "labels", "flow_api_url", "secrets_dir")),
    ("the engine (docs/running.md)", (
        "engine", "base_url", "docker_timeout", "swarm_constraints", "swarm_preferences", "swarm_network",
        "swarm_schedule_timeout", "swarm_gpu_resource")),
    ("flow containers (docs/run-options.md)", (
        "env_vars", "container_labels", "volumes", "network", "host_gateway", "init", "memory", "max_memory",
        "cpus", "max_cpus", "pids_limit", "max_pids_limit", "gpus", "runtime", "pull_policy", "no_pull",
        "registry_credentials", "max_concurrent_runs")),
    ("the policy over run configs (docs/run-options.md)", (
        "allowed_images", "allowed_run_overrides", "allowed_host_paths", "host_root")),
    ("polling and launching", (
        "prefetch_seconds", "long_poll_seconds", "request_timeout", "max_concurrent_launches",
        "pull_progress_interval")),
    ("logs", ("level", "flow_log_level", "send_flow_run_logs", "show_flow_logs")),
    ("operations (docs/operations.md)", (
        "health_address", "drain_timeout", "docker_outage_exit_s", "watch_interval", "cancel_grace_seconds",
        "heartbeat_interval", "infra_retries", "keep_failed_containers_hours",
        "keep_successful_containers_hours", "cleanup_interval")),
)
# Defaults that depend on where the agent runs: the text says so instead of this machine's value.
DEFAULT_TEXT = {"host_root": "/ on the host, none in a container"}
# Prefect 1.x flags with no equivalent here: refused with what to do instead (flag names, takes a value).
REFUSED: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (("--tenant-id",), True, "the tenant comes from the token: use a token (-t/--token, -k/--key) issued "
     "for that tenant"),
    (("--max-polls",), True, "no equivalent: the agent polls until SIGTERM or SIGINT (docker stop, systemctl "
     "stop)"),
    (("--agent-config-id",), True, "no equivalent: Prefect Cloud agent configs are not read; give the "
     "options as flags or PREFECT__CLOUD__AGENT__* variables"),
    (("--no-docker-interface",), False, "no equivalent needed: the agent never looks for a docker0 interface "
     "(flow containers reach the host as host.docker.internal, --no-host-gateway turns that off)"),
    (("--reg-allow-list",), True, "use --allowed-images (PREFECT__CLOUD__AGENT__ALLOWED_IMAGES) with "
     "patterns like registry.example.com/*"),
    (("-p", "--import-path"), True, "no equivalent: flows run in their image's containers; put the code in "
     "the image or mount it with -v/--volume"),
)


class HelpFormatter(argparse.HelpFormatter):
    """`-t, --token, -k, --key TOKEN` (the metavar once, not after every alias), and no line broken inside
    a word (`--no-host-gateway`, `local-agent-flows`, an env name), so each stays searchable."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False,
                             initial_indent=indent, subsequent_indent=indent)


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: arguments it does not know are its error, shown with its own usage (the
    top-level parser would print the top-level usage)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggestion(extras)}")
        return parsed, extras

    def _suggestion(self, extras: list[str]) -> str:
        flag = next((word.split("=", 1)[0] for word in extras if word.startswith("--")), "")
        known = [option for option in self._option_string_actions if option.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.8) if flag else []
        return f" (did you mean {close[0]}?)" if close else ""


class Refused(argparse.Action):
    """A Prefect 1.x flag whose meaning this agent does not have: one line naming the replacement, exit 2."""

    def __init__(self, option_strings: Sequence[str], dest: str, why: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.why = why

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> NoReturn:
        parser.exit(2, f"{parser.prog}: {option_string} is a Prefect 1.x flag this agent does not take: "
                       f"{self.why}\n")


def agent_address(value: str) -> str:
    """Prefect's `--agent-address` (`http://0.0.0.0:8080` or `0.0.0.0:8080`) as a `HEALTH_ADDRESS`."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() != "http":
        raise argparse.ArgumentTypeError(f"the health server speaks plain HTTP, not {scheme}: {value!r}")
    address = (rest if sep else text).rstrip("/")
    if "/" in address:
        raise argparse.ArgumentTypeError(f"expected [http://]HOST:PORT, got {value!r}")
    return address


def _has(annotation: Any, kind: type) -> bool:
    if annotation is kind:
        return True
    return isinstance(annotation, types.UnionType) and kind in typing.get_args(annotation)


def default_text(name: str, field: FieldInfo) -> str:
    """The default as a user would type it; empty for none (the sentence says what unset means) and for
    secrets."""
    if name in DEFAULT_TEXT:
        return DEFAULT_TEXT[name]
    if _has(field.annotation, SecretStr):
        return ""
    value = field.get_default(call_default_factory=True)
    if value is None or value in ("", [], {}):
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return format(value, "g")
    return str(value) if isinstance(value, str | int | Path) else repr(value)


def help_text(name: str, field: FieldInfo) -> str:
    """`<sentence> (env NAME; default: X; repeatable)`, `%` escaped for argparse."""
    notes = [f"env {env_name(name)}"]
    if default := default_text(name, field):
        notes.append(f"default: {default}")
    if typing.get_origin(field.annotation) in (list, dict):
        notes.append("repeatable")
    return f"{SETTING_HELP[name]} ({'; '.join(notes)})".replace("%", "%%")


def _argument(name: str, field: FieldInfo) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text(name, field)}
    annotation = field.annotation
    if _has(annotation, bool):
        kwargs["action"] = "store_true" if name.startswith("no_") else argparse.BooleanOptionalAction
    elif typing.get_origin(annotation) is Literal:
        kwargs["choices"] = list(typing.get_args(annotation))
        if name in ("level", "flow_log_level"):
            kwargs["type"] = str.upper  # as the settings accept them from env
    elif typing.get_origin(annotation) is dict:
        kwargs.update(action="append", metavar="KEY=VALUE")
    elif typing.get_origin(annotation) is list:
        kwargs.update(action="append", metavar=name.upper().removesuffix("S"))
    else:
        kwargs["metavar"] = "TOKEN" if name == "api_token" else name.upper()
    return kwargs


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field, in groups; unset flags stay absent so env and files still apply."""
    grouped = {name for _, names in GROUPS for name in names}
    rest = tuple(name for name in Settings.model_fields if name not in grouped)
    groups = [*GROUPS, *([("other settings", rest)] if rest else [])]
    for title, names in groups:
        group = parser.add_argument_group(title)
        for name in names:
            flags = FLAG_NAMES.get(name, [f"--{name.replace('_', '-')}"])
            group.add_argument(*flags, **_argument(name, Settings.model_fields[name]))
    add_prefect_flags(parser)


def add_prefect_flags(parser: argparse.ArgumentParser) -> None:
    """Prefect 1.x flags with a different spelling of a setting, and those refused."""
    refused = ", ".join("/".join(flags) for flags, _, _ in REFUSED)
    group = parser.add_argument_group(
        "Prefect 1.x agent flags",
        "`prefect agent docker start` flags are accepted where they mean the same: -k/--key, -a/--api, "
        "-b/--base-url, -f/--show-flow-logs, --log-level, --docker-client-timeout (above), and these. "
        f"Refused, each with what to use instead: {refused}.")
    group.add_argument("--agent-address", dest="health_address", type=agent_address,
                       default=argparse.SUPPRESS, metavar="[http://]HOST:PORT",
                       help="Prefect's form of --health-address (http://0.0.0.0:8080 is 0.0.0.0:8080)")
    group.add_argument("--no-cloud-logs", dest="send_flow_run_logs", action="store_const", const=False,
                       default=argparse.SUPPRESS, help="same as --no-send-flow-run-logs")
    for flags, takes_value, why in REFUSED:
        dest = "refused_" + re.sub(r"\W", "_", flags[-1].lstrip("-"))
        group.add_argument(*flags, dest=dest, action=Refused, why=why, nargs="?" if takes_value else 0)
