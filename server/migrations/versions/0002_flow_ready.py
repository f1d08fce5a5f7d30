"""flow.ready: false while a registration writes its tasks and edges in batches (such a flow is invisible).

NOT NULL with a server default of true, so every flow of an older database stays visible. A plain ADD COLUMN
on every backend (SQLite accepts a constant default), so no table copy.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("flow", sa.Column("ready", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("flow") as batch:
        batch.drop_column("ready")
