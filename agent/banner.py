"""The start-up banner of the Prefect 0.6 agents, reproduced verbatim from the Local Agent docs."""

from __future__ import annotations

import sys
from typing import TextIO

BANNER = r"""
 ____            __           _        _                    _
|  _ \ _ __ ___ / _| ___  ___| |_     / \   __ _  ___ _ __ | |_
| |_) | '__/ _ \ |_ / _ \/ __| __|   / _ \ / _` |/ _ \ '_ \| __|
|  __/| | |  __/  _|  __/ (__| |_   / ___ \ (_| |  __/ | | | |_
|_|   |_|  \___|_|  \___|\___|\__| /_/   \_\__, |\___|_| |_|\__|
                                           |___/
"""

# Where `Agent documentation can be found at ...` points: the README of this distribution.
DOCUMENTATION = "README.md of the local-agent repository (`local-agent start --help` lists every setting)"


def print_banner(stream: TextIO | None = None) -> None:
    """Print the banner and flush, so it precedes the first log line even when stdout is a pipe."""
    out = stream or sys.stdout
    out.write(BANNER + "\n")
    out.flush()
