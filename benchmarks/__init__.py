"""Benchmarks: our agent against the Docker engine's ceiling and Prefect 1.4.1's DockerAgent (issue 7).

Run from the repository root: `python -m benchmarks run` (full, < 20 min) or
`python -m benchmarks run --smoke` (10 runs per scenario, for CI). Never part of the test suite's pass/fail;
see `benchmarks/README.md`.
"""
