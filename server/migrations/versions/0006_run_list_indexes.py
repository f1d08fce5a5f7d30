"""Indexes for the web UI's runs page: the newest runs by scheduled start time (then id, the keyset), of all
runs, one flow's or one state's, read in index order so a page costs the same with 100,000 runs stored.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_flow_run_scheduled": ["scheduled_start_time", "id"],
    "ix_flow_run_flow_scheduled": ["flow_id", "scheduled_start_time", "id"],
    "ix_flow_run_state_scheduled": ["state", "scheduled_start_time", "id"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "flow_run", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="flow_run")
