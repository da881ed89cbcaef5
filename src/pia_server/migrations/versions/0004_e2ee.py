"""e2ee: accounts, devices, onboarding sessions, wrapped UMKs, activation attempts

Revision ID: 0004_e2ee
Revises: 0001_core
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_e2ee"
down_revision: str | Sequence[str] | None = "0001_core"
branch_labels: str | Sequence[str] | None = ("e2ee",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "e2ee_accounts",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("umk_version", sa.Integer, nullable=False),
        sa.Column("enabled_at", sa.BigInteger, nullable=True),
        sa.Column("recovery_ciphertext", sa.String(128), nullable=True),
        sa.Column("recovery_kdf_salt", sa.String(128), nullable=True),
        sa.Column("recovery_kdf_memory_cost_kb", sa.Integer, nullable=True),
        sa.Column("recovery_kdf_time_cost", sa.Integer, nullable=True),
        sa.Column("recovery_kdf_parallelism", sa.Integer, nullable=True),
        sa.Column("recovery_wrap_version", sa.Integer, nullable=True),
        sa.Column("recovery_umk_version", sa.Integer, nullable=True),
        sa.Column("recovery_created_at", sa.BigInteger, nullable=True),
        sa.Column("proof_key", sa.String(64), nullable=True),
        sa.Column("proof_key_version", sa.Integer, nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_e2ee_accounts"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_e2ee_accounts_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "e2ee_devices",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("device_name", sa.String(200), nullable=False),
        sa.Column("agreement_public_key", sa.String(128), nullable=False),
        sa.Column("signing_public_key", sa.String(128), nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("os_version", sa.String(200), nullable=True),
        sa.Column("app_version", sa.String(200), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("activated_at", sa.BigInteger, nullable=True),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.Column("last_seen_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("user_id", "device_id", name="pk_e2ee_devices"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_e2ee_devices_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "e2ee_onboarding_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("server_challenge", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("closed_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_e2ee_onboarding_sessions"),
        sa.ForeignKeyConstraint(
            ["user_id", "device_id"],
            ["e2ee_devices.user_id", "e2ee_devices.device_id"],
            name="fk_e2ee_onboarding_sessions_user_id_e2ee_devices",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_e2ee_onboarding_sessions_user_id_device_id",
        "e2ee_onboarding_sessions",
        ["user_id", "device_id"],
    )
    op.create_table(
        "e2ee_wrapped_umks",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("ciphertext", sa.String(128), nullable=False),
        sa.Column("hkdf_salt", sa.String(128), nullable=False),
        sa.Column("wrap_version", sa.Integer, nullable=False),
        sa.Column("created_by_device_id", sa.String(64), nullable=False),
        sa.Column("approver_signature", sa.String(128), nullable=True),
        sa.Column("signature_version", sa.Integer, nullable=True),
        sa.Column("onboarding_session_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", name="pk_e2ee_wrapped_umks"),
        sa.ForeignKeyConstraint(
            ["user_id", "device_id"],
            ["e2ee_devices.user_id", "e2ee_devices.device_id"],
            name="fk_e2ee_wrapped_umks_user_id_e2ee_devices",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "e2ee_activation_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("attempted_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_e2ee_activation_attempts"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_e2ee_activation_attempts_user_id_users",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_e2ee_activation_attempts_user_id_attempted_at",
        "e2ee_activation_attempts",
        ["user_id", "attempted_at"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_e2ee_activation_attempts_user_id_attempted_at", table_name="e2ee_activation_attempts"
    )
    op.drop_table("e2ee_activation_attempts")
    op.drop_table("e2ee_wrapped_umks")
    op.drop_index(
        "ix_e2ee_onboarding_sessions_user_id_device_id", table_name="e2ee_onboarding_sessions"
    )
    op.drop_table("e2ee_onboarding_sessions")
    op.drop_table("e2ee_devices")
    op.drop_table("e2ee_accounts")
