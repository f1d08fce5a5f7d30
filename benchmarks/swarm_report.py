"""The markdown of `python -m benchmarks swarm`: one table per round, then the same-round ratios."""

from __future__ import annotations

from typing import Any

ORDER = ("swarm-ceiling", "swarm-agent-no-overlay", "swarm-ceiling+overlay", "swarm-agent", "docker-agent",
         "swarm-ceiling-after")
RATIOS = (
    ("swarm_agent_to_ceiling_overlay", "swarm agent (overlay) / swarm ceiling on an overlay (target)"),
    ("swarm_agent_no_overlay_to_ceiling", "swarm agent, no overlay / swarm ceiling, no network (target)"),
    ("ceiling_overlay_to_ceiling", "swarm ceiling on an overlay / swarm ceiling, no network"),
    ("swarm_agent_to_no_overlay", "swarm agent (overlay) / swarm agent, no overlay"),
    ("swarm_agent_to_docker_agent", "swarm agent (overlay) / docker agent"),
    ("swarm_agent_no_overlay_to_docker_agent", "swarm agent, no overlay / docker agent"),
)


def _cell(value: Any) -> str:
    return "–" if value is None else str(value)


def _burst_row(name: str, b: dict[str, Any] | None) -> str:
    if b is None:
        return f"| {name} | not measured | | | | | | | | |"
    go, own = b["lateness_from_go"], b["lateness_from_origin"]
    own_cell = f"{own.get('p50_s')} / {own.get('p95_s')}" if name.startswith("swarm-ceiling") else "–"
    return (f"| {name} | {b['started']} / {b['completed']} of {b['runs']} | {_cell(b['runs_per_s'])} | "
            f"{_cell(b['runs_per_s_to_last_start'])} | {_cell(go.get('p50_s'))} | {_cell(go.get('p95_s'))} | "
            f"{_cell(go.get('max_s'))} | {own_cell} | {_cell(b.get('requests_per_run'))} | "
            f"{_cell(b.get('task_states') or None)} |")


def _round_table(index: int, round_: dict[str, Any]) -> list[str]:
    lines = [f"### Round {index}", "",
             "| burst | started / completed | runs/s (to last exit) | runs/s (to last start) "
             "| lateness p50 (s) | p95 (s) | max (s) | from own create call p50 / p95 (s) "
             "| API requests / run | task states |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [_burst_row(name, round_["bursts"].get(name)) for name in ORDER]
    if round_["errors"]:
        errors = round_["errors"].items()
        lines += ["", *(f"- not measured `{k}`: {v.splitlines()[0][:300]}" for k, v in errors)]
    return [*lines, ""]


def markdown(meta: dict[str, Any], figures: dict[str, Any]) -> str:
    sizes, load = meta["sizes"], " -> ".join(str(x) for x in meta["load_1min"])
    rounds = figures["rounds"]
    lines = [
        "# Our agent on Docker Swarm: the Swarm ceiling, the swarm engine, the docker engine", "",
        f"{meta['started']} UTC on {meta['machine']}, Docker {meta['docker_version']}, Python "
        f"{meta['python']}, 1-min load average {load} (start -> end)"
        f"{' (quick: a smoke test, numbers mean nothing)' if meta['quick'] else ''}.", "",
        f"{sizes['runs']} runs per burst, {len(rounds)} round(s); ceilings at concurrency "
        f"{meta['concurrency']} (the agent's launch concurrency); the agents' runs due together "
        f"{sizes['lead_s']} s after creation, the agent polling. Lateness = container start - the burst's "
        "start (the ceiling's first create call, the agents' due time).", "",
    ]
    for index, round_ in enumerate(rounds, 1):
        lines += _round_table(index, round_)
    header = " | ".join(f"round {i}" for i in range(1, len(rounds) + 1))
    lines += ["## Ratios (runs/s to the last exit, same round)", "",
              f"| ratio | {header} | median |", "|---|" + "---:|" * (len(rounds) + 1)]
    for key, label in RATIOS:
        cells = " | ".join(_cell(r["ratios"].get(key)) for r in rounds)
        lines.append(f"| {label} | {cells} | {_cell(figures['ratios_median'][key])} |")
    lines += ["", *_verdicts(meta, figures["ratios_median"])]
    return "\n".join(lines) + "\n"


def _verdicts(meta: dict[str, Any], medians: dict[str, float | None]) -> list[str]:
    """Met or missed per like-for-like ratio: each agent against the ceiling with its services' networks."""
    target, labels = meta["target_ratio"], dict(RATIOS)
    lines = []
    for key in meta.get("target_ratios", ()):
        value = medians.get(key)
        verdict = "not measured" if value is None else ("met" if value >= target else "**MISSED**")
        lines.append(f"- Target {labels[key].removesuffix(' (target)')} >= {target} (median): "
                     f"{verdict}{'' if value is None else f' ({value})'}.")
    return lines
