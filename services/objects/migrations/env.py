"""Alembic environment of the objects service; the shared runtime does the work."""

from alembic import context

from services.objects import object_store  # noqa: F401 - registers its tables
from services.objects.store import Base
from services.runtime.db import run_migrations

run_migrations(context, Base.metadata)
