"""objects, object assets, properties

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OBJECT_STRINGS = ("name", "type", "subtype", "owner", "scene", "parent", "asset_sub_id")
_PROPERTY_STRINGS = ("name", "parent", "asset_sub_id", "scene")


def upgrade() -> None:
    op.create_table(
        "objects",
        sa.Column("key", sa.String(24), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        *(sa.Column(name, sa.String(255), nullable=False) for name in _OBJECT_STRINGS),
        sa.Column("frame", sa.BigInteger, nullable=True),
        sa.Column("timestamp", sa.BigInteger, nullable=True),
        sa.Column("transform", sa.JSON, nullable=False),
        sa.Column("assets", sa.JSON, nullable=False),
        sa.Column("assets_text", sa.Text, nullable=False),
        sa.Column("handles", sa.JSON, nullable=True),
        sa.Column("lock_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    for name in (*_OBJECT_STRINGS, "frame", "timestamp", "assets_text"):
        op.create_index(f"ix_objects_tenant_{name}", "objects", ["tenant", name])
    op.create_table(
        "object_assets",
        sa.Column(
            "object_key",
            sa.String(24),
            sa.ForeignKey("objects.key", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("asset_key", sa.String(255), nullable=False),
    )
    op.create_index("ix_object_assets_asset", "object_assets", ["asset_key", "object_key"])
    op.create_table(
        "properties",
        sa.Column("key", sa.String(24), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        *(sa.Column(name, sa.String(255), nullable=False) for name in _PROPERTY_STRINGS),
        sa.Column("frame", sa.BigInteger, nullable=True),
        sa.Column("timestamp", sa.BigInteger, nullable=True),
        sa.Column("values", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    for name in (*_PROPERTY_STRINGS, "frame", "timestamp"):
        op.create_index(f"ix_properties_tenant_{name}", "properties", ["tenant", name])


def downgrade() -> None:
    op.drop_table("properties")
    op.drop_table("object_assets")
    op.drop_table("objects")
