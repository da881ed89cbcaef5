"""Auth tables and queries (SQLAlchemy Core).

Every secret that reaches the database (refresh tokens, reset tokens, OAuth state) is stored as
its SHA-256 only; lookups hash the presented value and compare by primary key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.core.database import metadata
from pia_server.core.rawsql import RawQuery, ReadConnection

users = Table(
    "users",
    metadata,
    # Lowercase hyphenated UUID text: the very string the client puts into E2EE AAD.
    Column("id", String(36), primary_key=True),
    Column("email", String(320), nullable=False),
    # Lower-cased email, unique: emails compare case-insensitively.
    Column("email_normalized", String(320), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False, default=""),
    Column("provider", String(32), nullable=False, default="local"),
    Column("password_hash", String(256), nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
)

# A user's linked sign-ins: one row per (provider, subject).
user_identities = Table(
    "user_identities",
    metadata,
    Column("provider", String(32), nullable=False),
    Column("subject", String(255), nullable=False),
    Column(
        "user_id",
        String(36),
        ForeignKey("users.id", ondelete="CASCADE", name="fk_user_identities_user_id_users"),
        nullable=False,
    ),
    Column("email", String(320), nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("last_login_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("provider", "subject", name="pk_user_identities"),
    Index("ix_user_identities_user_id", "user_id"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column(
        "user_id",
        String(36),
        ForeignKey("users.id", ondelete="CASCADE", name="fk_refresh_tokens_user_id_users"),
        nullable=False,
    ),
    # Every token descended from one login shares the family id (revoked together on reuse).
    Column("family_id", String(36), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger, nullable=False),
    # Set when this token was exchanged for its successor; a second use is a reuse.
    Column("rotated_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    Index("ix_refresh_tokens_user_id", "user_id"),
    Index("ix_refresh_tokens_family_id", "family_id"),
)

# OAuth logins in flight: state, nonce and PKCE verifier, so that any instance can finish them.
oauth_states = Table(
    "oauth_states",
    metadata,
    Column("state_hash", String(64), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("redirect_uri", String(2048), nullable=False),
    Column("nonce", String(128), nullable=False),
    Column("code_verifier", String(128), nullable=False),
    # SHA-256 of the random value in the browser's login cookie (binds the login to the browser).
    Column("browser_hash", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_oauth_states_expires_at", "expires_at"),
)

password_reset_tokens = Table(
    "password_reset_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column(
        "user_id",
        String(36),
        ForeignKey("users.id", ondelete="CASCADE", name="fk_password_reset_tokens_user_id_users"),
        nullable=False,
    ),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
    Index("ix_password_reset_tokens_user_id", "user_id"),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("email_normalized", String(320), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_login_failures_email_normalized_created_at", "email_normalized", "created_at"),
)

login_lockouts = Table(
    "login_lockouts",
    metadata,
    Column("email_normalized", String(320), primary_key=True),
    Column("locked_until", BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    email: str
    display_name: str
    provider: str
    disabled: bool
    created_at: int


_USER_COLUMNS = (
    users.c.id,
    users.c.email,
    users.c.display_name,
    users.c.provider,
    users.c.disabled,
    users.c.created_at,
)


def normalize_email(email: str) -> str:
    return email.strip().lower()


# Behind every authenticated request: run on the bare driver (see core.rawsql).
_USER_BY_ID = RawQuery(select(*_USER_COLUMNS).where(users.c.id == bindparam("user_id")))


async def get_user(conn: ReadConnection, user_id: str) -> UserRow | None:
    rows = await _USER_BY_ID.all(conn, user_id=user_id)
    if not rows:
        return None
    r = rows[0]
    # Driver rows: SQLite gives booleans as 0/1.
    return UserRow(r[0], r[1], r[2], r[3], bool(r[4]), int(r[5]))


async def get_user_by_email(conn: AsyncConnection, email: str) -> UserRow | None:
    stmt = select(*_USER_COLUMNS).where(users.c.email_normalized == normalize_email(email))
    row = (await conn.execute(stmt)).first()
    return UserRow(*row) if row is not None else None


async def get_credentials(conn: AsyncConnection, email: str) -> tuple[UserRow, str | None] | None:
    stmt = select(*_USER_COLUMNS, users.c.password_hash).where(
        users.c.email_normalized == normalize_email(email)
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    return UserRow(*row[:6]), row[6]


async def insert_user(
    conn: AsyncConnection,
    *,
    user_id: str,
    email: str,
    display_name: str,
    provider: str,
    password_hash: str | None,
    created_at: int,
) -> UserRow:
    await conn.execute(
        insert(users).values(
            id=user_id,
            email=email.strip(),
            email_normalized=normalize_email(email),
            display_name=display_name,
            provider=provider,
            password_hash=password_hash,
            disabled=False,
            created_at=created_at,
        )
    )
    return UserRow(user_id, email.strip(), display_name, provider, False, created_at)


async def set_password_hash(conn: AsyncConnection, user_id: str, password_hash: str) -> None:
    await conn.execute(
        update(users).where(users.c.id == user_id).values(password_hash=password_hash)
    )


async def set_disabled(conn: AsyncConnection, user_id: str, disabled: bool) -> None:
    await conn.execute(update(users).where(users.c.id == user_id).values(disabled=disabled))


async def list_users(conn: AsyncConnection) -> list[UserRow]:
    rows = await conn.execute(select(*_USER_COLUMNS).order_by(users.c.created_at, users.c.id))
    return [UserRow(*row) for row in rows]


# --- identities ---------------------------------------------------------------------------


async def find_identity_user(conn: AsyncConnection, provider: str, subject: str) -> str | None:
    stmt = select(user_identities.c.user_id).where(
        user_identities.c.provider == provider, user_identities.c.subject == subject
    )
    return (await conn.execute(stmt)).scalar_one_or_none()


async def link_identity(
    conn: AsyncConnection, *, provider: str, subject: str, user_id: str, email: str, now: int
) -> None:
    await conn.execute(
        insert(user_identities).values(
            provider=provider,
            subject=subject,
            user_id=user_id,
            email=email,
            created_at=now,
            last_login_at=now,
        )
    )


async def touch_identity(conn: AsyncConnection, provider: str, subject: str, now: int) -> None:
    await conn.execute(
        update(user_identities)
        .where(user_identities.c.provider == provider, user_identities.c.subject == subject)
        .values(last_login_at=now)
    )


# --- refresh tokens -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshRow:
    token_hash: str
    user_id: str
    family_id: str
    created_at: int
    expires_at: int
    last_used_at: int
    rotated_at: int | None
    revoked_at: int | None


async def insert_refresh(
    conn: AsyncConnection,
    *,
    token_hash: str,
    user_id: str,
    family_id: str,
    now: int,
    expires_at: int,
) -> None:
    await conn.execute(
        insert(refresh_tokens).values(
            token_hash=token_hash,
            user_id=user_id,
            family_id=family_id,
            created_at=now,
            expires_at=expires_at,
            last_used_at=now,
        )
    )


async def get_refresh_for_update(conn: AsyncConnection, token_hash: str) -> RefreshRow | None:
    # FOR UPDATE on PostgreSQL serializes two racing uses of one token; SQLite's write
    # transactions (BEGIN IMMEDIATE) already do.
    stmt = select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash).with_for_update()
    row = (await conn.execute(stmt)).first()
    return RefreshRow(*row) if row is not None else None


async def mark_rotated(conn: AsyncConnection, token_hash: str, now: int) -> None:
    await conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.token_hash == token_hash)
        .values(rotated_at=now, last_used_at=now)
    )


async def revoke_family(conn: AsyncConnection, family_id: str, now: int) -> int:
    result = await conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount or 0)


async def revoke_user_tokens(conn: AsyncConnection, user_id: str, now: int) -> int:
    result = await conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount or 0)


async def live_refresh_tokens(conn: AsyncConnection, user_id: str, now: int) -> list[str]:
    """Hashes of the user's usable tokens, least recently used first."""
    stmt = (
        select(refresh_tokens.c.token_hash)
        .where(
            refresh_tokens.c.user_id == user_id,
            refresh_tokens.c.revoked_at.is_(None),
            refresh_tokens.c.rotated_at.is_(None),
            refresh_tokens.c.expires_at > now,
        )
        .order_by(refresh_tokens.c.last_used_at, refresh_tokens.c.created_at)
    )
    return list((await conn.execute(stmt)).scalars())


async def revoke_tokens(conn: AsyncConnection, token_hashes: list[str], now: int) -> None:
    if token_hashes:
        await conn.execute(
            update(refresh_tokens)
            .where(refresh_tokens.c.token_hash.in_(token_hashes))
            .values(revoked_at=now)
        )


async def delete_dead_refresh_tokens(conn: AsyncConnection, user_id: str, before: int) -> None:
    """Forget tokens that expired (or were revoked) before ``before``; keeps the table small."""
    await conn.execute(
        delete(refresh_tokens).where(
            refresh_tokens.c.user_id == user_id,
            (refresh_tokens.c.expires_at < before) | (refresh_tokens.c.revoked_at < before),
        )
    )


# --- OAuth state --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OAuthStateRow:
    state_hash: str
    provider: str
    redirect_uri: str
    nonce: str
    code_verifier: str
    browser_hash: str
    created_at: int
    expires_at: int


async def insert_oauth_state(conn: AsyncConnection, row: OAuthStateRow) -> None:
    await conn.execute(
        insert(oauth_states).values(
            state_hash=row.state_hash,
            provider=row.provider,
            redirect_uri=row.redirect_uri,
            nonce=row.nonce,
            code_verifier=row.code_verifier,
            browser_hash=row.browser_hash,
            created_at=row.created_at,
            expires_at=row.expires_at,
        )
    )


async def take_oauth_state(conn: AsyncConnection, state_hash: str) -> OAuthStateRow | None:
    """Fetch and delete in one transaction: a state is good for one callback only."""
    stmt = select(oauth_states).where(oauth_states.c.state_hash == state_hash).with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    result = await conn.execute(delete(oauth_states).where(oauth_states.c.state_hash == state_hash))
    if (result.rowcount or 0) != 1:
        return None  # a racing callback took it first
    return OAuthStateRow(*row)


async def latest_state_of_browser(conn: AsyncConnection, browser_hash: str, now: int) -> str | None:
    """The newest unexpired login of one browser (for error callbacks that lost ``state``)."""
    stmt = (
        select(oauth_states.c.state_hash)
        .where(oauth_states.c.browser_hash == browser_hash, oauth_states.c.expires_at > now)
        .order_by(oauth_states.c.created_at.desc())
        .limit(1)
    )
    value = (await conn.execute(stmt)).scalar_one_or_none()
    return str(value) if value is not None else None


async def delete_stale_oauth_states(conn: AsyncConnection, before: int) -> None:
    await conn.execute(delete(oauth_states).where(oauth_states.c.expires_at < before))


# --- password reset -----------------------------------------------------------------------


async def insert_reset_token(
    conn: AsyncConnection, *, token_hash: str, user_id: str, now: int, expires_at: int
) -> None:
    await conn.execute(
        insert(password_reset_tokens).values(
            token_hash=token_hash, user_id=user_id, created_at=now, expires_at=expires_at
        )
    )


async def take_reset_token(conn: AsyncConnection, token_hash: str, now: int) -> str | None:
    """Mark a valid reset token used and return its user id (``None``: unknown, used, expired)."""
    result = await conn.execute(
        update(password_reset_tokens)
        .where(
            password_reset_tokens.c.token_hash == token_hash,
            password_reset_tokens.c.used_at.is_(None),
            password_reset_tokens.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(password_reset_tokens.c.user_id)
    )
    user_id = result.scalar_one_or_none()
    return str(user_id) if user_id is not None else None


async def invalidate_reset_tokens(conn: AsyncConnection, user_id: str, now: int) -> None:
    await conn.execute(
        update(password_reset_tokens)
        .where(
            password_reset_tokens.c.user_id == user_id, password_reset_tokens.c.used_at.is_(None)
        )
        .values(used_at=now)
    )


# --- login failures and lockouts ----------------------------------------------------------


async def locked_until(conn: AsyncConnection, email_normalized: str) -> int | None:
    stmt = select(login_lockouts.c.locked_until).where(
        login_lockouts.c.email_normalized == email_normalized
    )
    return (await conn.execute(stmt)).scalar_one_or_none()


async def record_failure(conn: AsyncConnection, email_normalized: str, now: int, since: int) -> int:
    """Record one failed login; return the failures within the window (this one included)."""
    await conn.execute(
        delete(login_failures).where(
            login_failures.c.email_normalized == email_normalized,
            login_failures.c.created_at < since,
        )
    )
    await conn.execute(
        insert(login_failures).values(email_normalized=email_normalized, created_at=now)
    )
    stmt = select(func.count()).where(
        login_failures.c.email_normalized == email_normalized, login_failures.c.created_at >= since
    )
    return int((await conn.execute(stmt)).scalar_one())


async def set_lockout(conn: AsyncConnection, email_normalized: str, until: int) -> None:
    # An upsert: two failures racing for one email must not collide on the primary key.
    values = {"email_normalized": email_normalized, "locked_until": until}
    key = [login_lockouts.c.email_normalized]
    if conn.dialect.name == "postgresql":
        pg = pg_insert(login_lockouts).values(**values)
        await conn.execute(
            pg.on_conflict_do_update(index_elements=key, set_={"locked_until": until})
        )
    else:
        lite = sqlite_insert(login_lockouts).values(**values)
        await conn.execute(
            lite.on_conflict_do_update(index_elements=key, set_={"locked_until": until})
        )


async def clear_failures(conn: AsyncConnection, email_normalized: str) -> None:
    await conn.execute(
        delete(login_failures).where(login_failures.c.email_normalized == email_normalized)
    )
    await conn.execute(
        delete(login_lockouts).where(login_lockouts.c.email_normalized == email_normalized)
    )
