"""Alembic environment for the audit store.

Run by `scrapvision.audit.db.migrate` with an open connection in
`config.attributes["connection"]`, so the service's engine (and its SQLite pragmas or
PostgreSQL search_path) is used as is. On PostgreSQL an advisory lock serialises the
upgrade when several service processes start at once.
"""

from alembic import context
from sqlalchemy import text

from scrapvision.audit.tables import metadata

# Any constant shared by every process of the plant; "scrapvision audit" in ASCII, truncated.
_MIGRATION_LOCK_ID = 0x7363726170617564

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
    context.run_migrations()
