"""The building blocks of `agent.policy.host_config`: the closed base model, checked scalars, and docker-py's
shorthand forms (`"src:dst:ro"` binds, `{port: (ip, port)}`, `["host:ip"]`, `"/path:size=64m"`) turned into
the one canonical shape the typed model then validates field by field.

A shorthand that cannot be read unambiguously is an error, never a guess that drops part of it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from agent.policy.host_paths import clean
from agent.policy.rules import parse_memory

PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")  # Docker's volume (and container) names
_TOKEN = re.compile(r"^[A-Za-z0-9_.:=/,+@-]+$")  # option-ish strings: no spaces, quotes or newlines
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
PORT = re.compile(r"^(\d{1,5}(-\d{1,5})?)?$")


def _no_control(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("control characters are not allowed")
    return value


def _container_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("expected an absolute container path")
    path = clean(_no_control(value))
    if path == "/" or ":" in path or "," in path:
        raise ValueError(f"invalid container path {value!r}")
    return path


def _token(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"invalid value {value!r}")
    return value


def _ip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an IP address string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"invalid IP address {value!r}") from exc


def _memory(value: Any) -> int:
    """Bytes, from an int or Docker's units (`512m`); -1 (unlimited) is kept for the policy to clamp."""
    if isinstance(value, int) and not isinstance(value, bool) and value == -1:
        return -1
    if isinstance(value, str) and value.strip() == "-1":
        return -1
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size (int or string such as 512m), got {type(value).__name__}")
    return parse_memory(value)


ContainerPath = Annotated[str, BeforeValidator(_container_path)]
Token = Annotated[str, BeforeValidator(_token)]
IpAddress = Annotated[str, BeforeValidator(_ip)]
Memory = Annotated[int, BeforeValidator(_memory)]
Size = Annotated[int, BeforeValidator(lambda v: parse_memory(v) if isinstance(v, int | str) else v)]
Text = Annotated[str, BeforeValidator(lambda v: _no_control(v) if isinstance(v, str) else v)]


class Closed(BaseModel):
    """Exact keys, no extras, no coercion (`"1"` is not an int, `1` is not a bool)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: Any) -> Any:
        """Alternative spellings (`Count`/`count`, `DeviceIDs`/`device_ids`) may not both be given."""
        if isinstance(data, Mapping):
            for name, info in cls.model_fields.items():
                alias = info.validation_alias
                if isinstance(alias, AliasChoices):
                    given = [str(c) for c in alias.choices if c in data]
                    if len(given) > 1:
                        raise ValueError(f"{name} is given twice ({' and '.join(given)})")
        return data


def either(engine: str, kwarg: str) -> Any:
    return Field(None, validation_alias=AliasChoices(engine, kwarg))


# ------------------------------------------------------------------------------------------------ forms
class BindDictSpec(Closed):
    """docker-py's dict form of one bind: `{host_path: {"bind": ..., "mode": ...}}`."""

    bind: ContainerPath
    mode: str | None = None
    ro: bool | None = None
    propagation: Literal["private", "rprivate", "shared", "rshared", "slave", "rslave"] | None = None


def _bind_options(text: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for option in text.split(","):
        if option in ("ro", "rw") and "read_only" not in fields:
            fields["read_only"] = option == "ro"
        elif option in PROPAGATIONS and "propagation" not in fields:
            fields["propagation"] = option
        else:
            raise ValueError(f"unsupported bind option {option!r} in {text!r} (use ro|rw and a propagation)")
    return fields


def binds_form(value: Any) -> Any:
    if isinstance(value, list):
        entries = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"expected SRC:DST[:OPTIONS] strings, got {type(item).__name__}")
            parts = item.split(":")
            if len(parts) not in (2, 3):
                raise ValueError(f"invalid bind {item!r}: use SRC:DST[:ro|rw]")
            entries.append({"source": parts[0], "target": parts[1],
                            **(_bind_options(parts[2]) if len(parts) == 3 else {})})
        return entries
    if isinstance(value, Mapping):
        return [_bind_from_dict(source, spec) for source, spec in value.items()]
    raise ValueError(f"expected a list or an object, got {type(value).__name__}")


def _bind_from_dict(source: Any, spec: Any) -> dict[str, Any]:
    if isinstance(spec, str):
        return {"source": source, "target": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"expected a container path or {{bind, mode}}, got {type(spec).__name__}")
    parsed = BindDictSpec.model_validate(spec)
    if parsed.ro is not None and parsed.mode is not None:
        raise ValueError("a bind cannot give both ro and mode")
    fields = _bind_options(parsed.mode) if parsed.mode else {}
    if parsed.ro is not None:
        fields["read_only"] = parsed.ro
    if parsed.propagation:
        if "propagation" in fields:
            raise ValueError("propagation is given twice")
        fields["propagation"] = parsed.propagation
    return {"source": source, "target": parsed.bind, **fields}


def tmpfs_form(value: Any) -> Any:
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ValueError("expected PATH[:OPTIONS] strings")
        pairs = [tuple(item.split(":", 1)) if ":" in item else (item, "") for item in value]
    else:
        raise ValueError(f"expected an object or a list, got {type(value).__name__}")
    entries = []
    for target, options in pairs:
        if not isinstance(options, str):
            raise ValueError(f"tmpfs options of {target!r} must be a string such as 'size=64m'")
        entries.append({"target": target, "options": [o for o in options.split(",") if o]})
    return entries


def port_key(key: Any) -> str:
    """`8080`, `"8080"` or `"8080/udp"` as Docker's `8080/tcp` form."""
    text = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
    if not isinstance(text, str) or not re.match(r"^\d{1,5}(-\d{1,5})?(/(tcp|udp|sctp))?$", text):
        raise ValueError(f"invalid container port {key!r} (use 8080 or 8080/udp)")
    return text if "/" in text else f"{text}/tcp"


def _host_port(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"HostPort": str(value)}
    if isinstance(value, str):
        return {"HostPort": value}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple) and 1 <= len(value) <= 2 and isinstance(value[0], str):
        return {"HostIp": value[0], **(_host_port(value[1]) if len(value) == 2 else {})}
    raise ValueError(f"invalid port binding {value!r}")


def _is_pair(value: Any) -> bool:
    """`["127.0.0.1", 8080]`: docker-py's (ip, port) tuple after a JSON round trip, not two bindings."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= 2 or not isinstance(value[0], str):
        return False
    try:
        ipaddress.ip_address(value[0])
    except ValueError:
        return False
    return True


def port_bindings_form(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ValueError("expected an object {container_port: binding}")
    result: dict[str, list[dict[str, Any]]] = {}
    for key, binding in value.items():
        bindings = binding if isinstance(binding, list) and not _is_pair(binding) else [binding]
        port = port_key(key)
        if port in result:
            raise ValueError(f"container port {port} is given twice")
        result[port] = [_host_port(item) for item in bindings]
    return result


def extra_hosts_form(value: Any) -> Any:
    if isinstance(value, list):
        if not all(isinstance(item, str) and ":" in item for item in value):
            raise ValueError("expected HOST:IP strings")
        return dict(item.split(":", 1) for item in value)
    return value


def _host_ip(value: Any) -> str:
    return "host-gateway" if value == "host-gateway" else _ip(value)


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not _HOST.match(value):
        raise ValueError(f"invalid host name {value!r}")
    return value


def links_form(value: Any) -> Any:
    return [f"{k}:{v}" for k, v in value.items()] if isinstance(value, Mapping) else value


Hostname = Annotated[str, BeforeValidator(_hostname)]
HostIp = Annotated[str, BeforeValidator(_host_ip)]
Namespace = Annotated[str, Field(pattern=r"^(|private|shareable|none|host|container:[a-zA-Z0-9][\w.-]*)$")]
CgroupRule = Annotated[str, Field(pattern=r"^[abc] [0-9*]+:[0-9*]+ [rwm]{1,3}$")]
Cpuset = Annotated[str, Field(pattern=r"^[0-9,-]*$")]
Capability = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]
Group = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$"),
                  BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)]
