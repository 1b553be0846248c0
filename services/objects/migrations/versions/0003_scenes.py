"""scenes, the assets their imports created, and their imports

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scenes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("public", sa.Boolean, nullable=False),
        sa.Column("license", sa.String(32), nullable=False),
        sa.Column("allow_public_clone", sa.Boolean, nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "request_id", name="uq_scenes_tenant_request_id"),
    )
    op.create_index("ix_scenes_tenant_created", "scenes", ["tenant", "created_at", "id"])
    op.create_table(
        "scene_imports",
        sa.Column("scene_id", sa.String(36), primary_key=True),
        sa.Column("import_id", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("object_keys", sa.JSON, nullable=False),
        sa.Column("asset_ids", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "scene_assets",
        sa.Column("scene_id", sa.String(36), primary_key=True),
        sa.Column("asset_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scene_assets")
    op.drop_table("scene_imports")
    op.drop_index("ix_scenes_tenant_created", "scenes")
    op.drop_table("scenes")
