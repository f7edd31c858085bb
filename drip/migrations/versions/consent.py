"""newsletter consent, signup source, pending re-signups, the meta table

Revision ID: consent
Revises: reader
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import drip.models

revision = "consent"
down_revision = "reader"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("newsletter", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("newsletter_at", drip.models.UTCDateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("newsletter_source", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("pending_signup", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_subscriber_token_salt"), ["token_salt"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_subscriber_confirm_salt"), ["confirm_salt"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriber_confirm_salt"))
        batch_op.drop_index(batch_op.f("ix_subscriber_token_salt"))
        batch_op.drop_column("pending_signup")
        batch_op.drop_column("newsletter_source")
        batch_op.drop_column("newsletter_at")
        batch_op.drop_column("newsletter")
        batch_op.drop_column("source")
    op.drop_table("meta")
