# Local Agent images, one multi-stage file:
#   docker build -t local-agent .                              # target `agent` (the default, last stage)
#   docker build -t local-agent-server --target server .       # the Prefect-Server-compatible API
#
# Online (a normal machine) this builds from python:3.12-slim and PyPI. Offline, fill `wheels/` on the host
# (`pip wheel -w wheels ...`) and pass:
#   --build-arg PYTHON_IMAGE=local/python:3.11-slim --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels
# The final stages copy only /opt/venv from the build stages: no compiler, pip cache or wheels ship.

ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# No defaults: an unset PIP_NO_INDEX means "use PyPI"; an empty one would make pip fail ("invalid truth value").
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
COPY wheels/ /wheels/
WORKDIR /src
# Dependencies first, from the metadata alone (empty packages), so code edits reuse this layer.
COPY pyproject.toml README.md ./
RUN set -eu; \
    # Tools such as compose v1 may pass an unset build arg as an empty string: treat empty as unset.
    [ -n "${PIP_NO_INDEX:-}" ] || unset PIP_NO_INDEX; \
    [ -n "${PIP_FIND_LINKS:-}" ] || unset PIP_FIND_LINKS; \
    python3 -m venv /opt/venv; \
    mkdir -p agent server; \
    /opt/venv/bin/pip install --quiet .; \
    /opt/venv/bin/pip uninstall --quiet --yes local-agent
COPY agent/ agent/
COPY server/ server/
RUN set -eu; \
    [ -n "${PIP_NO_INDEX:-}" ] || unset PIP_NO_INDEX; \
    [ -n "${PIP_FIND_LINKS:-}" ] || unset PIP_FIND_LINKS; \
    /opt/venv/bin/pip install --quiet --no-deps . ; \
    /opt/venv/bin/local-agent --help > /dev/null

# The server's extra dependencies (SQLAlchemy, graphql-core) go on top, in their own stage: the agent never
# carries them.
FROM build AS build-server
# ARGs are per stage: declare them again (still without defaults).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN set -eu; \
    [ -n "${PIP_NO_INDEX:-}" ] || unset PIP_NO_INDEX; \
    [ -n "${PIP_FIND_LINKS:-}" ] || unset PIP_FIND_LINKS; \
    /opt/venv/bin/pip install --quiet ".[server]"; \
    /opt/venv/bin/local-agent-server --help > /dev/null; \
    /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools

# The agent's venv without the installer (pip and setuptools are ~25 MB the running image never uses).
FROM build AS venv-agent
RUN /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools

# ---------------------------------------------------------------------------------------------------------------
# What both runtime images share: tini (PID 1 that forwards SIGTERM and reaps zombies) and an unprivileged user.
FROM ${PYTHON_IMAGE} AS runtime
RUN set -eu; \
    if ! command -v tini > /dev/null; then \
        apt-get update; \
        apt-get install --yes --no-install-recommends tini; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 app; \
    useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# ---------------------------------------------------------------------------------------------------------------
FROM runtime AS server
COPY --from=build-server /opt/venv /opt/venv
# /data holds the SQLite database; /tokens/* are where compose's one-shot `tokens` service writes the tokens it
# creates. A named volume mounted on an image directory copies its owner, so they must exist owned by `app`.
RUN install --directory --owner app --group app /data /tokens/runner /tokens/user
ENV LOCAL_AGENT_SERVER_HOST=0.0.0.0 \
    LOCAL_AGENT_SERVER_PORT=4200 \
    LOCAL_AGENT_SERVER_DATABASE_URL=sqlite:////data/local-agent-server.db \
    LOCAL_AGENT_SERVER_AUTH=token \
    MALLOC_ARENA_MAX=2
# MALLOC_ARENA_MAX: glibc keeps freed memory per worker-thread arena; two arenas return large bodies' memory.
USER app
WORKDIR /data
EXPOSE 4200
# `tini -s`: also correct when compose adds its own init (`init: true`) and tini is then not PID 1.
ENTRYPOINT ["tini", "-s", "--", "local-agent-server"]
CMD ["start"]
# The API answers `query { hello }` without a token; anything else than HTTP 200 marks the container unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:%s/graphql' % os.environ.get('LOCAL_AGENT_SERVER_PORT', '4200'), b'{\"query\": \"query { hello }\"}', {'Content-Type': 'application/json'}), timeout=4)"]

# ---------------------------------------------------------------------------------------------------------------
# The agent (default target). It talks to the Docker engine through the mounted socket, which usually belongs to
# root:docker with mode 660, so by default it runs as root: whoever controls the socket is root on the host
# anyway, so a non-root user in the docker group would buy nothing. To run it unprivileged all the same:
#   docker run --user 10001 --group-add "$(stat -c %g /var/run/docker.sock)" ...
FROM runtime AS agent
COPY --from=venv-agent /opt/venv /opt/venv
# The health server (/api/health, /ready) on all interfaces of the container: HEALTHCHECK and orchestrator probes
# reach it; nothing publishes it unless you do.
ENV PREFECT__CLOUD__AGENT__HEALTH_ADDRESS=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["tini", "-s", "--", "local-agent"]
CMD ["start"]
# `local-agent check` asks the agent's own health endpoint (no curl in the image); it exits 0 or 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["local-agent", "check"]
