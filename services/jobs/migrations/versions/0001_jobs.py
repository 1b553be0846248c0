"""jobs and their transitions

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("seq", _SEQ, primary_key=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("outputs", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("run_after", sa.Double, nullable=False),
        sa.Column("lease_id", sa.String(32), nullable=True),
        sa.Column("lease_expires_at", sa.Double, nullable=True),
        sa.Column("lease_seconds", sa.Double, nullable=True),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double, nullable=True),
        sa.Column("ended_at", sa.Double, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("tenant", "request_id", name="uq_jobs_tenant_request_id"),
    )
    op.create_index("ix_jobs_claim", "jobs", ["status", "kind", "run_after", "seq"])
    op.create_index("ix_jobs_lease", "jobs", ["status", "lease_expires_at"])
    op.create_index("ix_jobs_ended", "jobs", ["status", "ended_at"])
    op.create_index("ix_jobs_tenant_seq", "jobs", ["tenant", "seq"])
    op.create_table(
        "job_transitions",
        sa.Column("seq", _SEQ, primary_key=True),
        sa.Column(
            "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_job_transitions_job", "job_transitions", ["job_id", "seq"])


def downgrade() -> None:
    op.drop_table("job_transitions")
    op.drop_table("jobs")
