"""An anonymous flood against the real server: RSS before/after 30 x 19 MB bodies, `{ hello }` latency.

    .venv/bin/python -m benchmarks.server_exhaustion [--requests 30] [--mb 19 | --kb N] [--threads 3]
                                                     [--anonymous-max-body-bytes N]

Each flood body is a distinct 19 MB query text (`{ hello }` and a long comment), the shape that used to fill
the parsed-document cache. Starts `python -m server start --auth token` on a free port with its own SQLite
file, measures `{ hello }` latency alone, then again while the flood runs (3 threads by default), and prints
one JSON object: server RSS before/after (MB), statuses of the flood requests, and hello p50/p95 before and
during, with their ratios.
`--anonymous-max-body-bytes 20971520` shows what the server does when anonymous bodies are read in full;
with `--kb 256` too, it shows the cost of bodies parsed off the event loop (and the memory trim after them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import requests

from benchmarks.backend import free_port
from benchmarks.config import REPO_ROOT
from benchmarks.stats import percentile, ratio

HELLO = json.dumps({"query": "{ hello }"}).encode()
HEADERS = {"Content-Type": "application/json"}


def start(workdir: Path, port: int, anonymous_limit: int | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCAL_AGENT_SERVER_")}
    if anonymous_limit is not None:
        env["LOCAL_AGENT_SERVER_ANONYMOUS_MAX_BODY_BYTES"] = str(anonymous_limit)
    cmd = [sys.executable, "-m", "server", "start", "--port", str(port), "--auth", "token",
           "--database-url", f"sqlite:///{workdir / 'bench.db'}", "--log-level", "WARNING"]
    log = open(workdir / "server.log", "ab")  # noqa: SIM115 - the child owns the handle until it exits
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.post(f"http://127.0.0.1:{port}/", data=HELLO, headers=HEADERS, timeout=2)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start; see " + str(workdir / "server.log"))


def hello_s(url: str, session: requests.Session) -> float:
    started = time.perf_counter()
    response = session.post(url, data=HELLO, headers=HEADERS, timeout=120)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"hello failed: {response.status_code} {response.text[:200]}")
    return elapsed


def padded_query(size: int, index: int) -> bytes:
    """A distinct `{ hello }` document of `size` bytes (a long comment): each would be a new cache key."""
    head = b'{"query": "{ hello } # %d ' % index
    return head + b"x" * (size - len(head) - 2) + b'"}'


def flood(url: str, size: int, count: int, threads: int) -> list[str]:
    def one(index: int) -> str:
        payload = padded_query(size, index)
        try:
            return str(requests.post(url, data=payload, headers=HEADERS, timeout=300).status_code)
        except requests.ConnectionError:
            return "connection closed"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-exhaustion-") as tmp:
        port = free_port()
        proc = start(Path(tmp), port, args.anonymous_max_body_bytes)
        url, server = f"http://127.0.0.1:{port}/", psutil.Process(proc.pid)
        try:
            session = requests.Session()
            baseline = [hello_s(url, session) for _ in range(200)]
            rss_before = server.memory_info().rss
            during: list[float] = []
            done = threading.Event()

            def greet() -> None:
                while not done.is_set():
                    during.append(hello_s(url, session))

            greeter = threading.Thread(target=greet)
            greeter.start()
            started = time.perf_counter()
            statuses = flood(url, _size(args), args.requests, args.threads)
            flood_s = time.perf_counter() - started
            done.set()
            greeter.join()
            rss_after = server.memory_info().rss
        finally:
            proc.terminate()
            proc.wait(15)
    return report(args, baseline, during, rss_before, rss_after, statuses, flood_s)


def report(args: argparse.Namespace, baseline: list[float], during: list[float], rss_before: int,
           rss_after: int, statuses: list[str], flood_s: float) -> dict[str, Any]:
    p50, p95 = percentile(baseline, 50), percentile(baseline, 95)
    f50, f95 = percentile(during, 50), percentile(during, 95)
    return {
        "flood": f"{args.requests} x {_size(args) // 1024} KiB, {args.threads} threads, anonymous",
        "anonymous_max_body_bytes": args.anonymous_max_body_bytes or "default (16384)",
        "flood_statuses": dict(Counter(statuses)), "flood_s": round(flood_s, 2),
        "rss_before_mb": round(rss_before / 2**20, 1), "rss_after_mb": round(rss_after / 2**20, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 2**20, 1),
        "hello_before_ms": {"p50": _ms(p50), "p95": _ms(p95), "n": len(baseline)},
        "hello_during_ms": {"p50": _ms(f50), "p95": _ms(f95), "n": len(during)},
        "hello_p50_ratio": _round(ratio(f50, p50)), "hello_p95_ratio": _round(ratio(f95, p95)),
    }


def _size(args: argparse.Namespace) -> int:
    return int(args.kb * 1024 if args.kb else args.mb * 2**20)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_exhaustion", description=__doc__)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--mb", type=int, default=19)
    parser.add_argument("--kb", type=int, default=None, help="body size in KiB (overrides --mb)")
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--anonymous-max-body-bytes", type=int, default=None)
    print(json.dumps(measure(parser.parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
