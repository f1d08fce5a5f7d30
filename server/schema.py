"""The executable schema: `schema.graphql` + scalar coercion + resolvers (+ scope checks).

Every root field of Query and Mutation - also one added later without a thought for FLOW_RUN tokens - goes
through `run_scope.check_root_field` first, so such a token can use only what that module allows.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from graphql import (
    GraphQLError,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLSchema,
    StringValueNode,
    ValueNode,
    build_schema,
    default_field_resolver,
    value_from_ast_untyped,
)

from server import run_scope
from server.resolvers import RESOLVERS, USER_ONLY
from server.states import parse_time


def parse_uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise GraphQLError(f"Invalid UUID: expected a string, got {type(value).__name__}.")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise GraphQLError(f"Invalid UUID: {value[:64]!r}.") from None


def parse_datetime(value: Any) -> datetime:
    """ISO 8601; a naive value is UTC (the 1.4.1 client may send naive scheduled_start_time)."""
    if not isinstance(value, str):
        raise GraphQLError(f"Invalid timestamp: expected an ISO 8601 string, got {type(value).__name__}.")
    parsed = parse_time(value.strip())
    if parsed is None:
        raise GraphQLError(f"Invalid timestamp: {value[:64]!r}.")
    return parsed


def serialize_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value)


def _literal(parse: Callable[[Any], Any]) -> Callable[..., Any]:
    def parse_literal(node: ValueNode, _variables: Any = None) -> Any:
        if not isinstance(node, StringValueNode):
            raise GraphQLError("Expected a string literal.")
        return parse(node.value)

    return parse_literal


def _set_scalar(schema: GraphQLSchema, name: str, serialize: Callable[[Any], Any],
                parse_value: Callable[[Any], Any], parse_literal: Callable[..., Any]) -> None:
    """Sets both the graphql-core 3.2 names and the 3.3 `coerce_*` aliases (captured at construction)."""
    scalar = schema.type_map[name]
    assert isinstance(scalar, GraphQLScalarType)
    scalar.serialize = scalar.coerce_output_value = serialize  # type: ignore[method-assign,assignment]
    scalar.parse_value = scalar.coerce_input_value = parse_value  # type: ignore[method-assign,assignment]
    scalar.parse_literal = parse_literal  # type: ignore[method-assign]


def _configure_scalars(schema: GraphQLSchema) -> None:
    for name in ("UUID", "uuid"):
        _set_scalar(schema, name, str, parse_uuid, _literal(parse_uuid))
    for name in ("DateTime", "timestamptz"):
        _set_scalar(schema, name, serialize_datetime, parse_datetime, _literal(parse_datetime))
    for name in ("JSON", "jsonb"):
        _set_scalar(schema, name, _identity, _identity, value_from_ast_untyped)


def _identity(value: Any) -> Any:
    return value


def _user_only(name: str, resolve: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(resolve)
    def guarded(obj: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        info.context.require("USER", name.split(".", 1)[1])
        return resolve(obj, info, **args)

    return guarded


def _run_scoped(name: str, resolve: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(resolve)
    def guarded(obj: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        run_scope.check_root_field(info.context, name, args)
        return resolve(obj, info, **args)

    return guarded


def build() -> GraphQLSchema:
    schema = build_schema(files("server").joinpath("schema.graphql").read_text(encoding="utf-8"))
    _configure_scalars(schema)
    for key, resolve in RESOLVERS.items():
        type_name, field_name = key.split(".", 1)
        owner = schema.type_map[type_name]
        assert isinstance(owner, GraphQLObjectType), key
        owner.fields[field_name].resolve = _user_only(key, resolve) if key in USER_ONLY else resolve
    for root in (schema.query_type, schema.mutation_type):
        assert root is not None
        for field_name, field in root.fields.items():
            field.resolve = _run_scoped(field_name, field.resolve or default_field_resolver)
    return schema
