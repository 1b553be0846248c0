"""SQL schema of the gateway's store: API clients."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Float, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the gateway's tables (its own metadata, its own migrations)."""


class ApiClientRow(Base):
    """One API client: credentials that act inside one tenant."""

    __tablename__ = "api_clients"

    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    # Space-separated, as OAuth2's `scope` parameter spells a set of scopes.
    scopes: Mapped[str] = mapped_column(String(1024), nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # The client's own rate limit; NULL: the gateway's default (KILN_RATE_LIMIT_*).
    rate_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    rate_burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
