"""Indexes for retention (server.retention): finished runs by state and the time it was set, and a run's
FLOW_RUN tokens, so deleting old runs reads only what it deletes however many runs are stored.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_flow_run_state_timestamp": ("flow_run", ["state", "state_timestamp"]),
    "ix_api_token_flow_run": ("api_token", ["flow_run_id"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
