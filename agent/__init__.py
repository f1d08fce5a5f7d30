"""Local Agent: a containerized Prefect 1.x agent that runs each flow run as a sibling Docker container.

Importing the package does no I/O and configures no logging: `LocalAgent` is loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.version import __version__

__all__ = ["LocalAgent", "__version__"]

if TYPE_CHECKING:
    from agent.agent import LocalAgent


def __getattr__(name: str) -> Any:
    if name == "LocalAgent":
        from agent.agent import LocalAgent

        return LocalAgent
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
