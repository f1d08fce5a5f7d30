"""Keeping an idle agent small: glibc malloc settings and trimming, through ctypes.

An agent spends most of its life idle, and its resident memory is what a host pays for it (idle RSS
at most Prefect's). Two glibc behaviours inflate it without any benefit to us:

* every thread that allocates gets its own malloc arena (up to 8 per core); a burst runs up to
  `max_concurrent_launches` + 6 Docker threads, and each arena keeps its freed memory. `limit_arenas()`
  caps them at 2 (`M_ARENA_MAX`, what `MALLOC_ARENA_MAX=2` does), as is common for Python services: the
  Docker threads spend their time waiting on sockets, not contending for malloc.
* freed memory at the top of the heap and in whole free pages is returned to the OS only when glibc
  decides to. `trim_when_idle()` calls `malloc_trim(0)` when the agent has nothing to do, at most once a
  minute (it walks the heap: a few milliseconds).

Both are no-ops where glibc is absent (musl, macOS) or refuses; nothing here can fail the agent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time

M_ARENA_MAX = -8  # glibc malloc.h
TRIM_EVERY_S = 60.0

_last_trim = float("-inf")


@functools.cache  # a failure too: find_library runs subprocesses, and the idle poll asks every time
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (before the thread pool starts); False where not supported."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def trim_when_idle(now: float | None = None) -> bool:
    """Return freed heap memory to the OS, at most every `TRIM_EVERY_S`; True when it trimmed."""
    global _last_trim
    now = time.monotonic() if now is None else now
    libc = _glibc()
    if libc is None or now - _last_trim < TRIM_EVERY_S:
        return False
    _last_trim = now
    libc.malloc_trim(0)
    return True
