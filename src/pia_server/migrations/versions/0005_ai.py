"""ai: token-budget windows and aggregated usage counts

Revision ID: 0005_ai
Revises: 0001_core
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_ai"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = ("ai",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ai_budget_windows",
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("window_start", sa.BigInteger, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("subject", "period", "window_start", name="pk_ai_budget_windows"),
    )
    op.create_table(
        "ai_usage",
        sa.Column("day", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint(
            "day", "user_id", "provider", "mode", "outcome", name="pk_ai_usage"
        ),
    )


def downgrade() -> None:
    op.drop_table("ai_usage")
    op.drop_table("ai_budget_windows")
