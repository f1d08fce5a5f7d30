"""aiohttp application: GraphQL over POST at `/` and `/graphql` (with or without a trailing slash), and the
web UI's static files (`server.ui.routes`).

Each request is parsed, validated and executed in a worker thread (resolvers are synchronous SQLAlchemy), so a
slow database write or a long poll never blocks the event loop. Response codes follow Apollo as the Prefect
1.4.1 client expects: HTTP 400 for unparsable or invalid documents and bad variables, HTTP 200 with
`data` + `errors` for execution errors, never 429 or a traceback, and `UNAUTHENTICATED` in the error text
(HTTP 200, so `Client.graphql` raises AuthorizationError) for a missing or wrong token. An Authorization
header that is not ASCII (raw bytes) is malformed input, not a wrong token: HTTP 401 with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    execute,
    get_operation_ast,
    validate,
)
from loguru import logger

from server import auth
from server.context import RequestContext, Services
from server.errors import OUTAGE, ApiError, DatabaseUnavailableError, database_unavailable, refused_value
from server.request_limits import (
    CROSS_SITE_FORM_REFUSED,
    CROSS_SITE_FORM_TYPES,
    LARGE_BODY_BYTES,
    BodyTooLarge,
    ByteLRU,
    QueryLimits,
    check_document,
    check_json,
    digest,
    parse_limited,
    read_body,
    release_memory,
    too_complex,
)
from server.schema import build
from server.ui import routes as ui_routes

PUBLIC_FIELDS = frozenset({"hello", "api", "__typename", "__schema", "__type"})
Payload = dict[str, Any]
Parsed = tuple[DocumentNode | None, tuple[GraphQLError, ...]]


def error(message: str, code: str, **extra: Any) -> Payload:
    return {"message": message, **extra, "extensions": {"code": code}}


def format_error(err: GraphQLError, default_code: str) -> Payload:
    original = err.original_error
    refused = refused_value(original) if original is not None else None
    if refused is not None:
        original = refused
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


@dataclass(frozen=True)
class Caller:
    """Who sent a request, known before its body is read: an identity, or why there is none."""

    identity: auth.Identity | None = None
    problem: str | None = None  # "missing" / "invalid" / "malformed"; None with --auth none or a valid token

    @property
    def trusted(self) -> bool:
        return self.problem is None


class GraphQLService:
    """Parses (with a byte-bounded cache), authenticates and executes GraphQL requests; thread-safe."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.schema = build()
        settings = services.settings
        self.executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="graphql")
        # Long polls wait in their own pool, so many waiting agents never starve ordinary requests.
        self.poll_executor = ThreadPoolExecutor(settings.long_poll_threads, thread_name_prefix="long-poll")
        self.limits = QueryLimits(
            settings.max_query_chars, settings.max_query_tokens, settings.max_query_depth,
            settings.max_query_aliases, settings.max_query_fields)
        self.documents: ByteLRU[Parsed] = ByteLRU(settings.document_cache_bytes,
                                                  settings.document_cache_max_query_bytes)
        self.identities = auth.IdentityCache(settings.token_cache_ttl_s,
                                             grace_s=settings.flow_run_token_grace_s)
        self.agents: ByteLRU[bool] = ByteLRU(64 * 1024, 64)

    def pool_for(self, query: str) -> ThreadPoolExecutor:
        """Routing only (both pools execute identically), so a cheap substring test is enough."""
        return self.poll_executor if "get_runs_in_queue" in query[:10_000] else self.executor

    def document(self, query: str) -> Parsed:
        """Parsed, limit-checked and validated once per distinct (small) query text."""
        key = digest(query)
        cached = self.documents.get(key)
        if cached is not None:
            return cached
        try:
            document = parse_limited(query, self.limits)
        except GraphQLError as exc:
            return None, (exc,)
        errors = tuple(check_document(document, self.limits))
        try:
            errors = errors or tuple(validate(self.schema, document))
        except RecursionError:
            errors = (too_complex("the document is nested too deeply to validate"),)
        parsed = (document, errors)
        self.documents.put(key, parsed, len(query))
        return parsed

    def quick_caller(self, headers: dict[str, str]) -> Caller | None:
        """What the event loop decides alone (no auth, no or malformed header, cached token), else None."""
        if self.services.settings.auth == "none":
            return Caller()
        header = headers.get("authorization")
        if header and not header.isascii():  # aiohttp passes raw bytes through as surrogates
            return Caller(problem="malformed")
        token = auth.bearer(header)
        if token is None:
            return Caller(problem="missing")
        identity = self.identities.cached(token)
        return Caller(identity) if identity is not None else None

    def caller(self, headers: dict[str, str]) -> Caller:
        """Token check, done before the body is read (in a worker thread when it has to hit the database)."""
        quick = self.quick_caller(headers)
        if quick is not None:
            return quick
        token = str(auth.bearer(headers.get("authorization")))
        identity = self.identities.authenticate(self.services.engine, token)
        return Caller(identity) if identity is not None else Caller(problem="invalid")

    def run(
        self, body: Payload, headers: dict[str, str], caller: Caller | None = None
    ) -> tuple[int, Payload]:
        document, errors = self.document(body["query"])
        if errors or document is None:
            return 400, {"errors": [format_error(e, "GRAPHQL_VALIDATION_FAILED") for e in errors]}
        operation = get_operation_ast(document, body.get("operationName"))
        if operation is None:
            return 400, {"errors": [error("Unknown or ambiguous operation.", "GRAPHQL_VALIDATION_FAILED")]}
        ctx = self.context(headers, operation, caller or self.caller(headers))
        if isinstance(ctx, dict):
            return 200, {"data": None, "errors": [ctx]}
        try:
            result = execute(self.schema, document, context_value=ctx, variable_values=body.get("variables"),
                             operation_name=body.get("operationName"))
        finally:
            ctx.close()
        assert isinstance(result, ExecutionResult)  # synchronous resolvers only
        unavailable = _unavailable(result.errors or ())
        if unavailable is not None:
            return unavailable_response(unavailable)
        OUTAGE.ended()
        if result.errors and result.data is None and all(e.path is None for e in result.errors):
            return 400, {"errors": [format_error(e, "BAD_USER_INPUT") for e in result.errors]}
        payload: Payload = {"data": result.data}
        if result.errors:
            payload["errors"] = [format_error(e, "INTERNAL_SERVER_ERROR") for e in result.errors]
        return 200, payload

    def context(
        self, headers: dict[str, str], operation: OperationDefinitionNode, caller: Caller
    ) -> RequestContext | Payload:
        """The request's identity, or an UNAUTHENTICATED error payload."""
        ctx = RequestContext(self.services, core_version=_header_text(headers.get("x-prefect-core-version")),
                             share_reads=operation.operation == OperationType.QUERY)
        if caller.identity is not None:
            ctx.tenant_id, ctx.scope = caller.identity.tenant_id, caller.identity.scope
            ctx.flow_run_id = caller.identity.flow_run_id
        elif caller.problem is not None and not _public(operation):
            return unauthenticated(caller.problem)
        if ctx.flow_run_id is None:  # a flow container's token never speaks for an agent
            ctx.agent_id = self.agent_id(headers.get("x-prefect-agent-id"), ctx.tenant_id)
        return ctx

    def agent_id(self, value: str | None, tenant_id: str | None) -> str | None:
        """The agent-id header, honoured only for an agent of the caller's tenant (any with --auth none)."""
        if not value or not _is_uuid(value):
            return None
        agent_id = str(uuid.UUID(value))
        if tenant_id is None:
            return agent_id
        key = f"{tenant_id}/{agent_id}".encode()
        if self.agents.get(key) or auth.agent_in_tenant(self.services.engine, agent_id, tenant_id):
            self.agents.put(key, True, 64)  # agents never change tenant, so a positive answer stays true
            return agent_id
        return None


def _unavailable(errors: Any) -> DatabaseUnavailableError | None:
    """The first execution error that is a lost database connection, if any (logged once per outage)."""
    for err in errors:
        original = err.original_error
        found = database_unavailable(original) if original is not None else None
        if found is not None:
            OUTAGE.failed(original)
            return found
    return None


def unavailable_response(err: DatabaseUnavailableError) -> tuple[int, Payload]:
    """HTTP 503 (retryable) for the whole request: the transaction that lost its connection is gone."""
    return 503, {"errors": [error(err.message, err.code)]}


REASONS = {
    "missing": "an API token is required (Authorization: Bearer <token>)",
    "malformed": "the Authorization header is not valid ASCII",
}


def unauthenticated(problem: str) -> Payload:
    return error(f"UNAUTHENTICATED: {REASONS.get(problem, 'invalid API token')}.", "UNAUTHENTICATED")


def _header_text(value: str | None, limit: int = 64) -> str | None:
    """A header value safe to store: printable ASCII (aiohttp passes raw bytes through as surrogates)."""
    if not value or not value.isascii() or not value.isprintable():
        return None
    return value[:limit]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError):
        return False
    return True


def _public(operation: OperationDefinitionNode) -> bool:
    """`query { hello }` / `api` answer without a token: health checks need no credentials."""
    fields = operation.selection_set.selections
    return all(isinstance(f, FieldNode) and f.name.value in PUBLIC_FIELDS for f in fields)


def parse_body(raw: bytes, max_json_depth: int = 64) -> Payload:
    """{"query": str, "variables": JSON string ("null" when none) or object}; raises ValueError (-> 400)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"The body is not valid UTF-8 (byte {exc.start}).") from None
    body = _loads(text, "body", max_json_depth)
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ValueError("The body must be a JSON object with a string 'query'.")
    variables = body.get("variables")
    if isinstance(variables, str):
        variables = _loads(variables, "'variables' string", max_json_depth)
    if variables is not None and not isinstance(variables, dict):
        raise ValueError("'variables' must be a JSON object (or a string holding one).")
    name = body.get("operationName")
    name = name if isinstance(name, str) else None
    return {"query": body["query"], "variables": variables, "operationName": name}


def _loads(text: str, what: str, max_depth: int) -> Any:
    """json.loads that turns deep nesting and lone surrogates into a ValueError with a reason."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"Malformed JSON {what}: nested too deeply (limit: {max_depth} levels).") from None
    except ValueError as exc:
        raise ValueError(f"Malformed JSON {what}: {exc}") from None
    problem = check_json(value, max_depth)
    if problem is not None:
        raise ValueError(f"Malformed JSON {what}: {problem}.")
    return value


_dumps = functools.partial(json.dumps, default=str)


def _json(payload: Payload, status: int) -> web.Response:
    return web.json_response(payload, status=status, dumps=_dumps)


GRAPHQL_KEY = web.AppKey("graphql", GraphQLService)


def build_app(services: Services) -> web.Application:
    service = GraphQLService(services)
    app = web.Application(client_max_size=services.settings.max_body_bytes)
    app[GRAPHQL_KEY] = service

    async def handle(request: web.Request) -> web.Response:
        if request.content_type in CROSS_SITE_FORM_TYPES:
            return _json({"errors": [error(CROSS_SITE_FORM_REFUSED, "UNSUPPORTED_MEDIA_TYPE")]}, 415)
        started = time.perf_counter()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, payload, close = await _respond(service, request, headers)
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.debug("POST {} -> {} in {:.1f} ms", request.path, status, elapsed_ms)
        response = _json(payload, status)
        if close:  # the unread rest of the body is discarded by aiohttp (bounded), then the connection closes
            response.force_close()
        return response

    async def not_allowed(_request: web.Request) -> web.Response:
        return _json({"errors": [error("Use POST with a JSON GraphQL body.", "METHOD_NOT_ALLOWED")]}, 405)

    for path in ("/", "/graphql", "/graphql/"):
        app.router.add_post(path, handle)
        if path != "/":
            app.router.add_get(path, not_allowed)
    ui_routes.install(app, not_allowed)  # GET / from a browser: the web UI
    app.on_cleanup.append(_shutdown_executor)
    return app


async def _respond(
    service: GraphQLService, request: web.Request, headers: dict[str, str]
) -> tuple[int, Payload, bool]:
    """Authenticate, read at most the caller's body limit, parse, execute: (status, payload, close)."""
    settings, loop = service.services.settings, asyncio.get_running_loop()
    try:
        caller = service.quick_caller(headers)  # a cached token costs no executor hop
        if caller is None:
            caller = await loop.run_in_executor(service.executor, service.caller, headers)
        if caller.problem == "malformed":
            return 401, {"errors": [unauthenticated(caller.problem)]}, True
        limit = settings.max_body_bytes if caller.trusted else settings.anonymous_max_body_bytes
        try:
            raw = await read_body(request, limit)
        except BodyTooLarge:
            return 413, {"errors": [error(_too_large(limit, caller), "PAYLOAD_TOO_LARGE")]}, True
        try:
            body = await _parse(service, loop, raw)
        except ValueError as exc:
            return 400, {"errors": [error(str(exc), "BAD_REQUEST")]}, False
        large = len(raw) >= LARGE_BODY_BYTES
        del raw
        status, payload = await loop.run_in_executor(service.pool_for(body["query"]), service.run, body,
                                                     headers, caller)
        if large:  # measured: no slower for other requests, and half the resident growth
            del body
            await loop.run_in_executor(service.executor, release_memory)
        return status, payload, False
    except Exception as exc:  # e.g. the database is unreachable: retryable for the client, no traceback
        unavailable = database_unavailable(exc)
        if unavailable is None:
            logger.exception("request failed")
            return 503, {"errors": [error("Service unavailable; see the server log.", "UNAVAILABLE")]}, False
        OUTAGE.failed(exc)
        return (*unavailable_response(unavailable), False)


async def _parse(service: GraphQLService, loop: asyncio.AbstractEventLoop, raw: bytes) -> Payload:
    """Small bodies on the event loop; larger ones (decoding and walking them would stall every other
    request) in a worker thread."""
    depth = service.services.settings.max_json_depth
    if len(raw) < LARGE_BODY_BYTES:
        return parse_body(raw, depth)
    return await loop.run_in_executor(service.executor, parse_body, raw, depth)


def _too_large(limit: int, caller: Caller) -> str:
    if caller.trusted:
        return f"Request body too large (limit: {limit} bytes, max_body_bytes)."
    return (f"Request body too large: without a valid API token at most {limit} bytes are accepted "
            "(anonymous_max_body_bytes); send Authorization: Bearer <token>.")


async def _shutdown_executor(app: web.Application) -> None:
    app[GRAPHQL_KEY].executor.shutdown(wait=False, cancel_futures=True)
    app[GRAPHQL_KEY].poll_executor.shutdown(wait=False, cancel_futures=True)
