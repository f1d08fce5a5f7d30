"""api_token.flow_run_id and api_token.expires_at: FLOW_RUN tokens (one flow run's container).

Nullable, so every existing token stays what it was (a tenant-wide token).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_token", sa.Column("flow_run_id", sa.String(36), nullable=True))
    op.add_column("api_token", sa.Column("expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_token") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("flow_run_id")
