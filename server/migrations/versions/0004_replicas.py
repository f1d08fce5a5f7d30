"""Several server replicas on one database: the `lease` table and a unique idempotency key per flow.

`uq_flow_run_idempotency` replaces the plain index `ix_flow_run_idempotency`, so two replicas creating a run
with one key at once cannot both insert. The legacy `schema_version` table (before Alembic) is dropped.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lease",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    _clear_duplicate_idempotency_keys()
    op.drop_index("ix_flow_run_idempotency", table_name="flow_run")
    op.create_index("uq_flow_run_idempotency", "flow_run", ["flow_id", "idempotency_key"], unique=True)
    op.execute("DROP TABLE IF EXISTS schema_version")


def _clear_duplicate_idempotency_keys() -> None:
    # No run is lost: the earliest of each (flow_id, key) keeps the key, the one retries already got back.
    run = sa.table("flow_run", sa.column("id"), sa.column("flow_id"), sa.column("idempotency_key"),
                   sa.column("created"))
    # An empty key always meant "no key" (check_key), but the first release stored it as given: NULL it.
    op.execute(run.update().where(run.c.idempotency_key == "").values(idempotency_key=None))
    earlier = run.alias("earlier")
    has_earlier = (
        sa.select(sa.literal(1))
        .where(earlier.c.flow_id == run.c.flow_id, earlier.c.idempotency_key == run.c.idempotency_key,
               sa.or_(earlier.c.created < run.c.created,
                      sa.and_(earlier.c.created == run.c.created, earlier.c.id < run.c.id)))
        .exists()
    )
    op.execute(run.update().where(run.c.idempotency_key.is_not(None), has_earlier)
               .values(idempotency_key=None))


def downgrade() -> None:
    op.drop_index("uq_flow_run_idempotency", table_name="flow_run")
    op.create_index("ix_flow_run_idempotency", "flow_run", ["flow_id", "idempotency_key"])
    op.drop_table("lease")
