"""Every endpoint of the Docker Engine API v1.41 (Docker 20.10; moby's api/swagger.yaml of that release),
as (method, path template), to measure what the socket proxy lets through beyond the agent's list.

Templates use the list's placeholders: `{id}` one path segment, `{name}` an image or plugin reference (one or
more segments).
"""

from __future__ import annotations

CATALOGUE: tuple[tuple[str, str], ...] = (
    # containers
    ("GET", "/containers/json"), ("POST", "/containers/create"), ("GET", "/containers/{id}/json"),
    ("GET", "/containers/{id}/top"), ("GET", "/containers/{id}/logs"), ("GET", "/containers/{id}/changes"),
    ("GET", "/containers/{id}/export"), ("GET", "/containers/{id}/stats"),
    ("POST", "/containers/{id}/resize"), ("POST", "/containers/{id}/start"),
    ("POST", "/containers/{id}/stop"), ("POST", "/containers/{id}/restart"),
    ("POST", "/containers/{id}/kill"), ("POST", "/containers/{id}/update"),
    ("POST", "/containers/{id}/rename"), ("POST", "/containers/{id}/pause"),
    ("POST", "/containers/{id}/unpause"), ("POST", "/containers/{id}/attach"),
    ("GET", "/containers/{id}/attach/ws"), ("POST", "/containers/{id}/wait"),
    ("DELETE", "/containers/{id}"), ("HEAD", "/containers/{id}/archive"),
    ("GET", "/containers/{id}/archive"), ("PUT", "/containers/{id}/archive"), ("POST", "/containers/prune"),
    # exec
    ("POST", "/containers/{id}/exec"), ("POST", "/exec/{id}/start"), ("POST", "/exec/{id}/resize"),
    ("GET", "/exec/{id}/json"),
    # images
    ("GET", "/images/json"), ("POST", "/build"), ("POST", "/build/prune"), ("POST", "/images/create"),
    ("GET", "/images/{name}/json"), ("GET", "/images/{name}/history"), ("POST", "/images/{name}/push"),
    ("POST", "/images/{name}/tag"), ("DELETE", "/images/{name}"), ("GET", "/images/search"),
    ("POST", "/images/prune"), ("POST", "/commit"), ("GET", "/images/{name}/get"), ("GET", "/images/get"),
    ("POST", "/images/load"),
    # networks
    ("GET", "/networks"), ("GET", "/networks/{id}"), ("DELETE", "/networks/{id}"),
    ("POST", "/networks/create"), ("POST", "/networks/{id}/connect"), ("POST", "/networks/{id}/disconnect"),
    ("POST", "/networks/prune"),
    # volumes
    ("GET", "/volumes"), ("POST", "/volumes/create"), ("GET", "/volumes/{id}"), ("DELETE", "/volumes/{id}"),
    ("POST", "/volumes/prune"),
    # swarm, nodes, services, tasks, secrets, configs
    ("GET", "/swarm"), ("POST", "/swarm/init"), ("POST", "/swarm/join"), ("POST", "/swarm/leave"),
    ("POST", "/swarm/update"), ("GET", "/swarm/unlockkey"), ("POST", "/swarm/unlock"), ("GET", "/nodes"),
    ("GET", "/nodes/{id}"), ("DELETE", "/nodes/{id}"), ("POST", "/nodes/{id}/update"), ("GET", "/services"),
    ("POST", "/services/create"), ("GET", "/services/{id}"), ("DELETE", "/services/{id}"),
    ("POST", "/services/{id}/update"), ("GET", "/services/{id}/logs"), ("GET", "/tasks"),
    ("GET", "/tasks/{id}"), ("GET", "/tasks/{id}/logs"), ("GET", "/secrets"), ("POST", "/secrets/create"),
    ("GET", "/secrets/{id}"), ("DELETE", "/secrets/{id}"), ("POST", "/secrets/{id}/update"),
    ("GET", "/configs"), ("POST", "/configs/create"), ("GET", "/configs/{id}"), ("DELETE", "/configs/{id}"),
    ("POST", "/configs/{id}/update"),
    # plugins
    ("GET", "/plugins"), ("GET", "/plugins/privileges"), ("POST", "/plugins/pull"),
    ("GET", "/plugins/{name}/json"), ("DELETE", "/plugins/{name}"), ("POST", "/plugins/{name}/enable"),
    ("POST", "/plugins/{name}/disable"), ("POST", "/plugins/{name}/upgrade"), ("POST", "/plugins/create"),
    ("POST", "/plugins/{name}/push"), ("POST", "/plugins/{name}/set"),
    # system, distribution, session
    ("POST", "/auth"), ("GET", "/info"), ("GET", "/version"), ("GET", "/_ping"), ("HEAD", "/_ping"),
    ("GET", "/events"), ("GET", "/system/df"), ("GET", "/distribution/{name}/json"), ("POST", "/session"),
)

#: How each placeholder is filled when the catalogue is sent through the proxy.
SAMPLES = {"{id}": "4f2b0c1d9e8a", "{name}": "library/busybox:latest"}


def instantiate(template: str) -> str:
    for placeholder, value in SAMPLES.items():
        template = template.replace(placeholder, value)
    return template
