"""Alembic environment: migrations run on a connection handed in by ``core.migrations``."""

from __future__ import annotations

from alembic import context

from pia_server.core.database import metadata
from pia_server.core.tables import import_all_tables

import_all_tables()
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `pia-server migrate`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
