"""Alembic environment of the gateway; the shared runtime does the work."""

from alembic import context

from gateway.identity.models import Base
from services.runtime.db import run_migrations

run_migrations(context, Base.metadata)
