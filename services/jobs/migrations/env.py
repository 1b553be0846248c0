"""Alembic environment of the jobs service; the shared runtime does the work."""

from alembic import context

from services.jobs.store import metadata
from services.runtime.db import run_migrations

run_migrations(context, metadata)
