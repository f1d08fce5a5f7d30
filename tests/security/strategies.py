"""Hypothesis strategies for hostile `DockerRun` run configs.

What an attacker who can register a flow controls is JSON: keys in any case (the daemon's Go decoder matches
them case-insensitively, the last spelling winning), duplicated, unknown; values of any JSON type; nesting
docker-py passes through unread (mounts, log configs, ulimits, device requests, port bindings); and host
paths spelled to slip past a string check (`//`, `/./`, `..`, trailing `/`, symlinks under an allowed dir).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from tests.support.docker_fixtures import RUN_ID

ALLOWED_DIR = os.path.join(tempfile.gettempdir(), f"lasec-{RUN_ID}")  # created by the test module
VOLUME_PREFIX = f"lasec-{RUN_ID}-"  # every named volume a generated config may create starts with this
SYMLINKS = {"etc-link": "/etc", "sock-link": "/var/run/docker.sock", "run-link": "/var/run", "root-link": "/"}
HOST_PATHS = (
    "/",
    "/etc",
    "/etc/passwd",
    "/var",
    "/var/run",
    "/run",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/proc/1/root",
    "/tmp",
    ALLOWED_DIR,
    f"{ALLOWED_DIR}/data",
    f"{ALLOWED_DIR}x",
    *(f"{ALLOWED_DIR}/{link}" for link in SYMLINKS),
    f"{ALLOWED_DIR}/data/../..",
    f"{ALLOWED_DIR}/../../etc",
)


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _camel(key: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in key.split("_"))


_CASE_VARIANTS: dict[str, SearchStrategy[str]] = {}
ONE_IN = {
    n: st.integers(0, n - 1) for n in (2, 3, 4, 5, 6, 8, 10, 12, 20)
}  # draw(ONE_IN[n]) == 0: one time in n


def _mixed_case(key: str, mask: int) -> str:
    return "".join(ch.upper() if mask >> i & 1 else ch.lower() for i, ch in enumerate(key))


def spelling(key: str) -> SearchStrategy[str]:
    """`key` as written half the time; otherwise lower, upper, Camel/snake or a random case mix."""
    if key not in _CASE_VARIANTS:
        variants = sorted({key.lower(), key.upper(), _camel(key), _snake(key)})
        mixed = st.integers(0, 2 ** len(key) - 1).map(lambda mask: _mixed_case(key, mask))
        _CASE_VARIANTS[key] = st.one_of(st.just(key), st.just(key), st.sampled_from(variants), mixed)
    return _CASE_VARIANTS[key]


def respelling(written: str) -> SearchStrategy[str]:
    """Another spelling of a key already written, so that it does not simply replace the first in the dict."""
    others = {written.lower(), written.upper(), written.swapcase(), _camel(written), _snake(written)} - {
        written
    }
    return st.sampled_from(sorted(others))


_SCALARS = st.none() | st.booleans() | st.integers(-(2**33), 2**33) | st.text("ab/:=,.-0T", max_size=6)
JUNK: SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text("abT", max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)  # any small JSON value: the wrong type for whatever key it lands on
_UNKNOWN_KEYS = st.sampled_from(["Bogus", "x", "Name", "Source", "Type"])


def json_object(
    fields: Mapping[str, SearchStrategy[Any]],
    min_fields: int = 0,
    required: tuple[str, ...] = (),
    again: Mapping[str, SearchStrategy[Any]] | None = None,
) -> SearchStrategy[dict[str, Any]]:
    """`required` and some other `fields`, in random order and spelling; sometimes one again, later, in
    another spelling and with another value (from `again`: the daemon keeps the last); sometimes an unknown
    key or a wrongly typed value."""
    optional = sorted(set(fields) - set(required))
    names = (
        st.lists(st.sampled_from(optional), min_size=min_fields, max_size=len(optional), unique=True)
        if optional
        else st.just([])
    )
    fixed = st.permutations(required)
    later = again or fields

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        chosen = [*draw(fixed), *draw(names)]
        pairs = [(draw(spelling(name)), draw(fields[name] if draw(ONE_IN[20]) else JUNK)) for name in chosen]
        if chosen and draw(ONE_IN[3]) == 0:
            index = draw(st.integers(0, len(chosen) - 1))
            pairs.append((draw(respelling(pairs[index][0])), draw(later.get(chosen[index], JUNK))))
        if draw(ONE_IN[6]) == 0:
            pairs.append((draw(_UNKNOWN_KEYS), draw(JUNK)))
        return dict(pairs)

    return build()


# ------------------------------------------------------------------------------------------------ paths
_BASES = st.sampled_from(HOST_PATHS)
_SEPARATORS = st.sampled_from(["/", "/", "/", "//", "/./", "/zz/../"])


@st.composite
def _host_path(draw: st.DrawFn) -> str:
    """A host path, mangled so that only a normalising, symlink-resolving check sees where it points."""
    parts = draw(_BASES).split("/")
    out = []
    for index, part in enumerate(parts):
        out.append(part)
        if index < len(parts) - 1:
            out.append(draw(_SEPARATORS))
    mangled = "".join(out)
    if draw(ONE_IN[5]) == 0:
        mangled += "/"
    return mangled if draw(ONE_IN[10]) else "/" + mangled


HOST_PATH = _host_path()


def host_path() -> SearchStrategy[str]:
    return HOST_PATH


VOLUME_NAME = st.sampled_from([f"{VOLUME_PREFIX}a", f"{VOLUME_PREFIX}b"])
SOURCE = st.one_of(HOST_PATH, VOLUME_NAME, st.sampled_from(["", "relative/x", "~/x", "./x"]))
TARGET = st.sampled_from(["/mnt/h", "/x", "/data", "/etc", "/mnt/h", "/x", "/data", "/", "rel"])
_BIND_MODES = st.sampled_from(["", ":ro", ":rw", ":rshared", ":ro,rslave", ":z", ":nocopy", ":bogus"])


def source() -> SearchStrategy[str]:
    return SOURCE


def target() -> SearchStrategy[str]:
    return TARGET


@st.composite
def bind_string(draw: st.DrawFn) -> str:
    return f"{draw(SOURCE)}:{draw(TARGET)}{draw(_BIND_MODES)}"


def binds() -> SearchStrategy[Any]:
    """The list form (`src:dst[:mode]`) and both dict forms docker-py accepts."""
    spec = st.one_of(
        target(),
        json_object(
            {"bind": target(), "mode": st.sampled_from(["ro", "rw", "rshared"]), "ro": st.booleans()}
        ),
    )
    return st.one_of(
        st.lists(bind_string(), min_size=1, max_size=3),
        st.dictionaries(source(), spec, min_size=1, max_size=2),
    )


# ------------------------------------------------------------------------------------------------ nesting
# Options maps are Go maps: their keys are matched exactly, so they are not respelled.
_DRIVER_OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "o": st.sampled_from(["bind", "rbind", "ro", "size=1m"]),
        "device": HOST_PATH,
        "type": st.sampled_from(["none", "none", "tmpfs"]),
    },
)
_DRIVER = json_object(
    {"Name": st.sampled_from(["local", "local", "nvidia", ""]), "Options": _DRIVER_OPTIONS},
    required=("Name", "Options"),
)
_VOLUME_OPTIONS = {"NoCopy": st.booleans(), "DriverConfig": _DRIVER, "Labels": st.just({"k": "v"})}
MOUNT_FIELDS: dict[str, SearchStrategy[Any]] = {
    "Type": st.sampled_from(["bind", "volume", "tmpfs", "bind", "npipe"]),
    "Source": SOURCE,
    "Target": TARGET,
    "ReadOnly": st.booleans(),
    "BindOptions": json_object(
        {
            "Propagation": st.sampled_from(["rprivate", "rshared", "shared", "rslave"]),
            "NonRecursive": st.booleans(),
        }
    ),
    "VolumeOptions": json_object(_VOLUME_OPTIONS),
    "TmpfsOptions": json_object({"SizeBytes": st.integers(-1, 1 << 30), "Mode": st.integers(0, 0o7777)}),
}


def _shaped(
    kind: str, source: SearchStrategy[str], options: str, option_values: SearchStrategy[Any]
) -> SearchStrategy[dict[str, Any]]:
    """A mount that makes sense for `kind` (so the daemon takes it), plus whatever `json_object` adds."""
    fields = {
        "Type": st.just(kind),
        "Source": source,
        "Target": TARGET,
        "ReadOnly": st.booleans(),
        options: option_values,
    }
    return json_object(fields, required=("Type", "Source", "Target", options), again=MOUNT_FIELDS)


BIND_MOUNT = _shaped("bind", HOST_PATH, "BindOptions", MOUNT_FIELDS["BindOptions"])
DECOY_MOUNT = st.one_of(
    _shaped(
        "volume",
        st.one_of(VOLUME_NAME, st.just("")),
        "VolumeOptions",
        json_object(_VOLUME_OPTIONS, required=("DriverConfig",)),
    ),
    _shaped("tmpfs", st.just(""), "TmpfsOptions", MOUNT_FIELDS["TmpfsOptions"]),
)


@st.composite
def _smuggled(draw: st.DrawFn) -> dict[str, Any]:
    """A harmless-looking mount, then a bind's keys in other spellings: the decoder keeps the last."""
    mount = dict(draw(DECOY_MOUNT))
    for key, value in draw(BIND_MOUNT).items():
        spellings = (
            [key]
            if key not in mount
            else sorted({key.lower(), key.upper(), key.swapcase(), key.capitalize()} - set(mount))
        )
        if spellings:
            mount[draw(st.sampled_from(spellings))] = value
    return mount


MOUNT = st.one_of(BIND_MOUNT, DECOY_MOUNT, _smuggled(), json_object(MOUNT_FIELDS, min_fields=2))


def mount() -> SearchStrategy[dict[str, Any]]:
    """A `HostConfig.Mounts` entry as docker-py passes it: raw JSON, every nested Engine key spellable."""
    return MOUNT


def log_config() -> SearchStrategy[dict[str, Any]]:
    config = st.dictionaries(
        st.sampled_from(["max-size", "syslog-address", "tag", "env"]),
        st.sampled_from(["10m", "udp://10.0.0.1:514", "x"]),
        max_size=2,
    )
    return json_object(
        {
            "Type": st.sampled_from(["json-file", "syslog", "none", "local", "journald", "gelf"]),
            "Config": config,
        }
    )


def ulimits() -> SearchStrategy[list[Any]]:
    item = json_object(
        {
            "Name": st.sampled_from(["nofile", "nproc", "memlock", "core"]),
            "Soft": st.integers(-1, 1 << 20),
            "Hard": st.integers(-1, 1 << 20),
        },
        min_fields=1,
    )
    return st.lists(item, max_size=2)


def device_requests() -> SearchStrategy[list[Any]]:
    item = json_object(
        {
            "Driver": st.sampled_from(["", "nvidia"]),
            "Count": st.integers(-1, 2),
            "DeviceIDs": st.just(["0"]),
            "Capabilities": st.just([["gpu"]]),
            "Options": st.just({}),
        },
        min_fields=1,
    )
    return st.lists(item, max_size=2)


def host_ip() -> SearchStrategy[str]:
    return st.sampled_from(
        ["127.0.0.1", "127.1.2.3", "::1", "", "0.0.0.0", "::", "10.0.0.1", "localhost", "::ffff:127.0.0.1"]
    )


def port_binding() -> SearchStrategy[Any]:
    """Every form docker-py accepts: 18080, "18080", ["ip", port] (a JSON tuple), lists, HostIp/HostPort."""
    port = st.one_of(st.integers(18000, 18999), st.integers(18000, 18999).map(str), st.just(""), st.none())
    pair = st.tuples(host_ip(), port).map(list)
    explicit = json_object({"HostIp": host_ip(), "HostPort": port}, min_fields=1)
    single = st.one_of(port, pair, explicit)
    return st.one_of(single, st.lists(single, min_size=1, max_size=2))


def port_bindings() -> SearchStrategy[dict[Any, Any]]:
    key = st.sampled_from(["8080", "8080/tcp", "53/udp", 8080, "9090"])
    return st.dictionaries(key, port_binding(), min_size=1, max_size=2)


def tmpfs() -> SearchStrategy[Any]:
    options = st.lists(
        st.sampled_from(
            [
                "size=1m",
                "mode=1777",
                "uid=0",
                "noexec",
                "nosuid",
                "nodev",
                "exec",
                "suid",
                "dev",
                "ro",
                "nr_inodes=10",
                "huge=always",
                "mpol=default",
            ]
        ),
        max_size=3,
    ).map(",".join)
    path = st.sampled_from(["/t", "/run", "/tmp"])
    return st.one_of(
        st.dictionaries(path, options, min_size=1, max_size=2),
        st.lists(st.tuples(path, options).map(":".join), min_size=1, max_size=2),
    )
