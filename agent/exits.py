"""The agent's exit codes, one table for the CLI and the agent (the README lists them)."""

EXIT_OK = 0
EXIT_STARTUP = 1  # the backend refused the agent (auth, scope, no tenant)
EXIT_FORCED = 1  # a second signal during the drain: launches in flight abandoned
EXIT_UNHEALTHY = 1  # `local-agent check`: the only failure code a Docker HEALTHCHECK command may use
EXIT_CONFIG = 2  # invalid settings, or `HEALTH_ADDRESS` cannot be bound
EXIT_DOCKER = 3  # the engine unreachable at start, or for `DOCKER_OUTAGE_EXIT_S` while running
