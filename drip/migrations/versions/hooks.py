"""clicks on tracked lesson links (DRIP_CLICK_TRACKING)

Revision ID: hooks
Revises: consent
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import drip.models

revision = "hooks"
down_revision = "steer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "click",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.Column("link", sa.Integer(), nullable=False),
        sa.Column("at", drip.models.UTCDateTime(), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("human", sa.Boolean(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_click_outbox_at", "click", ["outbox_id", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_click_outbox_at", table_name="click")
    op.drop_table("click")
