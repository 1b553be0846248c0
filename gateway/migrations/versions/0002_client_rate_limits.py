"""per-client rate limits

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_clients", sa.Column("rate_per_second", sa.Float, nullable=True))
    op.add_column("api_clients", sa.Column("rate_burst", sa.Integer, nullable=True))


def downgrade() -> None:
    op.drop_column("api_clients", "rate_burst")
    op.drop_column("api_clients", "rate_per_second")
