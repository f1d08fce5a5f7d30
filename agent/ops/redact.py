"""The agent's two masking rules, in one place: which env names hold secrets, and passwords inside URLs.

Every output that can show an env var or a URL (the log, `local-agent config`, `local-agent explain`, the
DEBUG container spec) masks through these functions, so a rule fixed here is fixed everywhere. Known secret
*values* (the token, registry passwords) live in `agent.ops.logs.SECRETS`, which applies `mask_urls` too.

Named `redact`, not `secrets`: a module called `secrets` would shadow the standard library's wherever the
`agent/` directory itself lands on `sys.path`.

Env names (case-insensitive) that hold secrets:

* any name containing TOKEN, SECRET, PASSWORD, PASSWD, PASSPHRASE, CREDENTIAL or AUTHORIZATION;
* any name where KEY or KEYS ends a word (API_KEY, APIKEY, AWS_SECRET_ACCESS_KEY, SSH_KEYS, KEY_1): masking a
  harmless `*_KEY` identifier (a `PREFECT__CONTEXT__FLOW_RUN_KEY`) only hides a value from a reader, while
  missing an API key leaks it, so every `*_KEY` is masked. KEY inside a longer word (KEYCLOAK_URL, KEYBOARD)
  is not a key: those values still go through `mask_urls`.
* except the flag `PREFECT__CLOUD__USE_LOCAL_SECRETS`, which the flow runner always sets to `false`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

MASK = "***"
_SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|AUTHORIZATION|KEYS?(?![A-Z])")
NOT_SECRET_NAMES = frozenset({"PREFECT__CLOUD__USE_LOCAL_SECRETS"})
# Values of a secret-named variable that are flags (`USE_TOKEN_AUTH=true`), not secrets: registered as
# known secrets they would blank every "true" in the log.
# A value registered as a known secret is masked in every log line: a short or plain one (`CACHE_KEY=default`,
# `MAX_KEYS=10`) would blank that word everywhere. Shorter values are still masked wherever their name shows.
MIN_REGISTERED = 8
_FLAG_VALUES = frozenset({"true", "false", "yes", "no", "none", "null", "on", "off"})
# scheme://[user]:password@host — the password runs to the authority's last `@` (an unencoded `@` in a
# password is common), the authority ends at whitespace or `/ ? #`. A password containing those must be
# percent-encoded to be a URL at all. Starting at the literal `://` (a scheme character before it) lets the
# regex engine skip to candidates: a 40 kB log line costs ~50 us, not the ~18 ms of a scheme-first pattern.
_URL_PASSWORD = re.compile(r"://(?<=[A-Za-z0-9+.\-]://)([^\s/?#:]*:)([^\s/?#]+)@")


def is_secret_name(name: str) -> bool:
    """Whether the env var `name` holds a secret (see the module docstring for the rule)."""
    upper = name.upper()
    return upper not in NOT_SECRET_NAMES and _SECRET_WORDS.search(upper) is not None


def mask_urls(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:***@host`, for every URL in `text`."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(rf"://\g<1>{MASK}@", text)


def url_passwords(text: str) -> list[str]:
    """The passwords of the URLs in `text`, as written and percent-decoded (clients log either)."""
    found = [match.group(2) for match in _URL_PASSWORD.finditer(text)] if "://" in text else []
    return found + [decoded for decoded in map(unquote, found) if decoded not in found]


def mask_env_value(name: str, value: str, mask: Callable[[str], str] = mask_urls) -> str:
    """A secret name's value becomes `***` (an empty one stays empty: "no token" is worth seeing);
    any other value is shown with `mask` applied (URL passwords, known secrets)."""
    if value and is_secret_name(name):
        return MASK
    return mask(value)


def mask_env(env: Mapping[str, Any], mask: Callable[[str], str] = mask_urls) -> dict[str, Any]:
    """`mask_env_value` over a whole environment (non-string values are kept as they are)."""
    return {key: mask_env_value(key, value, mask) if isinstance(value, str) else mask_data(value, mask)
            for key, value in env.items()}


def env_secrets(env: Mapping[str, str]) -> list[str]:
    """What to register as known secrets from an environment: secret names' values (flags excepted),
    URL passwords."""
    found = [value for key, value in env.items() if len(value) >= MIN_REGISTERED and is_secret_name(key)
             and value.strip().lower() not in _FLAG_VALUES]
    for value in env.values():
        found += url_passwords(value)
    return found


def mask_data(value: Any, mask: Callable[[str], str] = mask_urls) -> Any:
    """`mask` applied to every string inside JSON-like data (dict keys included), before it is dumped:
    masking dumped JSON would miss a secret whose quotes or backslashes JSON escaped."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {mask_data(key, mask): mask_data(item, mask) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_data(item, mask) for item in value]
    if isinstance(value, tuple):
        return tuple(mask_data(item, mask) for item in value)
    return value
