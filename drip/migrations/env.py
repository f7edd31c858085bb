"""Alembic environment: drip passes its engine in; `render_as_batch` lets SQLite alter tables."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import drip.models  # noqa: F401 - registers the tables on SQLModel.metadata

engine = context.config.attributes["engine"]

if context.is_offline_mode():
    # `drip db upgrade --sql`: print the statements instead of running them.
    context.configure(
        url=engine.url,
        target_metadata=SQLModel.metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=SQLModel.metadata,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
