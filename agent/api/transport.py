"""The agent's GraphQL-over-HTTP transport: gql's aiohttp transport, one session, connected once.

The agent sends a dozen fixed documents (`agent/api/operations/*.graphql`, validated against the SDL in the
tests). Each is parsed by graphql-core once and cached, so a burst pays no parsing per request. We call the
gql transport directly rather than through `gql.Client`: the client turns a GraphQL `errors` answer into an
exception and loses `data`/`extensions`, while `agent.api.cloud` needs the whole answer to classify errors the
way the Prefect client does (`VERSION_LOCKING_ERROR`, `State update failed`, `UNAUTHENTICATED`,
cloud-api.md §1).

Outcomes: a JSON answer with `data` or `errors` is returned whatever the HTTP status; otherwise HTTP >= 400
raises `HttpStatusError` (with the code) and anything else `ProtocolError`. Network failures surface as the
underlying aiohttp/OS/timeout exception, so `agent.api.cloud.classify_exception` tells transient ones apart.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from gql import GraphQLRequest
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.exceptions import (
    TransportClosed,
    TransportConnectionFailed,
    TransportProtocolError,
    TransportServerError,
)
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


@lru_cache(maxsize=64)
def _document(query: str) -> DocumentNode:
    """Parse each (fixed) document once; gql would otherwise parse it on every request."""
    return parse(query)


class GraphQLHttp:
    """`connect()` once, `post()` many times (concurrently), `close()` at the end."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        # Timeouts are the caller's (asyncio.timeout per request): long polls need more than a fixed total.
        self._transport = AIOHTTPTransport(url=url, headers=dict(headers), timeout=None,
                                           json_serialize=json.dumps)
        self._connected = False

    async def connect(self) -> None:
        if not self._connected:
            await self._transport.connect()
            self._connected = True

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._transport.close()

    async def post(self, query: str, variables: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One request; returns the answer (`data`, `errors`) or raises a `TransportError`."""
        if not self._connected:
            raise ClosedError("not connected")
        request = GraphQLRequest(_document(query), variable_values=variables)
        try:
            extra = {"headers": headers} if headers else None
            result = await self._transport.execute(request, extra_args=extra)
        except TransportServerError as exc:
            raise HttpStatusError(str(exc), exc.code) from exc
        except TransportProtocolError as exc:
            raise ProtocolError(str(exc)) from exc
        except TransportClosed as exc:
            raise ClosedError(str(exc)) from exc
        except TransportConnectionFailed as exc:  # gql wraps the network error: re-raise the real one
            raise (exc.__cause__ or exc) from None
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = result.errors
        return answer
