"""a newsletter's preheader and the time it was scheduled for

Revision ID: letters
Revises: consent
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import drip.models

revision = "letters"
down_revision = "versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("newsletter", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("preheader", sa.String(length=300), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("send_at", drip.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("newsletter", schema=None) as batch_op:
        batch_op.drop_column("send_at")
        batch_op.drop_column("preheader")
