"""The agent's GraphQL-over-HTTP transport: one aiohttp session, `POST {query, variables}` as JSON.

Why not gql (which the agent used first): the agent sends a dozen fixed documents that are validated against
the SDL in the tests, never built or checked at runtime, and gql parses every request's document with
graphql-core and prints it back before sending it. That cost the agent 150+ modules, ~6 MiB of resident
memory, ~80 ms of start-up and CPU on every request of a burst (issue 7's targets: idle RSS and start-up at
most Prefect's). The wire format is the same: a JSON body with `query` and `variables`, and the answer's
`data` / `errors`.

Outcomes mirror gql's aiohttp transport, so `agent.cloud` classifies them the same way: a JSON answer with
`data` or `errors` is returned whatever the HTTP status; otherwise HTTP >= 400 raises `HttpStatusError`
(with the code) and anything else `ProtocolError`. Network failures surface as aiohttp's own exceptions.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp


class TransportError(Exception):
    """The backend's answer is not a GraphQL result."""


class HttpStatusError(TransportError):
    """HTTP >= 400 without a GraphQL result in the body."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(TransportError):
    """HTTP < 400 but the body is not a GraphQL result (not JSON, or neither `data` nor `errors`)."""


class ClosedError(TransportError):
    """The transport is not connected."""


class GraphQLHttp:
    """`connect()` once, `post()` many times (concurrently), `close()` at the end."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self._headers = dict(headers)
        self._session: aiohttp.ClientSession | None = None

    @property
    def connected(self) -> bool:
        return self._session is not None

    async def connect(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, json_serialize=json.dumps)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(self, query: str, variables: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One request; returns the answer (`data`, `errors`) or raises a `TransportError`."""
        if self._session is None:
            raise ClosedError("not connected")
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        async with self._session.post(self.url, json=body, headers=headers) as response:
            try:
                result = await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                result = None
            if isinstance(result, dict) and ("data" in result or "errors" in result):
                return result
            if response.status >= 400:
                raise HttpStatusError(f"{response.status}, message={response.reason!r}, url={self.url!r}",
                                      response.status)
            text = await response.text()
            raise ProtocolError(f"Server did not return a valid GraphQL result: {text[:500]}")
