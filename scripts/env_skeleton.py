"""Print every agent and server setting as `# NAME=default`: the skeleton `.env.example` was written from.

`.env.example` itself is hand-commented; `tests/unit/test_env_example.py` fails when it drifts from the
models, and this script shows what to add:  `.venv/bin/python scripts/env_skeleton.py`
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import PydanticUndefined

from agent import settings as agent_settings
from server import settings as server_settings


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined or field.default is None:
        return ""
    else:
        value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value) if value else ""
    return str(value)


def main() -> None:
    print("# --- agent")
    for name, field in agent_settings.Settings.model_fields.items():
        print(f"# {agent_settings.env_name(name)}={_default(field)}")
    print("# --- server")
    prefix = server_settings.ServerSettings.model_config.get("env_prefix", "")
    for name, field in server_settings.ServerSettings.model_fields.items():
        print(f"# {prefix}{name.upper()}={_default(field)}")


if __name__ == "__main__":
    main()
