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
    with engine.connect() as connection:
        # SQLite rebuilds a table to alter it; with foreign keys on, dropping the old
        # table would cascade and delete the rows that point at it (course progress).
        raw = connection.connection.driver_connection if engine.dialect.name == "sqlite" else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys = OFF")  # outside a transaction, or it is ignored
        try:
            with connection.begin():
                context.configure(
                    connection=connection,
                    target_metadata=SQLModel.metadata,
                    render_as_batch=True,
                    compare_type=True,
                )
                with context.begin_transaction():
                    context.run_migrations()
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys = ON")
