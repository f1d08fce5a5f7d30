"""`python -m benchmarks run --full`: every figure of the cost-growth study in one command, then one summary.

The parts are the commands a user can also run alone: `run` (agents vs the ceiling, bursts repeated), `cost`
(our agent vs watched containers), `soak` (20 minutes of steady load) and `growth` (the server vs stored
runs). Each writes its own dated results; `--parts` re-runs a subset, and the summary is always rebuilt from
the newest result of every part, so a partial re-run never loses the others' figures.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.config import REPO_ROOT, RESULTS_DIR

PARTS = ("core", "cost", "soak", "growth")
GOALS_START = "<!-- goals:start -->"
GOALS_END = "<!-- goals:end -->"
_DATED = re.compile(r"^(?P<name>[a-z-]+)-(?P<date>\d{4}-\d{2}-\d{2})\.json$")


def _part(name: str, core: Callable[[], Path]) -> None:
    if name == "core":
        core()
    elif name == "cost":
        from benchmarks.cost_curves import run_cost

        run_cost(False, RESULTS_DIR)
    elif name == "soak":
        from benchmarks.soak import run_soak

        run_soak(False, RESULTS_DIR)
    else:
        from benchmarks.growth import run_growth

        run_growth(False, RESULTS_DIR, ("sqlite", "postgres"))


def run_parts(parts: tuple[str, ...], core: Callable[[], Path]) -> None:
    """Run the requested parts in PARTS' order, then summarise. A part that fails is reported at the end and
    never costs the others their figures (an hour in, a failed last part must not lose the summary)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: a subset of {', '.join(PARTS)}, not {', '.join(sorted(unknown))}")
    failed: dict[str, str] = {}
    for name in (p for p in PARTS if p in parts):
        try:
            _part(name, core)
        except Exception as exc:  # noqa: BLE001 - every part's failure is reported below
            traceback.print_exc()
            failed[name] = f"{type(exc).__name__}: {exc}"
    write_goals_summary(RESULTS_DIR)
    if failed:
        raise SystemExit("parts failed: " + "; ".join(f"{name}: {why}" for name, why in failed.items()))


def newest(results_dir: Path, name: str) -> Path | None:
    """The newest dated `<name>-<date>.json` (quick runs, `<name>-quick.json`, never count)."""
    found = [p for p in results_dir.glob(f"{name}-*.json")
             if (m := _DATED.match(p.name)) and m["name"] == name]
    return max(found, key=lambda p: p.name, default=None)


def newest_core(results_dir: Path) -> Path | None:
    dated = re.compile(r"\d{4}-\d{2}-\d{2}")
    runs = sorted(p for p in results_dir.glob("*/results.json") if dated.fullmatch(p.parent.name))
    return runs[-1] if runs else None


def goal_rows(results_dir: Path) -> list[tuple[str, str, str, bool | None]]:
    """(source, goal, figure, met) for every goal of the newest result of each part; each linked report
    says how its verdict was reached."""
    rows: list[tuple[str, str, str, bool | None]] = []
    core = newest_core(results_dir)
    if core is not None:
        data = json.loads(core.read_text())
        for target in data.get("targets", []):
            rows.append((f"{core.parent.name}/results.md", target["description"], _core_figure(target),
                         target.get("met")))
    for name in ("cost", "soak", "growth"):
        path = newest(results_dir, name)
        if path is None:
            continue
        data = json.loads(path.read_text())
        for goal in data.get("goals", []):
            rows.append((path.with_suffix(".md").name, goal["goal"], goal["figure"], goal.get("met")))
    return rows


def _core_figure(target: dict[str, Any]) -> str:
    value, bound = target.get("value"), target.get("bound")
    if value is None:
        return "not measured"
    shown = f"{value:.3g}" if isinstance(value, float) else str(value)
    return shown if bound is None else f"{shown} (bound {bound:.3g})"


def goals_markdown(results_dir: Path, link_prefix: str) -> str:
    lines = ["| goal | measured | verdict | source |", "|---|---|---|---|"]
    for source, goal, figure, met in goal_rows(results_dir):
        verdict = {True: "met", False: "**MISSED**", None: "not judged"}[met]
        goal, figure = goal.replace("|", "/"), figure.replace("|", "/")  # a "|" would split the row
        lines.append(f"| {goal} | {figure} | {verdict} | [{source}]({link_prefix}{source}) |")
    return "\n".join(lines)


def write_goals_summary(results_dir: Path) -> None:
    """Rewrite the goal tables between the goals markers of benchmarks/README.md and README.md."""
    for readme, prefix in ((results_dir.parent / "README.md", "results/"),
                           (REPO_ROOT / "README.md", "benchmarks/results/")):
        text = readme.read_text()
        if GOALS_START not in text or GOALS_END not in text:
            continue
        head, rest = text.split(GOALS_START, 1)
        _, tail = rest.split(GOALS_END, 1)
        readme.write_text(f"{head}{GOALS_START}\n{goals_markdown(results_dir, prefix)}\n{GOALS_END}{tail}")
