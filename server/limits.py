"""Data limits: checks that refuse oversized input with an error naming the limit and its setting.

Every limit is a `ServerSettings` field; the message names its environment variable so an operator who
needs more knows what to raise. Count and size limits answer `LIMIT_EXCEEDED`; malformed input stays
`BAD_USER_INPUT`.
"""

from __future__ import annotations

import json
from typing import Any

from server.errors import ApiError
from server.settings import ServerSettings

LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
BAD_USER_INPUT = "BAD_USER_INPUT"


def env_name(setting: str) -> str:
    prefix = ServerSettings.model_config.get("env_prefix", "")
    return f"{prefix}{setting.upper()}"


def limit_error(what: str, got: int, limit: int, setting: str) -> ApiError:
    return ApiError(f"{what} ({got}) exceeds the limit of {limit} ({env_name(setting)}).", LIMIT_EXCEEDED)


def check_count(settings: ServerSettings, setting: str, what: str, got: int) -> None:
    limit: int = getattr(settings, setting)
    if got > limit:
        raise limit_error(what, got, limit, setting)


def check_length(settings: ServerSettings, setting: str, what: str, value: str) -> None:
    limit: int = getattr(settings, setting)
    if len(value) > limit:
        raise ApiError(f"{what} is too long: {len(value)} characters exceed the limit of {limit} "
                       f"({env_name(setting)}).", LIMIT_EXCEEDED)


def check_name(settings: ServerSettings, value: Any, what: str, *, required: bool = True) -> str | None:
    """A non-empty string of at most `max_name_chars` characters (None allowed when not required)."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"{what} must be a non-empty string.", BAD_USER_INPUT)
    check_length(settings, "max_name_chars", what, value)
    return value


def check_key(settings: ServerSettings, value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(f"{what} must be a string.", BAD_USER_INPUT)
    check_length(settings, "max_key_chars", what, value)
    return value


def check_labels(settings: ServerSettings, labels: Any, what: str = "labels") -> None:
    if labels is None:
        return
    if not isinstance(labels, list):
        raise ApiError(f"{what} must be a list of strings.", BAD_USER_INPUT)
    check_count(settings, "max_labels", f"Number of {what}", len(labels))
    for label in labels:
        if not isinstance(label, str):
            raise ApiError(f"{what} must be a list of strings.", BAD_USER_INPUT)
        check_length(settings, "max_label_chars", "A label", label)


def json_bytes(value: Any) -> int:
    return len(json.dumps(value, default=str).encode("utf-8"))


def check_json_size(settings: ServerSettings, value: Any, what: str) -> None:
    """Parameters, context and run_config are stored with the run and sent to every runner: bound them."""
    if value is None:
        return
    check_count(settings, "max_json_bytes", f"Size of {what} in bytes (as JSON)", json_bytes(value))


def list_limit(settings: ServerSettings, requested: int | None, *, nested: bool = False) -> int:
    """Hasura's role row limit: no `limit` -> the default; a larger `limit` is capped, never refused.

    Nested relationships (`flow_run.task_runs`, `flow.tasks`) default to the maximum: the 1.4.1 runner reads
    every unmapped task run of its flow run in one query and must not get a silently shortened list.
    """
    if requested is not None and requested < 0:
        raise ApiError("limit and offset must not be negative.", BAD_USER_INPUT)
    cap = max(settings.list_max_limit, settings.max_tasks_per_flow) if nested else settings.list_max_limit
    default = cap if nested else settings.list_default_limit
    return min(default if requested is None else requested, cap)
