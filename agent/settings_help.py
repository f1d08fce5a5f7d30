"""One sentence per agent setting: what it does, for `local-agent start --help` and its siblings.

Kept apart from `settings.py` so the model stays about validation; a unit test keeps both in step (every
field has a sentence, no sentence outlives its field). The sentences follow docs/run-options.md,
docs/operations.md, docs/running.md and `.env.example`.
"""

from __future__ import annotations

SETTING_HELP: dict[str, str] = {
    # The API and who the agent is
    "api": (
        "The Prefect 1.x GraphQL API the agent polls: our server, Prefect Server 1.x or Prefect Cloud "
        "1.x."
    ),
    "api_token": (
        "The agent's RUNNER token or Prefect Cloud API key (also read from "
        "PREFECT__CLOUD__AGENT__AUTH_TOKEN, PREFECT__CLOUD__API_TOKEN, PREFECT__CLOUD__API_KEY, the "
        "secret file prefect_cloud_agent_api_token and config.toml); without one the API is called "
        "unauthenticated."
    ),
    "name": "The agent's name in the API, also put on every flow container as label io.local-agent.agent.",
    "labels": "Labels this agent serves: a flow run is taken only if all its labels are among these.",
    "flow_api_url": (
        "The API URL as flow containers must reach it; unset, the API URL with localhost rewritten to "
        "host.docker.internal."
    ),
    # Docker
    "base_url": (
        "The Docker engine address (unix:///var/run/docker.sock, tcp://host:2376); unset, DOCKER_HOST and"
        " Docker's TLS variables, then the docker CLI context, then the default socket."
    ),
    "docker_timeout": "Seconds one Docker API call may take (pulls have their own limits).",
    # Flow containers
    "env_vars": "Extra environment for every flow container; a run config's own env wins over it.",
    "container_labels": "Extra labels for every flow container.",
    "volumes": (
        "Volumes for every flow container in Docker's -v syntax, /host/path:/path[:ro] or name:/path[:ro]"
        " (named volumes are created with the agent's labels)."
    ),
    "network": (
        "Docker networks flow containers join, the first at create and the others before the flow starts;"
        " host or none become the network mode."
    ),
    "host_gateway": (
        "Maps host.docker.internal to the host in flow containers, so they reach an API on the host."
    ),
    "init": (
        "Runs Docker's init (tini) as PID 1 of flow containers, so a cancellation's SIGTERM reaches the "
        "flow."
    ),
    "memory": (
        "Memory limit of every flow container (512m, 2g); swap is set equal, so a flow over it is "
        "OOM-killed, not swapped."
    ),
    "max_memory": (
        "The most memory a run config may ask for (larger requests are clamped); without MEMORY, also "
        "every container's limit."
    ),
    "cpus": "CPU limit of every flow container, as a number of CPUs (1.5).",
    "max_cpus": (
        "The most CPUs a run config may ask for (larger requests are clamped); without CPUS, also every "
        "container's limit."
    ),
    "pids_limit": "Process limit of every flow container.",
    "max_pids_limit": (
        "The highest process limit a run config may ask for; without PIDS_LIMIT, also every container's "
        "limit."
    ),
    "gpus": (
        "GPUs for every flow container, as Docker's --gpus takes them (all, a count, device=0,1); needs "
        "the NVIDIA container runtime."
    ),
    "runtime": "Container runtime of flow containers (nvidia, runc); unset, the daemon's default.",
    "pull_policy": (
        "When to pull a flow's image: default pulls images that name a registry and others only when "
        "absent, never is --no-pull."
    ),
    "no_pull": "Never pulls images: flows run only on images already on the host (PULL_POLICY=never).",
    "registry_credentials": (
        "Per-registry pull credentials as a JSON object of username and password or password_file (prefer"
        " the secret file prefect_cloud_agent_registry_credentials)."
    ),
    "max_concurrent_runs": (
        "Most of this agent's flow containers running at once, counted from Docker; further runs stay "
        "Scheduled (0: unlimited)."
    ),
    # The policy over run configs
    "allowed_images": (
        "Glob patterns of images flows may run (registry.example.com/team/*), matched on the normalized "
        "reference; unset, any image."
    ),
    "allowed_run_overrides": (
        "What run configs may ask for beyond env, ports and limits (privileged, cap_add, docker_socket, "
        "published_ports, ...); anything else is denied."
    ),
    "allowed_host_paths": "Host paths (and everything below them) run configs may bind-mount; unset, none.",
    "host_root": (
        "Where the host's filesystem is visible to the agent (/host with -v /:/host:ro), so symlinks in "
        "bind paths are resolved before the allow-list check."
    ),
    # Polling and launching
    "prefetch_seconds": (
        "Claims runs scheduled up to this many seconds ahead, then starts each at its scheduled time."
    ),
    "long_poll_seconds": (
        "Seconds a backend that offers long polling may hold a poll open while nothing is due (0: no long"
        " polling, at most 30)."
    ),
    "request_timeout": "Seconds one GraphQL request may take.",
    "max_concurrent_launches": (
        "How many flow runs may be pulled, created and started at the same time (running containers do "
        "not count)."
    ),
    "pull_progress_interval": "Seconds between pull-progress lines in a flow run's log.",
    "secrets_dir": "Directory of secret files (Docker and Compose secrets, Kubernetes secret volumes).",
    # Logs
    "level": "The agent's log level.",
    "flow_log_level": "Log level of flow runs (PREFECT__LOGGING__LEVEL in flow containers).",
    "send_flow_run_logs": "Whether flow containers send their logs to the API.",
    "show_flow_logs": (
        "Also streams flow containers' output to the agent's stdout, each line prefixed with the run's "
        "name."
    ),
    # Operations
    "health_address": (
        "HOST:PORT of the agent's health server (/api/health, /ready, /metrics); unset, no health server."
    ),
    "drain_timeout": "Seconds allowed on SIGTERM to finish the launches in flight before the agent exits.",
    "docker_outage_exit_s": (
        "Exits with code 3 once the Docker engine has been unreachable this many seconds, so a restart "
        "policy takes over (0: never)."
    ),
    "cancel_grace_seconds": (
        "Seconds between SIGTERM and SIGKILL when the agent stops a cancelled run's container."
    ),
    "heartbeat_interval": (
        "Seconds between the heartbeats sent while a run's image is pulled and its container created, so "
        "the backend does not take it for a zombie."
    ),
    "infra_retries": (
        "How many times a run is resubmitted after a Docker daemon restart stopped its container, before "
        "it is marked Failed."
    ),
    "watch_interval": "Seconds between checks of the containers this agent launched (exits, cancellations).",
    "keep_failed_containers_hours": (
        "Hours an exited container that did not succeed is kept for inspection before cleanup removes it."
    ),
    "keep_successful_containers_hours": (
        "Hours the container of a successful run (Success, exit code 0) is kept before cleanup removes it; "
        "0 removes it within seconds of the run's end."
    ),
    "cleanup_interval": (
        "Seconds between cleanup sweeps, which also remove what a restarted agent did not (a successful "
        "run's container once it is this old)."
    ),
    # The engine
    "engine": (
        "Where flow runs start: containers on this host's engine (Docker, or Podman's Docker-compatible API, "
        "detected), Podman explicitly, or replicated-job services of a Docker Swarm (the agent talks to a "
        "manager)."
    ),
    "swarm_constraints": "Swarm only: placement constraints for every flow run's task (node.role==worker).",
    "swarm_preferences": "Swarm only: spread preferences for every flow run's task (node.labels.zone).",
    "swarm_network": (
        "Swarm only: the attachable overlay network runs join when NETWORK is unset, created if missing; "
        "empty, each task on its node's default bridge."
    ),
    "swarm_schedule_timeout": (
        "Swarm only: seconds a task may wait for a suitable node before the run is Failed with Swarm's "
        "reason."
    ),
    "swarm_gpu_resource": (
        "Swarm only: the generic-resource kind that stands for GPUs on the nodes (NVIDIA-GPU); unset, "
        "runs asking for GPUs are refused."
    ),
}
