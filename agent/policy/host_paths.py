"""Host paths as dockerd sees them: cleaned like Go's `filepath.Clean`, then resolved through symlinks.

The policy judges a bind's host path before Docker mounts it. Judging the text as written is not enough:
`//var/run/docker.sock` and `/data/../var/run` are the socket to dockerd, and a symlink under an allowed
directory can point anywhere on the host. So a path is first cleaned lexically the way dockerd cleans it,
then, where the agent can see the host's filesystem (`HOST_ROOT`), resolved component by component inside
that root; the resolved path is what the policy checks and what Docker is given.

What remains (docs/run-options.md): with no `HOST_ROOT` only the lexical form is checked, and a component
can still be swapped for a symlink between the check and Docker's mount.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_SYMLINKS = 40  # Linux's own limit (ELOOP)
CONTAINER_MARKERS = (Path("/.dockerenv"), Path("/run/.containerenv"))


class HostPathError(ValueError):
    """The path cannot be resolved safely (a symlink loop, or a component the agent may not read)."""


def clean(path: str) -> str:
    """Go's `filepath.Clean` for absolute paths: one `/` per run (a leading `//` too), `.`/`..` resolved
    lexically (`..` stops at the root), no trailing `/`. posixpath.normpath keeps a leading `//`."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def under(path: str, root: str) -> bool:
    """`path` is `root` or lies below it (both cleaned); `/datax` is not below `/data`."""
    return path == root or root == "/" or path.startswith(root + "/")


def default_host_root() -> str:
    """`/` on the host itself; empty (cannot see the host, no resolution) inside a container."""
    return "" if any(marker.exists() for marker in CONTAINER_MARKERS) else "/"


def resolve(path: str, host_root: str) -> str:
    """The host path `path` names once every symlink is followed, as seen under `host_root`.

    Absolute link targets are taken relative to the root and `..` never climbs above it, so the result is
    always a host path. Components that do not exist are kept as written (Docker creates them for binds).
    With an empty `host_root` the cleaned path is returned unresolved.
    """
    cleaned = clean(path)
    if not host_root:
        return cleaned
    root = Path(host_root)
    resolved: list[str] = []
    pending = [part for part in reversed(cleaned.split("/")) if part]
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        target = _link_target(root.joinpath(*resolved, part))
        if target is None:
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise HostPathError(f"too many levels of symbolic links resolving {cleaned}")
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed(target.split("/")))
    return "/" + "/".join(resolved)


def _link_target(candidate: Path) -> str | None:
    """The symlink's target text, or None for anything else (missing, directory, file, socket)."""
    try:
        mode = os.lstat(candidate).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise HostPathError(f"cannot inspect {candidate}: {exc.strerror}") from exc
    if not stat.S_ISLNK(mode):
        return None
    try:
        return os.readlink(candidate)
    except OSError as exc:
        raise HostPathError(f"cannot read the symlink {candidate}: {exc.strerror}") from exc
