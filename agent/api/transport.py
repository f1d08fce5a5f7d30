"""The agent's GraphQL-over-HTTP transport: gql's httpx transport, one connection pool, connected once.

httpx rather than aiohttp (both are gql transports): an idle agent with gql's aiohttp transport measured
5.5 MiB more RSS and ~40 ms more start-up, most of it aiohttp's import, which also builds TLS contexts with
the CA bundle whether or not the API is HTTPS. Here the CAs are read only for an `https://` API, from the
system store as OpenSSL finds it (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured), as aiohttp did; proxy variables
are ignored (`trust_env` off), as aiohttp did.

The agent sends a dozen fixed documents (`agent/api/operations/*.graphql`, validated against the SDL in the
tests). Each is parsed by graphql-core once and cached, so a burst pays no parsing per request. We call the
gql transport directly rather than through `gql.Client`: the client turns a GraphQL `errors` answer into an
exception and loses `data`/`extensions`, while `agent.api.cloud` needs the whole answer to classify errors the
way the Prefect client does (`VERSION_LOCKING_ERROR`, `State update failed`, `UNAUTHENTICATED`,
cloud-api.md §1).

Outcomes: a JSON answer with `data` or `errors` is returned whatever the HTTP status; otherwise a non-2xx
status raises `HttpStatusError` (with the code; redirects are not followed: a plain-HTTP URL redirected to
HTTPS would go unverified) and anything else `ProtocolError`. Anything httpx raises on the way (refused,
reset, TLS, a corrupt body) becomes `NetworkError`; a timeout is the caller's `TimeoutError`.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

from gql import GraphQLRequest
from gql.transport import httpx as gql_httpx
from gql.transport.exceptions import (
    TransportClosed,
    TransportConnectionFailed,
    TransportProtocolError,
    TransportServerError,
)
from gql.transport.httpx import HTTPXAsyncTransport
from graphql import DocumentNode, parse


class TransportError(Exception):
    """The backend's answer is not a GraphQL result."""


class HttpStatusError(TransportError):
    """HTTP >= 400 without a GraphQL result in the body."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(TransportError):
    """HTTP < 400 but the body is not a GraphQL result (not JSON, or neither `data` nor `errors`)."""


class ClosedError(TransportError):
    """The transport is not connected."""


class NetworkError(TransportError):
    """The request did not get an answer: refused, reset, DNS, TLS, or a body that could not be read."""


# The httpx module gql's transport uses (gql prefers `httpx2` where it is installed): its error classes.
_HTTPX: Any = getattr(gql_httpx, "httpx")  # noqa: B009 - not re-exported by gql, so typed here
_REQUEST_ERROR: type[Exception] = _HTTPX.RequestError
_KEEP_ALIVE = 100  # idle connections kept (as aiohttp did), so a burst's second wave reuses the first's


@lru_cache(maxsize=64)
def _document(query: str) -> DocumentNode:
    """Parse each (fixed) document once; gql would otherwise parse it on every request."""
    return parse(query)


def _verify(url: str) -> ssl.SSLContext | bool:
    """Certificates checked against the system's CAs for HTTPS; no TLS context at all for plain HTTP."""
    if url.lower().startswith("https:"):
        return ssl.create_default_context()
    return False


class GraphQLHttp:
    """`connect()` once, `post()` many times (concurrently), `close()` at the end."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        # Timeouts are the caller's (asyncio.timeout per request): long polls need more than a fixed total.
        limits = _HTTPX.Limits(max_connections=100, max_keepalive_connections=_KEEP_ALIVE)
        self._transport = HTTPXAsyncTransport(url=url, headers=dict(headers), timeout=None, trust_env=False,
                                              verify=_verify(url), limits=limits)
        self._connected = False

    async def connect(self) -> None:
        if not self._connected:
            await self._transport.connect()  # type: ignore[no-untyped-call]
            self._connected = True

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._transport.close()  # type: ignore[no-untyped-call]

    async def post(self, query: str, variables: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One request; returns the answer (`data`, `errors`) or raises a `TransportError`."""
        if not self._connected:
            raise ClosedError("not connected")
        request = GraphQLRequest(_document(query), variable_values=variables)
        try:
            extra = {"headers": headers} if headers else None
            result = await self._transport.execute(request, extra_args=extra)
        except TransportServerError as exc:  # httpx's text has a "For more information" line: one line only
            lines = [line for line in str(exc).splitlines() if not line.startswith("For more information")]
            raise HttpStatusError("; ".join(lines), exc.code) from exc
        except TransportProtocolError as exc:
            raise ProtocolError(str(exc)) from exc
        except TransportClosed as exc:
            raise ClosedError(str(exc)) from exc
        except TransportConnectionFailed as exc:  # gql wraps what httpx raised
            cause = exc.__cause__
            if isinstance(cause, _REQUEST_ERROR):
                raise NetworkError(f"{type(cause).__name__}: {cause}".rstrip(": ")) from cause
            raise (cause or exc) from None
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = result.errors
        return answer
