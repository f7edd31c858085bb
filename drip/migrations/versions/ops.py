"""alerts raised and cleared once across processes; signups and confirmations by time

Revision ID: ops
Revises: trust
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import drip.models

revision = "ops"
down_revision = "trust"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("raised_at", drip.models.UTCDateTime(), nullable=True),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index(op.f("ix_subscriber_created_at"), "subscriber", ["created_at"], unique=False)
    op.create_index(
        op.f("ix_subscriber_confirmed_at"), "subscriber", ["confirmed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_subscriber_confirmed_at"), table_name="subscriber")
    op.drop_index(op.f("ix_subscriber_created_at"), table_name="subscriber")
    op.drop_table("alert")
