"""The first release's schema (commit 94212ca), as its `metadata.create_all` made it.

Frozen: plain SQLAlchemy types, nothing imported from `server.db`, so later edits of the tables cannot change
what this step creates. A database made by that release (with a `schema_version` table) is stamped here by
`server.migrate` instead of running it.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _id() -> sa.Column[str]:
    return sa.Column("id", sa.String(36), nullable=False)


def _ref(name: str, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(36), nullable=nullable)


def _created() -> sa.Column[datetime]:
    return sa.Column("created", sa.DateTime(), nullable=False)


def _text(name: str, nullable: bool = True) -> sa.Column[str]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _json(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, JSON, nullable=nullable)


def _time(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def _fk(column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"])


def upgrade() -> None:
    _agents_and_tenants()
    _flows()
    _runs()
    _histories_and_logs()


def _agents_and_tenants() -> None:
    op.create_table(
        "agent", _id(), _ref("tenant_id"), _text("name"), _text("type"),
        sa.Column("core_version", sa.String(64), nullable=True), _json("labels", nullable=False),
        _ref("agent_config_id", nullable=True), _time("last_queried"), _created(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "agent_config", _id(), _ref("tenant_id"), _text("name"), _json("settings", nullable=False),
        _created(), sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "tenant", _id(), _text("name", nullable=False), sa.Column("slug", sa.String(255), nullable=False),
        _created(), sa.PrimaryKeyConstraint("id"), sa.UniqueConstraint("slug"),
    )
    op.create_table(
        "api_token", _id(), _ref("tenant_id"), _text("name", nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False), _time("last_used"), _created(),
        _fk("tenant_id", "tenant"), sa.PrimaryKeyConstraint("id"), sa.UniqueConstraint("token_hash"),
    )


def _flows() -> None:
    op.create_table(
        "flow_group", _id(), _ref("tenant_id"), _text("name"), _text("idempotency_key"), _json("labels"),
        _json("run_config"), _json("default_parameters"), _json("settings"),
        sa.Column("schedule_active", sa.Boolean(), nullable=False), _created(),
        _fk("tenant_id", "tenant"), sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "project", _id(), _ref("tenant_id"), _text("name", nullable=False), _text("description"), _created(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_project_tenant_name"), _fk("tenant_id", "tenant"),
    )
    op.create_table(
        "flow", _id(), _ref("tenant_id"), _ref("project_id"), _ref("flow_group_id"),
        _text("version_group_id", nullable=False), _text("name", nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("core_version", sa.String(64), nullable=True), _text("description"), _json("storage"),
        _json("environment"), _json("run_config"), _json("parameters"), _json("serialized_flow"),
        _json("settings"), sa.Column("archived", sa.Boolean(), nullable=False), _created(),
        sa.PrimaryKeyConstraint("id"),
        _fk("tenant_id", "tenant"), _fk("project_id", "project"), _fk("flow_group_id", "flow_group"),
    )
    op.create_index("ix_flow_project_name", "flow", ["project_id", "name"])
    op.create_index("ix_flow_version_group", "flow", ["tenant_id", "version_group_id"])
    op.create_table(
        "task", _id(), _ref("tenant_id"), _ref("flow_id"), _text("slug", nullable=False), _text("name"),
        _text("type"), _text("cache_key"), _created(),
        sa.PrimaryKeyConstraint("id"), sa.UniqueConstraint("flow_id", "slug", name="uq_task_flow_slug"),
        _fk("tenant_id", "tenant"), _fk("flow_id", "flow"),
    )
    op.create_table(
        "edge", _id(), _ref("flow_id"), _ref("upstream_task_id"), _ref("downstream_task_id"), _text("key"),
        sa.Column("mapped", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        _fk("flow_id", "flow"), _fk("upstream_task_id", "task"), _fk("downstream_task_id", "task"),
    )
    op.create_index("ix_edge_flow_id", "edge", ["flow_id"])


def _runs() -> None:
    op.create_table(
        "flow_run", _id(), _ref("tenant_id"), _ref("flow_id"), _text("name"),
        sa.Column("version", sa.Integer(), nullable=False), sa.Column("state", sa.String(32), nullable=True),
        _json("serialized_state"), _time("state_start_time"), _time("state_timestamp"),
        _text("state_message"), _time("scheduled_start_time", nullable=False), _time("start_time"),
        _time("end_time"), _time("heartbeat"), _json("parameters"), _json("context"),
        _json("labels", nullable=False), _json("run_config"), _ref("agent_id", nullable=True),
        _text("idempotency_key"),
        sa.Column("times_resurrected", sa.Integer(), nullable=False), _created(),
        sa.PrimaryKeyConstraint("id"), _fk("tenant_id", "tenant"), _fk("flow_id", "flow"),
    )
    op.create_index("ix_flow_run_heartbeat", "flow_run", ["state", "heartbeat"])
    op.create_index("ix_flow_run_idempotency", "flow_run", ["flow_id", "idempotency_key"])
    op.create_index("ix_flow_run_queue", "flow_run", ["tenant_id", "state", "state_start_time"])
    op.create_table(
        "task_run", _id(), _ref("tenant_id"), _ref("flow_run_id"), _ref("task_id"),
        sa.Column("map_index", sa.Integer(), nullable=False), _text("name"),
        sa.Column("version", sa.Integer(), nullable=False), sa.Column("state", sa.String(32), nullable=True),
        _json("serialized_state"), _time("state_start_time"), _time("state_timestamp"),
        _text("state_message"), _text("cache_key"), _time("heartbeat"), _created(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("flow_run_id", "task_id", "map_index", name="uq_task_run_identity"),
        _fk("tenant_id", "tenant"), _fk("flow_run_id", "flow_run"), _fk("task_id", "task"),
    )
    op.create_index("ix_task_run_cache_key", "task_run", ["cache_key", "state"])
    op.create_index("ix_task_run_queue", "task_run", ["tenant_id", "state", "state_start_time"])
    op.create_index("ix_task_run_task_state", "task_run", ["task_id", "state", "state_timestamp"])


def _histories_and_logs() -> None:
    for name, parent in (("flow_run_state", "flow_run"), ("task_run_state", "task_run")):
        op.create_table(
            name, _id(), _ref("tenant_id"), _ref(f"{parent}_id"),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("state", sa.String(32), nullable=False), _json("serialized_state"), _time("start_time"),
            _text("message"), _time("timestamp", nullable=False),
            _fk(f"{parent}_id", parent), sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(f"ix_{name}_{parent}_id", name, [f"{parent}_id"])
    op.create_table(
        "log", _id(), _ref("tenant_id"), _ref("flow_run_id"), _ref("task_run_id", nullable=True),
        _time("timestamp", nullable=False), _text("name"), sa.Column("level", sa.String(16), nullable=True),
        _text("message"), _json("info"), _created(),
        _fk("flow_run_id", "flow_run"), sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_log_flow_run_time", "log", ["flow_run_id", "timestamp"])


def downgrade() -> None:
    for table in ("task_run_state", "log", "flow_run_state", "task_run", "flow_run", "edge", "task", "flow",
                  "project", "flow_group", "api_token", "tenant", "agent_config", "agent"):
        op.drop_table(table)
