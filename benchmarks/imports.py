"""What importing the agent costs, package by package: `python -m benchmarks imports [MODULE ...]`.

Idle RSS and launch -> first poll are mostly imports, so this is where to look before making one lazy.
Two fresh interpreters per measurement (nothing cached in memory; the `.pyc` files are on disk):

1. `python -X importtime -c "import MODULE ..."` gives every module in the order it finished loading
   and its own (self) time;
2. a second interpreter imports those modules one by one in that order (so each import finds what it
   depends on already loaded and loads little more than itself) and reads its RSS (`/proc/self/statm`)
   after each.

Figures are grouped by top-level package (`agent` by subpackage) and printed largest RSS first. RSS moves in
pages and malloc arenas, so a package under ~0.2 MiB is noise; self time is CPU on a possibly busy machine,
so compare runs taken minutes apart, not across days. Nothing is written to `results/`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TARGETS = ("agent.cli", "agent.agent")  # what `python -m agent start` imports before its first poll
LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$")

# Run in the second interpreter: import each name in order, report RSS (bytes) and wall time (s) after each.
REPLAY = """
import importlib, json, os, sys, time
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
names = json.loads(sys.stdin.read())
rows = [["<interpreter>", rss(), 0.0]]
for name in names:
    began = time.perf_counter()
    try:
        importlib.import_module(name)
    except Exception:  # an optional module some package tries and tolerates missing
        pass
    rows.append([name, rss(), time.perf_counter() - began])
print(json.dumps(rows))
"""


@dataclass
class Group:
    name: str
    modules: int = 0
    self_ms: float = 0.0
    replay_ms: float = 0.0
    rss_bytes: int = 0


def group_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "agent" and len(parts) > 1 else parts[0]


def import_order(targets: Sequence[str]) -> list[tuple[str, float]]:
    """(module, self ms) in the order the modules finished loading."""
    code = "import " + ", ".join(targets)
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          check=True, env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})
    rows = []
    for line in done.stderr.splitlines():
        match = LINE.match(line)
        if match:
            rows.append((match.group(4), int(match.group(1)) / 1000))
    return rows


def replay(names: Sequence[str]) -> list[tuple[str, int, float]]:
    done = subprocess.run([sys.executable, "-c", REPLAY], input=json.dumps(list(names)), capture_output=True,
                          text=True, check=True)
    return [(name, int(rss), float(took)) for name, rss, took in json.loads(done.stdout)]


def measure(targets: Sequence[str]) -> tuple[list[Group], int, int]:
    """The groups, the interpreter's own RSS and the RSS after every import (bytes)."""
    order = import_order(targets)
    groups: dict[str, Group] = defaultdict(lambda: Group(""))
    for module, self_ms in order:
        group = groups[group_of(module)]
        group.name = group_of(module)
        group.modules += 1
        group.self_ms += self_ms
    rows = replay([module for module, _ in order])
    for (module, rss, took), (_, before, _) in zip(rows[1:], rows[:-1], strict=True):
        group = groups[group_of(module)]
        group.rss_bytes += rss - before
        group.replay_ms += took * 1000
    return sorted(groups.values(), key=lambda g: -g.rss_bytes), rows[0][1], rows[-1][1]


def table(groups: Sequence[Group], base: int, total: int, top: int) -> str:
    mib = 1024 * 1024
    lines = [f"{'package':<28} {'modules':>7} {'self ms':>8} {'replay ms':>9} {'RSS MiB':>8}"]
    for g in groups[:top]:
        lines.append(f"{g.name:<28} {g.modules:>7} {g.self_ms:>8.1f} {g.replay_ms:>9.1f} "
                     f"{g.rss_bytes / mib:>8.2f}")
    rest = groups[top:]
    if rest:
        lines.append(f"{f'({len(rest)} more)':<28} {sum(g.modules for g in rest):>7} "
                     f"{sum(g.self_ms for g in rest):>8.1f} {sum(g.replay_ms for g in rest):>9.1f} "
                     f"{sum(g.rss_bytes for g in rest) / mib:>8.2f}")
    lines.append(f"{'total':<28} {sum(g.modules for g in groups):>7} {sum(g.self_ms for g in groups):>8.1f} "
                 f"{sum(g.replay_ms for g in groups):>9.1f} {(total - base) / mib:>8.2f}")
    lines.append(f"interpreter alone {base / mib:.1f} MiB, after the imports {total / mib:.1f} MiB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks imports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", default=list(DEFAULT_TARGETS),
                        help=f"modules to import (default: {' '.join(DEFAULT_TARGETS)})")
    parser.add_argument("--top", type=int, default=30, help="rows to print (the rest are summed)")
    args = parser.parse_args(argv)
    groups, base, total = measure(args.modules)
    print(table(groups, base, total, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
