"""Logging: loguru configured once by the entry point, stdlib captured, secrets masked.

The line format is the Prefect 0.6 agent's (`2019-10-21 09:13:32,457 - agent - INFO - Starting LocalAgent`),
so people who grep agent logs keep their habits. Library modules only `from loguru import logger`.

`SECRETS` is the process's one registry of values to mask: the entry point fills it from the
settings (`agent.settings.settings_secrets`: API token, registry passwords, the contents of password
files, the values of secret `ENV_VARS`, URL passwords) and whoever later reads a secret (a rotated
password file) adds it. The agent's log and `--show-flow-logs` both mask with it. Every `Masker` also
masks the password of any URL and any `Bearer` value, known or not (the rules are `agent.ops.redact`'s).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, TextIO

from loguru import logger

from agent.ops.redact import MASK, mask_urls

LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss,SSS} - agent - {level} - {message}"
# gql logs whole request/response bodies at DEBUG, urllib3/docker log headers: they could carry credentials.
QUIET_LOGGERS = ("gql", "gql.transport", "httpx", "httpcore", "aiohttp", "aiohttp.access", "urllib3",
                 "docker", "asyncio")
# Any bearer credential, even one we were not told about (belt and braces for the known token).
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+")


class Masker:
    """Replaces every known secret, any URL's password and any `Bearer <x>` value with `***`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Mask these too (thread-safe; readers see the old or the new tuple, never a partial one)."""
        fresh = {s for s in secrets if s and len(s) >= 4}
        if fresh.issubset(self._secrets):
            return
        with self._lock:
            # Longest first so a secret containing another is masked whole.
            self._secrets = tuple(sorted(fresh.union(self._secrets), key=len, reverse=True))

    def reset(self, secrets: Iterable[str | None] = ()) -> None:
        with self._lock:
            self._secrets = ()
        self.add(*secrets)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _BEARER.sub(rf"\g<1>{MASK}", mask_urls(text))


SECRETS = Masker()  # every secret this process knows (see the module docstring)


class _StdlibToLoguru(logging.Handler):
    """Routes stdlib records (aiohttp, docker, urllib3 warnings) into loguru with their real caller."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame: FrameType | None = logging.currentframe()
        depth = 2
        while frame is not None and frame.f_code.co_filename == logging.__file__:
            frame, depth = frame.f_back, depth + 1
        logger.opt(depth=depth, exception=record.exc_info).bind(logger_name=record.name).log(
            level, record.getMessage()
        )


def _masking_sink(stream: TextIO, mask: Masker) -> Callable[[Any], None]:
    """A sink that masks the fully formatted line, traceback included, right before it is written."""

    def write(message: Any) -> None:
        stream.write(mask(str(message)))
        stream.flush()

    return write


def configure_logging(
    level: str = "INFO", secrets: Iterable[str | None] = (), stream: TextIO | None = None
) -> None:
    """Install the agent's single sink. Called by the entry point only (cli / LocalAgent.start).

    `secrets` replace the contents of `SECRETS`, which masks every line from then on.
    """
    SECRETS.reset(secrets)
    mask = SECRETS
    logger.remove()

    def patch(record: Any) -> None:
        record["message"] = mask(record["message"])

    logger.configure(patcher=patch)
    logger.add(
        _masking_sink(stream or sys.stderr, mask),
        level=level,
        format=LOG_FORMAT,
        colorize=False,
        backtrace=False,
        diagnose=False,  # diagnose prints local variables in tracebacks: tokens live in locals
    )
    logging.basicConfig(handlers=[_StdlibToLoguru()], level=0, force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
