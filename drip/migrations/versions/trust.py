"""rate limits in the database; a confirmation salt of its own

Revision ID: trust
Revises: webhooks
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "trust"
down_revision = "webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limit",
        sa.Column("bucket", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "key"),
    )
    op.create_index(op.f("ix_rate_limit_expires"), "rate_limit", ["expires"], unique=False)
    with op.batch_alter_table("subscriber") as batch:
        batch.add_column(
            sa.Column("confirm_salt", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("subscriber") as batch:
        batch.drop_column("confirm_salt")
    op.drop_index(op.f("ix_rate_limit_expires"), table_name="rate_limit")
    op.drop_table("rate_limit")
