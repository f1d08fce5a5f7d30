"""`flow_run.auto_scheduled`: the runs the scheduler created, which it counts, extends and removes; and
`flow.schedule`, the schedule of `serialized_flow` apart, which the scheduler reads every round.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN with a constant default on every backend (no table copy): older runs were all
    # created by hand.
    op.add_column("flow_run", sa.Column("auto_scheduled", sa.Boolean(), nullable=False,
                                        server_default=sa.false()))
    op.add_column("flow", sa.Column("schedule", JSON, nullable=True))
    # Registration only ever stored an object or null there: anything else counts as no schedule.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE flow SET schedule = serialized_flow -> 'schedule' "
                   "WHERE jsonb_typeof(serialized_flow -> 'schedule') = 'object'")
    else:  # SQLite: json_extract gives an object's JSON text
        op.execute("UPDATE flow SET schedule = json_extract(serialized_flow, '$.schedule') "
                   "WHERE json_valid(serialized_flow) "
                   "AND json_type(serialized_flow, '$.schedule') = 'object'")


def downgrade() -> None:
    with op.batch_alter_table("flow") as batch:
        batch.drop_column("schedule")
    with op.batch_alter_table("flow_run") as batch:
        batch.drop_column("auto_scheduled")
