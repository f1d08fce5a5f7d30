"""From the repository root: `python -m benchmarks run [--smoke] [--out DIR] [--systems ...]`, `recovery`,
`queue-scale`, `claims`, `wakeup`, `schedule-lateness`, `swarm`, `growth`, `cost`, `soak` (each
`[--quick]`), `imports [MODULE ...]`, `clean`. `run --full`: run, cost, soak, growth, then the goals."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any

from benchmarks.config import BENCH_LABEL, REPO_ROOT, RESULTS_DIR, BenchConfig
from benchmarks.dockerenv import docker_client
from benchmarks.report import update_readme, write_results
from benchmarks.runner import run
from benchmarks.scale import COMMANDS as SCALE_COMMANDS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("run", help="run every scenario and write results.json, results.md, lateness.png")
    cmd.add_argument("--smoke", action="store_true", 
                     help="10 runs per scenario, short idle, small queue DB (CI)")
    cmd.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/<date>/, "
                     "or .cache/benchmarks/smoke/ with --smoke)")
    cmd.add_argument("--systems", default="ours,prefect", help="comma-separated subset of: ours, prefect")
    cmd.add_argument("--burst-runs", type=int, help="override the burst size")
    cmd.add_argument("--idle-seconds", type=float, help="override the idle window")
    cmd.add_argument("--queue-runs", type=int, help="override the number of runs in the queue-latency DB")
    cmd.add_argument("--no-image", action="store_true", help="skip building the agent image")
    cmd.add_argument("--burst-repeats", type=int, help="override how many bursts of ours (each after a "
                     "ceiling)")
    cmd.add_argument("--prefect-burst-repeats", type=int, help="override how many bursts of Prefect's")
    cmd.add_argument("--full", action="store_true", help="also the cost curves, the soak and the server "
                     "growth (~75 min), then the goals table in both READMEs")
    cmd.add_argument("--parts", default="core,cost,soak,growth",
                     help="with --full: a subset of core (this run), cost, soak, growth")
    recovery = sub.add_parser("recovery", help="the chaos scenarios once each (agent SIGKILL + restart, 5 %% "
                              "of starts failing, a dockerd restart under running flows (root)); writes "
                              "results/recovery-<date>.json and .md")
    recovery.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/)")
    for name, (_, title) in SCALE_COMMANDS.items():
        scale = sub.add_parser(name, help=f"{title}; writes results/{name}-<date>.json and .md")
        scale.add_argument("--quick", action="store_true", help="smoke-test sizes (numbers mean nothing)")
        scale.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/)")
    lateness = sub.add_parser("schedule-lateness", help="how late our agent launches the runs the server's "
                              "scheduler created; writes results/schedule-lateness-<date>.json and .md")
    lateness.add_argument("--quick", action="store_true", help="one minute, 6 runs (numbers mean nothing)")
    lateness.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/)")
    swarm = sub.add_parser("swarm", help="our agent on Docker Swarm vs the Swarm ceiling and vs its docker "
                           "engine (the daemon must be a swarm manager); writes results/swarm-<date>.*")
    swarm.add_argument("--quick", action="store_true", help="4 runs per burst (numbers mean nothing)")
    swarm.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/)")
    growth = sub.add_parser("growth", help="server cost vs runs and log lines stored (10^4..10^6 runs), and "
                            "a retention pass's effect; writes results/growth-<date>.json, .md and .png")
    growth.add_argument("--quick", action="store_true", help="200 and 400 runs (numbers mean nothing)")
    growth.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/)")
    growth.add_argument("--stores", default="sqlite,postgres", help="a subset of: sqlite, postgres")
    cost = sub.add_parser("cost", help="our agent's RSS, CPU and API requests vs 0/50/200/500 running, "
                          "watched flow containers (~12 min); writes results/cost-<date>.json, .md and .png")
    cost.add_argument("--quick", action="store_true", help="0, 2, 4 containers (numbers mean nothing)")
    cost.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/)")
    soak = sub.add_parser("soak", help="our agent under steady load for 20 min (one run/s, 30 s containers): "
                          "RSS slope, fds, threads, lateness per minute; writes results/soak-<date>.*")
    soak.add_argument("--quick", action="store_true", help="30 s of load (numbers mean nothing)")
    soak.add_argument("--minutes", type=float, help="override the 20-minute length")
    soak.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/)")
    imports = sub.add_parser("imports", help="what importing the agent costs, package by package (RSS, ms); "
                             "prints a table, writes nothing")
    imports.add_argument("modules", nargs="*", help="modules to import (default: agent.cli agent.agent)")
    imports.add_argument("--top", type=int, default=30, help="rows to print (the rest are summed)")
    sub.add_parser("clean", help="remove the benchmark's cached images and its .cache/benchmarks directories")
    return parser


def _config(args: argparse.Namespace) -> BenchConfig:
    config = BenchConfig.smoke_config() if args.smoke else BenchConfig.full()
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = set(systems) - {"ours", "prefect"}
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(sorted(unknown))}")
    overrides = {"systems": systems, "burst_runs": args.burst_runs, "idle_s": args.idle_seconds,
                 "queue_runs": args.queue_runs, "burst_repeats": args.burst_repeats,
                 "prefect_burst_repeats": args.prefect_burst_repeats}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_image:
        config = replace(config, build_agent_image=False)
    return config


def clean() -> int:
    """Remove what the benchmark leaves behind on purpose between runs (cached images, logs)."""
    client = docker_client()
    for image in client.images.list(filters={"label": BENCH_LABEL}):
        for tag in image.tags or [image.id]:
            client.images.remove(tag, force=True)
            print(f"removed image {tag}", file=sys.stderr)
    shutil.rmtree(REPO_ROOT / ".cache" / "benchmarks", ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "clean":
        return clean()
    if args.command == "imports":
        from benchmarks.imports import main as imports

        return imports([*args.modules, "--top", str(args.top)])
    if args.command == "recovery":
        from benchmarks.recovery import run_recovery

        written = run_recovery((args.out or RESULTS_DIR).resolve())
        print(Path(written["md"]).read_text())
        return 0
    if args.command in DATED_COMMANDS:
        paths = DATED_COMMANDS[args.command](args, (args.out or RESULTS_DIR).resolve())
        print(paths["md"].read_text())
        return 0
    config = _config(args)
    if args.full:
        if config.smoke or args.out:
            raise SystemExit("--full writes the committed results: it takes neither --smoke nor --out")
        from benchmarks.full import run_parts

        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        run_parts(parts, lambda: _run_core(config, RESULTS_DIR / _today()))
        return 0
    default = REPO_ROOT / ".cache" / "benchmarks" / "smoke" if config.smoke else RESULTS_DIR / _today()
    _run_core(config, (args.out or default).resolve())
    return 0


def _run_core(config: BenchConfig, out_dir: Path) -> Path:
    """The agents against the ceiling and each other; a full run also refreshes the committed summaries."""
    results = run(config)
    paths = write_results(results, out_dir)
    if out_dir.parent == RESULTS_DIR.resolve() and not config.smoke:
        shutil.copyfile(paths["md"], RESULTS_DIR / "latest.md")
        update_readme(results, RESULTS_DIR.parent / "README.md", f"results/{out_dir.name}/results.md")
        update_readme(results, REPO_ROOT / "README.md", f"benchmarks/results/{out_dir.name}/results.md")
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return paths["json"]


def _growth(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    from benchmarks.growth import run_growth

    stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
    if not stores or set(stores) - {"sqlite", "postgres"}:
        raise SystemExit(f"--stores: a subset of sqlite, postgres, not {args.stores!r}")
    return run_growth(args.quick, out, stores)


def _lazy(module: str, function: str) -> Callable[..., dict[str, Path]]:
    """A command's entry point, imported only when that command runs (each pulls in its own dependencies)."""
    def call(*args: Any) -> dict[str, Path]:
        return getattr(import_module(module), function)(*args)  # type: ignore[no-any-return]
    return call


# Commands that write `results/<name>-<date>.json` and `.md` and print the markdown.
DATED_COMMANDS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Path]]] = {
    "schedule-lateness": lambda a, out: _lazy("benchmarks.schedule_lateness", "run_schedule_lateness")(
        a.quick, out),
    "swarm": lambda a, out: _lazy("benchmarks.swarm", "run_swarm")(a.quick, out),
    "growth": _growth,
    "cost": lambda a, out: _lazy("benchmarks.cost_curves", "run_cost")(a.quick, out),
    "soak": lambda a, out: _lazy("benchmarks.soak", "run_soak")(a.quick, out, a.minutes),
    **{name: (lambda a, out, name=name: _lazy("benchmarks.scale", "run_scale")(name, a.quick, out))
       for name in SCALE_COMMANDS},
}


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


if __name__ == "__main__":
    raise SystemExit(main())
