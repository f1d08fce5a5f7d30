"""Limits that keep one request from exhausting the server: body size, JSON shape, GraphQL document size.

Everything here runs before a resolver does, so a hostile body costs at most what the limits allow, and the
answer is a 4xx with a reason (never a 500 or a 503, which clients retry).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSyntaxError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
)

from server.errors import ApiError

V = TypeVar("V")
TOO_COMPLEX = "QUERY_TOO_COMPLEX"


class ByteLRU(Generic[V]):
    """A thread-safe LRU bounded by the summed cost (bytes) of its entries, not by their number.

    Items costing more than `max_item_bytes` are never stored, so one huge key cannot evict everything.
    """

    def __init__(self, max_bytes: int, max_item_bytes: int) -> None:
        self.max_bytes, self.max_item_bytes = max_bytes, min(max_item_bytes, max_bytes)
        self._items: OrderedDict[bytes, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.total = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: bytes, value: V, cost: int) -> bool:
        """Store unless too big; returns whether it was stored."""
        if cost > self.max_item_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.total -= old[1]
            self._items[key] = (value, cost)
            self.total += cost
            while self.total > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self.total -= evicted
        return True


def digest(text: str) -> bytes:
    """Cache key of a query: its sha256, so the cache never holds a client's (possibly huge) text twice."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


# ---------------------------------------------------------------------------------------------- body
class BodyTooLarge(Exception):
    """The body exceeds the caller's limit; raised before (or while) reading, never after buffering it."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, at most `limit` bytes; a declared or streamed larger body raises BodyTooLarge."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)


# The bodies a web page may POST to another site without the browser asking first (CORS "simple requests"):
# refused, so a page a user visits cannot drive a server on their machine (`--auth none` has no token to
# stop it). Every GraphQL client sends application/json.
CROSS_SITE_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
CROSS_SITE_FORM_REFUSED = ("Send GraphQL as JSON (Content-Type: application/json): a form or text body is "
                           "what any web page can post to this server, so it is refused.")

LARGE_BODY_BYTES = 64 * 1024  # parsed in a worker thread from this size on


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_memory() -> bool:
    """Hand freed heap back to the OS after a large body: glibc keeps it in per-thread arenas otherwise, so
    a few concurrent large requests would leave hundreds of MB resident. A heap walk costs milliseconds,
    little next to reading and parsing a megabyte or more."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def check_json(value: Any, max_depth: int) -> str | None:
    """Why a decoded JSON value is unacceptable (too deep, or a lone surrogate in a string), else None.

    Iterative, so a deep value cannot overflow the stack here; lone surrogates are refused because SQLite
    and every UTF-8 encoder would fail on them later, far from the request that sent them.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                return "a JSON string contains a lone UTF-16 surrogate (invalid Unicode)"
        elif isinstance(item, dict | list):
            if depth > max_depth:
                return f"JSON nested too deeply (limit: {max_depth} levels)"
            children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            for key, child in children:
                if key is not None:
                    stack.append((key, depth))
                stack.append((child, depth + 1))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ------------------------------------------------------------------------------------------ documents
@dataclass(frozen=True)
class QueryLimits:
    max_chars: int
    max_tokens: int
    max_depth: int
    max_aliases: int
    max_fields: int


def too_complex(reason: str) -> GraphQLError:
    """A GraphQL error whose extensions.code is QUERY_TOO_COMPLEX (via ApiError, see app.format_error)."""
    message = f"Query too complex: {reason}."
    return GraphQLError(message, original_error=ApiError(message, TOO_COMPLEX))


def parse_limited(query: str, limits: QueryLimits) -> DocumentNode:
    """`parse` with size and token limits (comments count toward the size only); a too deeply nested document
    is QUERY_TOO_COMPLEX, not a RecursionError."""
    if len(query) > limits.max_chars:
        raise too_complex(f"the query text is longer than {limits.max_chars} characters "
                          "(limit: max_query_chars; send large values as variables)")
    try:
        return parse(query, max_tokens=limits.max_tokens)
    except GraphQLSyntaxError as exc:
        if "Parsing aborted" not in exc.message:
            raise
        if "nested too deeply" in exc.message:
            raise too_complex("the document is nested too deeply to parse") from None
        raise too_complex(f"more than {limits.max_tokens} tokens (limit: max_query_tokens)") from None
    except RecursionError:
        raise too_complex("the document is nested too deeply to parse") from None


@dataclass
class _Shape:
    depth: int = 0
    fields: int = 0
    aliases: int = 0


def check_document(document: DocumentNode, limits: QueryLimits) -> list[GraphQLError]:
    """Depth, field and alias counts of every operation, fragments expanded where they are spread."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    memo: dict[tuple[str, int], _Shape] = {}
    errors: list[GraphQLError] = []
    try:
        for definition in document.definitions:
            if isinstance(definition, OperationDefinitionNode):
                shape = _measure(definition.selection_set, fragments, memo, set(), limits.max_depth)
                errors.extend(_violations(shape, limits))
    except RecursionError:
        errors.append(too_complex("fragments are nested too deeply"))
    return errors[:1]


def _violations(shape: _Shape, limits: QueryLimits) -> list[GraphQLError]:
    found = []
    if shape.depth > limits.max_depth:
        found.append(too_complex(f"selection depth exceeds {limits.max_depth} (limit: max_query_depth)"))
    if shape.aliases > limits.max_aliases:
        found.append(too_complex(f"{shape.aliases} aliases exceed {limits.max_aliases} "
                                 "(limit: max_query_aliases)"))
    if shape.fields > limits.max_fields:
        found.append(too_complex(f"{shape.fields} selected fields exceed {limits.max_fields} "
                                 "(limit: max_query_fields)"))
    return found


def _measure(selection_set: SelectionSetNode | None, fragments: dict[str, FragmentDefinitionNode],
             memo: dict[tuple[str, int], _Shape], visiting: set[str], budget: int) -> _Shape:
    """The shape below one selection set; stops descending past the depth budget (already too deep)."""
    shape = _Shape()
    if selection_set is None or budget < 0:
        return shape
    for node in selection_set.selections:
        if isinstance(node, FieldNode):
            child = _measure(node.selection_set, fragments, memo, visiting, budget - 1)
            shape.fields += 1 + child.fields
            shape.aliases += (node.alias is not None) + child.aliases
            shape.depth = max(shape.depth, 1 + child.depth)
            continue
        if isinstance(node, InlineFragmentNode):
            child = _measure(node.selection_set, fragments, memo, visiting, budget)
        elif isinstance(node, FragmentSpreadNode):
            child = _spread(node.name.value, fragments, memo, visiting, budget)
        else:
            continue
        shape.fields += child.fields
        shape.aliases += child.aliases
        shape.depth = max(shape.depth, child.depth)
    return shape


def _spread(name: str, fragments: dict[str, FragmentDefinitionNode], memo: dict[tuple[str, int], _Shape],
            visiting: set[str], budget: int) -> _Shape:
    """A fragment's shape, computed once per budget; unknown or cyclic fragments count as empty
    (validation rejects them)."""
    key = (name, budget)
    if key in memo:
        return memo[key]
    fragment = fragments.get(name)
    if fragment is None or name in visiting:
        return _Shape()
    visiting.add(name)
    shape = _measure(fragment.selection_set, fragments, memo, visiting, budget)
    visiting.discard(name)
    memo[key] = shape  # keyed by the remaining budget too: a result cut short there is only valid there
    return shape
