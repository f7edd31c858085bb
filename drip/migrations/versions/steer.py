"""the author steers a reader's course: pause, restart rounds, and the actions' record

Revision ID: steer
Revises: consent
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import drip.models

revision = "steer"
down_revision = "letters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("course_progress", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_at", drip.models.UTCDateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("course_round", sa.Integer(), nullable=False, server_default="1")
        )
    op.create_table(
        "course_action",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("at", drip.models.UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("course_action", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_course_action_subscriber_id"), ["subscriber_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("course_action", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_course_action_subscriber_id"))
    op.drop_table("course_action")
    with op.batch_alter_table("course_progress", schema=None) as batch_op:
        batch_op.drop_column("course_round")
        batch_op.drop_column("paused_at")
