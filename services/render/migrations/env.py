"""Alembic environment of the render service; the shared runtime does the work."""

from alembic import context

from services.render.storage_store import metadata
from services.runtime.db import run_migrations

run_migrations(context, metadata)
