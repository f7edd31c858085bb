"""the course funnel: where unsubscribers left, and the indexes its counts read

Revision ID: funnel
Revises: consent
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "funnel"
down_revision = "hooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unsubscribed_via", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("unsubscribed_step", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_subscriber_unsubscribed_step"), ["unsubscribed_step"], unique=False
        )
        batch_op.create_index(
            "ix_subscriber_source_confirmed", ["source", "confirmed_at", "id"], unique=False
        )
    with op.batch_alter_table("course_progress", schema=None) as batch_op:
        batch_op.create_index(
            "ix_course_progress_finished",
            ["finished_at", "started_at", "subscriber_id"],
            unique=False,
        )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_funnel", ["kind", "template", "status"], unique=False)
        batch_op.create_index(
            "ix_outbox_confirm_subscriber",
            ["subscriber_id", "status"],
            unique=False,
            sqlite_where=sa.text("kind = 'confirm'"),
            postgresql_where=sa.text("kind = 'confirm'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_confirm_subscriber")
        batch_op.drop_index("ix_outbox_funnel")
    with op.batch_alter_table("course_progress", schema=None) as batch_op:
        batch_op.drop_index("ix_course_progress_finished")
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriber_source_confirmed")
        batch_op.drop_index(batch_op.f("ix_subscriber_unsubscribed_step"))
        batch_op.drop_column("unsubscribed_step")
        batch_op.drop_column("unsubscribed_via")
