"""sync: the generic record store, per-user sync state, usage counters, devices seen

Revision ID: 0003_sync
Revises: 0001_core
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_sync"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = ("sync",)
depends_on: str | Sequence[str] | None = None


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"], ["users.id"], ondelete="CASCADE", name=f"fk_{table}_user_id_users"
    )


def upgrade() -> None:
    op.create_table(
        "sync_records",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("entity_id", sa.String(36), nullable=False),
        sa.Column("entity", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=True),
        sa.Column("entity_ts", sa.BigInteger, nullable=False),
        sa.Column("changed_at", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("deleted_at", sa.BigInteger, nullable=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("encrypted", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "entity_id", "entity", name="pk_sync_records"),
        _user_fk("sync_records"),
    )
    op.create_index("ix_sync_records_user_id_seq", "sync_records", ["user_id", "seq"], unique=True)
    op.create_index(
        "ix_sync_records_user_id_changed_at_seq", "sync_records", ["user_id", "changed_at", "seq"]
    )
    op.create_table(
        "sync_state",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_changed_at", sa.BigInteger, nullable=False),
        sa.Column("last_push_at", sa.BigInteger, nullable=True),
        sa.Column("last_pull_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("user_id", name="pk_sync_state"),
        _user_fk("sync_state"),
    )
    op.create_table(
        "sync_usage",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("entity", sa.String(32), nullable=False),
        sa.Column("records", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "entity", name="pk_sync_usage"),
        _user_fk("sync_usage"),
    )
    op.create_table(
        "sync_devices",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("first_seen_at", sa.BigInteger, nullable=False),
        sa.Column("last_seen_at", sa.BigInteger, nullable=False),
        sa.Column("pushes", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", name="pk_sync_devices"),
        _user_fk("sync_devices"),
    )


def downgrade() -> None:
    op.drop_table("sync_devices")
    op.drop_table("sync_usage")
    op.drop_table("sync_state")
    op.drop_index("ix_sync_records_user_id_changed_at_seq", table_name="sync_records")
    op.drop_index("ix_sync_records_user_id_seq", table_name="sync_records")
    op.drop_table("sync_records")
