"""How list- and mapping-valued settings are read from env vars, flags and config files.

Prefect 1.x users write labels and env vars in several spellings (JSON, comma lists, repeated flags, the
Python repr Prefect itself writes); these parsers accept them all, before pydantic validates the result.
"""

from __future__ import annotations

import ast
import json
from typing import Any

__all__ = ["parse_env_vars", "parse_labels"]


def parse_labels(value: Any) -> Any:
    """Labels arrive as a JSON list, a comma-separated string, or (from repeated flags) a list of either."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):  # JSON, or the Python repr Prefect itself writes: "['a', 'b']"
            try:
                return [str(item) for item in json.loads(text)]
            except json.JSONDecodeError:
                return [str(item) for item in ast.literal_eval(text)]
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        labels: list[str] = []
        for item in value:
            labels.extend(parse_labels(item) if isinstance(item, str) and "," in item else [str(item)])
        return list(dict.fromkeys(labels))  # de-duplicated, first occurrence keeps its place
    return value


def parse_env_vars(value: Any) -> Any:
    """Env vars arrive as a JSON object, a `KEY=VAL` list (comma or newline separated), or repeated flags."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return {str(k): str(v) for k, v in json.loads(text).items()}
        items = [part for line in text.splitlines() for part in line.split(",")]
        return parse_env_vars([item for item in items if item.strip()])
    if isinstance(value, list | tuple):
        pairs: dict[str, str] = {}
        for item in value:
            key, sep, val = str(item).strip().partition("=")
            if not sep or not key:
                raise ValueError(f"expected KEY=VALUE, got {str(item).strip()!r}")
            pairs[key.strip()] = val
        return pairs
    return value
