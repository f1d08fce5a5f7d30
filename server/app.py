"""aiohttp application: GraphQL over POST at `/` and `/graphql` (with or without a trailing slash).

Each request is parsed, validated and executed in a worker thread (resolvers are synchronous SQLAlchemy), so a
slow database write or a long poll never blocks the event loop. Response codes follow Apollo as the Prefect
1.4.1 client expects: HTTP 400 for unparsable or invalid documents and bad variables, HTTP 200 with
`data` + `errors` for execution errors, never 429 or a traceback, and `UNAUTHENTICATED` in the error text
(HTTP 200, so `Client.graphql` raises AuthorizationError) for a missing or wrong token.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    execute,
    get_operation_ast,
    parse,
    validate,
)
from loguru import logger

from server import auth
from server.context import RequestContext, Services
from server.errors import ApiError
from server.schema import build

PUBLIC_FIELDS = frozenset({"hello", "api", "__typename", "__schema", "__type"})
Payload = dict[str, Any]


def error(message: str, code: str, **extra: Any) -> Payload:
    return {"message": message, **extra, "extensions": {"code": code}}


def format_error(err: GraphQLError, default_code: str) -> Payload:
    original = err.original_error
    if isinstance(original, ApiError):
        message, code = original.message, original.code
    elif original is not None and not isinstance(original, GraphQLError):
        logger.opt(exception=original).error("unexpected error in {}", err.path)
        message = f"Internal server error ({type(original).__name__}); see the server log."
        code = "INTERNAL_SERVER_ERROR"
    else:
        message, code = err.message, default_code
    extra: Payload = {}
    if err.locations:
        extra["locations"] = [{"line": loc.line, "column": loc.column} for loc in err.locations]
    if err.path is not None:
        extra["path"] = list(err.path)
    return error(message, code, **extra)


class GraphQLService:
    """Parses (with a cache), authenticates and executes GraphQL requests; thread-safe."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.schema = build()
        settings = services.settings
        self.executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="graphql")
        # Long polls wait in their own pool, so many waiting agents never starve ordinary requests.
        self.poll_executor = ThreadPoolExecutor(settings.long_poll_threads, thread_name_prefix="long-poll")

    def pool_for(self, query: str) -> ThreadPoolExecutor:
        """Routing only (both pools execute identically), so a cheap substring test is enough."""
        return self.poll_executor if "get_runs_in_queue" in query[:10_000] else self.executor

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one service per process, lives as long as it
    def document(self, query: str) -> tuple[DocumentNode | None, tuple[GraphQLError, ...]]:
        try:
            document = parse(query)
        except GraphQLError as exc:
            return None, (exc,)
        return document, tuple(validate(self.schema, document))

    def run(self, body: Payload, headers: dict[str, str]) -> tuple[int, Payload]:
        document, errors = self.document(body["query"])
        if errors or document is None:
            return 400, {"errors": [format_error(e, "GRAPHQL_VALIDATION_FAILED") for e in errors]}
        operation = get_operation_ast(document, body.get("operationName"))
        if operation is None:
            return 400, {"errors": [error("Unknown or ambiguous operation.", "GRAPHQL_VALIDATION_FAILED")]}
        ctx = self.context(headers, operation)
        if isinstance(ctx, dict):
            return 200, {"data": None, "errors": [ctx]}
        try:
            result = execute(self.schema, document, context_value=ctx, variable_values=body.get("variables"),
                             operation_name=body.get("operationName"))
        finally:
            ctx.close()
        assert not asyncio.iscoroutine(result)
        if result.errors and result.data is None and all(e.path is None for e in result.errors):
            return 400, {"errors": [format_error(e, "BAD_USER_INPUT") for e in result.errors]}
        payload: Payload = {"data": result.data}
        if result.errors:
            payload["errors"] = [format_error(e, "INTERNAL_SERVER_ERROR") for e in result.errors]
        return 200, payload

    def context(
        self, headers: dict[str, str], operation: OperationDefinitionNode
    ) -> RequestContext | Payload:
        """The request's identity, or an UNAUTHENTICATED error payload."""
        agent_id = headers.get("x-prefect-agent-id")
        ctx = RequestContext(
            self.services, agent_id=agent_id if agent_id and _is_uuid(agent_id) else None,
            core_version=(headers.get("x-prefect-core-version") or None),
            share_reads=operation.operation == OperationType.QUERY)
        if ctx.core_version:
            ctx.core_version = ctx.core_version[:64]
        if self.services.settings.auth == "none" or _public(operation):
            return ctx
        token = auth.bearer(headers.get("authorization"))
        if token is None:
            return error("UNAUTHENTICATED: an API token is required (Authorization: Bearer <token>).",
                         "UNAUTHENTICATED")
        identity = auth.authenticate(self.services.engine, token)
        if identity is None:
            return error("UNAUTHENTICATED: invalid API token.", "UNAUTHENTICATED")
        ctx.tenant_id, ctx.scope = identity.tenant_id, identity.scope
        return ctx


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _public(operation: OperationDefinitionNode) -> bool:
    """`query { hello }` / `api` answer without a token: health checks need no credentials."""
    fields = operation.selection_set.selections
    return all(isinstance(f, FieldNode) and f.name.value in PUBLIC_FIELDS for f in fields)


def parse_body(raw: bytes) -> Payload:
    """{"query": str, "variables": JSON string ("null" when none) or object}; raises ValueError."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"Malformed JSON body: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ValueError("The body must be a JSON object with a string 'query'.")
    variables = body.get("variables")
    if isinstance(variables, str):
        try:
            variables = json.loads(variables)
        except ValueError as exc:
            raise ValueError(f"Malformed 'variables' JSON string: {exc}") from None
    if variables is not None and not isinstance(variables, dict):
        raise ValueError("'variables' must be a JSON object (or a string holding one).")
    name = body.get("operationName")
    name = name if isinstance(name, str) else None
    return {"query": body["query"], "variables": variables, "operationName": name}


_dumps = functools.partial(json.dumps, default=str)


def _json(payload: Payload, status: int) -> web.Response:
    return web.json_response(payload, status=status, dumps=_dumps)


GRAPHQL_KEY = web.AppKey("graphql", GraphQLService)


def build_app(services: Services) -> web.Application:
    service = GraphQLService(services)
    app = web.Application(client_max_size=services.settings.max_body_bytes)
    app[GRAPHQL_KEY] = service

    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = parse_body(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _json({"errors": [error("Request body too large.", "PAYLOAD_TOO_LARGE")]}, 413)
        except ValueError as exc:
            return _json({"errors": [error(str(exc), "BAD_REQUEST")]}, 400)
        headers = {k.lower(): v for k, v in request.headers.items()}
        loop = asyncio.get_running_loop()
        try:
            pool = service.pool_for(body["query"])
            status, payload = await loop.run_in_executor(pool, service.run, body, headers)
        except Exception:  # e.g. the database is unreachable: retryable for the client, no traceback
            logger.exception("request failed")
            unavailable = error("Service unavailable; see the server log.", "UNAVAILABLE")
            status, payload = 503, {"errors": [unavailable]}
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.debug("POST {} -> {} in {:.1f} ms", request.path, status, elapsed_ms)
        return _json(payload, status)

    async def not_allowed(_request: web.Request) -> web.Response:
        return _json({"errors": [error("Use POST with a JSON GraphQL body.", "METHOD_NOT_ALLOWED")]}, 405)

    for path in ("/", "/graphql", "/graphql/"):
        app.router.add_post(path, handle)
        app.router.add_get(path, not_allowed)
    app.on_cleanup.append(_shutdown_executor)
    return app


async def _shutdown_executor(app: web.Application) -> None:
    app[GRAPHQL_KEY].executor.shutdown(wait=False, cancel_futures=True)
    app[GRAPHQL_KEY].poll_executor.shutdown(wait=False, cancel_futures=True)
