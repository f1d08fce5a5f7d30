"""Docker API paths as endpoint templates, and the committed list of them (docs/docker-api.md).

A concrete request (`GET /v1.41/images/127.0.0.1:5000/repo/x:tag/json?x=1`) becomes the endpoint it calls
(`GET /images/{name}/json`): no version prefix, no query, URL-decoded, and matched against the list's
templates, where `{id}` is one path segment and `{name}` (an image reference) one or more. A path no template
matches is templated by rule of thumb instead, so a failure names the row a developer would add.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
API_LIST = REPO_ROOT / "docs" / "docker-api.md"
ENGINES = frozenset({"docker", "podman", "swarm"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})
HEADER = ["Method", "Path", "Engine", "Why"]
PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
VERSION = re.compile(r"^/v[0-9]+(\.[0-9]+)*(?=/|$)")  # /v1.41; libpod's /v4.0.0
CELL_SPLIT = re.compile(r"(?<!\\)\|")

# Rule of thumb for paths the list does not know yet: the segment after these is an object id or name ...
ID_COLLECTIONS = frozenset({"containers", "services", "networks", "volumes", "tasks", "nodes", "secrets",
                            "configs", "exec"})
# ... unless it is one of the collection's own endpoints ...
COLLECTION_ENDPOINTS = frozenset({"json", "create", "prune", "load", "search", "import", "get", "build",
                                  "pull", "privileges", "init", "join", "leave", "update", "unlock",
                                  "unlockkey"})
# ... and these take an image or plugin reference of any number of segments, then an optional action.
NAME_COLLECTIONS = frozenset({"images", "distribution", "plugins"})
NAME_ACTIONS = frozenset({"json", "history", "push", "tag", "get", "enable", "disable", "upgrade", "set"})


class ApiListError(ValueError):
    """docs/docker-api.md is malformed: the message names the line."""


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    engines: frozenset[str]
    why: str

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return template_pattern(self.template)

    @property
    def literal_chars(self) -> int:
        """How specific the template is: a literal `/containers/json` beats `/containers/{id}`."""
        return len(PLACEHOLDER.sub("", self.template))


def template_pattern(template: str) -> re.Pattern[str]:
    parts: list[str] = []
    position = 0
    for match in PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[position:match.start()]))
        parts.append({"id": "[^/]+", "name": ".+"}[match.group(1)])
        position = match.end()
    parts.append(re.escape(template[position:]))
    return re.compile("".join(parts))


def clean_path(target: str) -> str:
    """The request target as the list writes paths: no scheme/host, query or `/vX.YY`, URL-decoded."""
    path = urlsplit(target).path if "://" in target else target.partition("?")[0].partition("#")[0]
    return unquote(VERSION.sub("", path)) or "/"


def match(method: str, path: str, allowed: list[Endpoint]) -> Endpoint | None:
    """The most specific listed endpoint of `method` that `path` (clean) calls, or None."""
    found = [e for e in allowed if e.method == method and e.pattern.fullmatch(path)]
    return max(found, key=lambda e: e.literal_chars) if found else None


def guess_template(path: str) -> str:
    """A template for a path the list does not know: ids and image references replaced by rule of thumb."""
    segments = path.strip("/").split("/")
    if len(segments) < 2:
        return path
    head, rest = segments[0], segments[1:]
    if head in NAME_COLLECTIONS and not (len(rest) == 1 and rest[0] in COLLECTION_ENDPOINTS):
        action = [rest[-1]] if len(rest) > 1 and rest[-1] in NAME_ACTIONS else []
        return "/" + "/".join([head, "{name}", *action])
    if head in ID_COLLECTIONS and rest[0] not in COLLECTION_ENDPOINTS:
        return "/" + "/".join([head, "{id}", *rest[1:]])
    return path


def template_for(method: str, path: str, allowed: list[Endpoint]) -> tuple[str, bool]:
    """(template, listed): the listed template the call matches, else a guessed one."""
    endpoint = match(method, path, allowed)
    return (endpoint.template, True) if endpoint is not None else (guess_template(path), False)


def load_allowed(path: Path = API_LIST) -> list[Endpoint]:
    """The rows of the list's first table headed `| Method | Path | Engine | Why |`."""
    endpoints: list[Endpoint] = []
    in_table = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        cells = table_cells(line)
        if not in_table:
            in_table = cells == HEADER
            continue
        if not cells:
            break
        if all(set(c) <= set("-: ") for c in cells):
            continue
        endpoints.append(parse_row(cells, f"{path.name}:{number}"))
    seen: set[tuple[str, str]] = set()
    for endpoint in endpoints:
        key = (endpoint.method, endpoint.template)
        if key in seen:
            raise ApiListError(f"{path.name}: {endpoint.method} {endpoint.template} is listed twice")
        seen.add(key)
    if not endpoints:
        raise ApiListError(f"{path.name}: no `| Method | Path | Engine | Why |` table with rows")
    return endpoints


def table_cells(line: str) -> list[str]:
    """A markdown table row's cells (`\\|` inside a cell is text), else []."""
    text = line.strip()
    return [c.strip() for c in CELL_SPLIT.split(text)[1:-1]] if text.startswith("|") else []


def parse_row(cells: list[str], where: str) -> Endpoint:
    if len(cells) != 4:
        raise ApiListError(f"{where}: a row has 4 cells (Method, Path, Engine, Why), this one {len(cells)}")
    method, template, engine_cell, why = cells
    template = template.strip("`")
    if method not in METHODS:
        raise ApiListError(f"{where}: unknown method {method!r}")
    if not template.startswith("/") or "?" in template or VERSION.match(template):
        raise ApiListError(f"{where}: a path starts with / and has no version prefix or query: {template!r}")
    unknown = set(PLACEHOLDER.findall(template)) - {"id", "name"}
    if unknown or "{" in PLACEHOLDER.sub("", template):
        raise ApiListError(f"{where}: only {{id}} and {{name}} placeholders exist: {template!r}")
    engines = frozenset(e.strip() for e in engine_cell.split(",") if e.strip())
    if not engines or not engines <= ENGINES:
        raise ApiListError(f"{where}: engines are a comma list of {sorted(ENGINES)}: {engine_cell!r}")
    if not why:
        raise ApiListError(f"{where}: {method} {template} needs a Why")
    return Endpoint(method, template, engines, why)
