"""Auth logic: local accounts, sessions (access + refresh tokens), password reset, OIDC sign-in.

Knows no HTTP. Every time it reads comes from ``self.clock`` (.NET ticks), so that tests can
move time forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server.auth import errors, storage
from pia_server.auth.mailer import Mailer
from pia_server.auth.oidc import IdentityClaims, OidcError, Providers
from pia_server.auth.passwords import Passwords
from pia_server.auth.storage import UserRow
from pia_server.auth.tokens import AccessTokens
from pia_server.core.audit import RequestOrigin, record_event
from pia_server.core.config import Settings
from pia_server.core.database import Database
from pia_server.core.wire import TICKS_PER_SECOND, now_ticks

log = structlog.get_logger("pia_server.auth")

# No whitespace and no control characters (NUL included) anywhere in an address.
_EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")
_TICKS_PER_MINUTE = 60 * TICKS_PER_SECOND
_TICKS_PER_DAY = 86_400 * TICKS_PER_SECOND


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def new_secret_token() -> str:
    """256 random bits, URL-safe base64 without padding (no '+', '/' or '=')."""
    return secrets.token_urlsafe(32)


def valid_email(email: str) -> bool:
    return len(email) <= 320 and _EMAIL_RE.match(email) is not None


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class Session:
    tokens: TokenPair
    user: UserRow


@dataclass(frozen=True, slots=True)
class LoginRedirect:
    """Where ``/auth/callback`` sends the browser: the client's redirect URI plus a query, or,
    when there is no redirect URI to trust, an error page (``redirect_uri`` is ``None``)."""

    redirect_uri: str | None
    params: dict[str, str] = field(default_factory=dict)


class AuthService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        tokens: AccessTokens,
        passwords: Passwords,
        providers: Providers,
        mailer: Mailer | None = None,
    ) -> None:
        self.settings = settings
        self.auth = settings.auth
        self.db = db
        self.tokens = tokens
        self.passwords = passwords
        self.providers = providers
        self.mailer = mailer
        self.clock: Callable[[], int] = now_ticks
        self._background: set[asyncio.Task[None]] = set()

    @property
    def callback_url(self) -> str:
        return f"{self.settings.public_url}/auth/callback"

    # --- accounts -----------------------------------------------------------------------

    def check_password(self, password: str, field_name: str = "password") -> None:
        if len(password) < self.auth.password_min_length:
            raise errors.field_error(
                field_name, f"must be at least {self.auth.password_min_length} characters"
            )

    async def create_local_user(
        self,
        email: str,
        password: str,
        display_name: str | None,
        origin: RequestOrigin | None = None,
    ) -> UserRow:
        email = email.strip()
        if not valid_email(email):
            raise errors.field_error("email", "is not an email address")
        self.check_password(password)
        password_hash = await self.passwords.hash(password)
        name = (display_name or "").strip()[:200] or email.split("@", 1)[0]
        try:
            async with self.db.write() as conn:
                if await storage.get_user_by_email(conn, email) is not None:
                    raise errors.email_taken()
                user = await storage.insert_user(
                    conn,
                    user_id=str(uuid.uuid4()),
                    email=email,
                    display_name=name,
                    provider="local",
                    password_hash=password_hash,
                    created_at=self.clock(),
                )
                await record_event(
                    conn, "user_created", user_id=user.id, origin=origin, provider="local"
                )
        except IntegrityError as exc:  # a racing registration of the same email
            raise errors.email_taken() from exc
        log.info("user_created", user_id=user.id, provider="local")
        return user

    async def register(
        self, email: str, password: str, display_name: str | None, origin: RequestOrigin
    ) -> UserRow:
        if not self.auth.allow_registration:
            raise errors.registration_disabled()
        return await self.create_local_user(email, password, display_name, origin)

    async def login_local(self, email: str, password: str, origin: RequestOrigin) -> Session:
        email_n = storage.normalize_email(email)
        now = self.clock()
        async with self.db.read() as conn:
            until = await storage.locked_until(conn, email_n)
            found = await storage.get_credentials(conn, email_n)
        if until is not None and until > now:
            raise errors.account_locked(max(1, -(-(until - now) // TICKS_PER_SECOND)))
        user, stored = found if found is not None else (None, None)
        # Unknown email: verified against a dummy hash, so both failures take the same time.
        ok = await self.passwords.verify(stored, password)
        if not ok or user is None:
            await self._login_failed(email_n, user, origin)
            raise errors.invalid_credentials()
        if user.disabled:
            async with self.db.write() as conn:
                await record_event(
                    conn,
                    "login_failed",
                    user_id=user.id,
                    origin=origin,
                    provider="local",
                    details={"reason": "account_disabled"},
                )
            raise errors.account_disabled()
        rehash = self.passwords.needs_rehash(stored or "")
        new_hash = await self.passwords.hash(password) if rehash else None
        async with self.db.write() as conn:
            await storage.clear_failures(conn, email_n)
            if new_hash is not None:
                await storage.set_password_hash(conn, user.id, new_hash)
            pair = await self._issue_session(conn, user.id)
            await record_event(conn, "login", user_id=user.id, origin=origin, provider="local")
        return Session(pair, user)

    async def _login_failed(
        self, email_n: str, user: UserRow | None, origin: RequestOrigin
    ) -> None:
        now = self.clock()
        window = self.auth.lockout_minutes * _TICKS_PER_MINUTE
        async with self.db.write() as conn:
            count = await storage.record_failure(conn, email_n, now, now - window)
            locked = count >= self.auth.lockout_failures
            if locked:
                await storage.set_lockout(conn, email_n, now + window)
            await record_event(
                conn,
                "login_failed",
                user_id=user.id if user is not None else None,
                origin=origin,
                provider="local",
                details={"reason": "invalid_credentials", "locked": locked},
            )

    async def list_users(self) -> list[UserRow]:
        async with self.db.read() as conn:
            return await storage.list_users(conn)

    async def set_disabled(self, email: str, disabled: bool = True) -> UserRow | None:
        """Disable (or enable) a user; disabling also revokes every refresh token at once."""
        async with self.db.write() as conn:
            user = await storage.get_user_by_email(conn, email)
            if user is None:
                return None
            await storage.set_disabled(conn, user.id, disabled)
            if disabled:
                await storage.revoke_user_tokens(conn, user.id, self.clock())
            await record_event(
                conn, "user_disabled" if disabled else "user_enabled", user_id=user.id
            )
        return user

    # --- sessions -----------------------------------------------------------------------

    async def _issue_session(
        self, conn: AsyncConnection, user_id: str, family_id: str | None = None
    ) -> TokenPair:
        """A new access token and a new refresh token (in ``family_id``, or a new family)."""
        now = self.clock()
        refresh = new_secret_token()
        await storage.insert_refresh(
            conn,
            token_hash=token_hash(refresh),
            user_id=user_id,
            family_id=family_id or str(uuid.uuid4()),
            now=now,
            expires_at=now + self.auth.refresh_token_ttl_days * _TICKS_PER_DAY,
        )
        live = await storage.live_refresh_tokens(conn, user_id, now)
        excess = len(live) - self.auth.max_refresh_tokens
        if excess > 0:
            # The cap: the least recently used tokens go first.
            await storage.revoke_tokens(conn, live[:excess], now)
        await storage.delete_dead_refresh_tokens(conn, user_id, now - _TICKS_PER_DAY)
        access = self.tokens.issue(user_id, int(time.time()))
        return TokenPair(access, refresh, self.tokens.ttl_seconds)

    async def refresh(self, refresh_token: str, origin: RequestOrigin) -> TokenPair:
        now = self.clock()
        grace = self.auth.refresh_reuse_grace_seconds * TICKS_PER_SECOND
        reused: storage.RefreshRow | None = None
        async with self.db.write() as conn:
            row = await storage.get_refresh_for_update(conn, token_hash(refresh_token))
            if row is None or row.revoked_at is not None:
                raise errors.invalid_refresh_token()
            if row.expires_at <= now:
                raise errors.invalid_refresh_token("refresh_token_expired")
            user = await storage.get_user(conn, row.user_id)
            if user is None or user.disabled:
                raise errors.invalid_refresh_token()
            if row.rotated_at is None:
                await storage.mark_rotated(conn, row.token_hash, now)
                return await self._issue_session(conn, row.user_id, row.family_id)
            if now - row.rotated_at <= grace:
                # Two requests of one client raced with the same token: both succeed.
                return await self._issue_session(conn, row.user_id, row.family_id)
            # A rotated token used again later: it leaked. Revoke everything from that login.
            await storage.revoke_family(conn, row.family_id, now)
            await record_event(
                conn,
                "refresh_token_reuse",
                user_id=row.user_id,
                origin=origin,
                details={"family": row.family_id},
            )
            reused = row
        log.warning("refresh_token_reuse", user_id=reused.user_id, family=reused.family_id)
        raise errors.invalid_refresh_token("refresh_token_reused")

    async def logout(self, refresh_token: str, origin: RequestOrigin) -> None:
        async with self.db.write() as conn:
            row = await storage.get_refresh_for_update(conn, token_hash(refresh_token))
            if row is None:
                return
            await storage.revoke_family(conn, row.family_id, self.clock())
            await record_event(conn, "logout", user_id=row.user_id, origin=origin)

    # --- password reset -----------------------------------------------------------------

    def reset_link(self, token: str, email: str) -> str:
        # The token rides in the fragment: browsers never send it to a server or in a Referer.
        return (
            f"{self.settings.public_url}/auth/reset-password.html"
            f"#token={quote(token, safe='')}&email={quote(email, safe='')}"
        )

    async def create_reset_link(self, email: str) -> str | None:
        now = self.clock()
        async with self.db.write() as conn:
            user = await storage.get_user_by_email(conn, email)
            if user is None or user.disabled:
                return None
            token = new_secret_token()
            await storage.insert_reset_token(
                conn,
                token_hash=token_hash(token),
                user_id=user.id,
                now=now,
                expires_at=now + self.auth.reset_token_minutes * _TICKS_PER_MINUTE,
            )
        return self.reset_link(token, user.email)

    async def forgot_password(self, email: str) -> None:
        """Answered at once; the lookup and mail happen afterwards, so the response time does
        not tell whether the email has an account."""
        task = asyncio.create_task(self._send_reset(email))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_reset(self, email: str) -> None:
        try:
            if not valid_email(email.strip()):
                return
            link = await self.create_reset_link(email)
            if link is None:
                return
            if self.mailer is None:
                log.info("password_reset_requested", delivery="none: no [auth.smtp] configured")
                return
            await self.mailer.send_reset_link(email.strip(), link, self.auth.reset_token_minutes)
        except Exception as exc:  # a background task must log, not vanish
            log.warning("password_reset_mail_failed", error=type(exc).__name__)

    async def drain(self) -> None:
        """Wait for background work (password reset mails); used at shutdown and by tests."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def reset_password(
        self, token: str, email: str, new_password: str, origin: RequestOrigin
    ) -> None:
        self.check_password(new_password, "newPassword")
        new_hash = await self.passwords.hash(new_password)
        now = self.clock()
        async with self.db.write() as conn:
            user_id = await storage.take_reset_token(conn, token_hash(token), now)
            user = await storage.get_user(conn, user_id) if user_id else None
            if (
                user is None
                or user.disabled
                or (storage.normalize_email(user.email) != storage.normalize_email(email))
            ):
                # Raising rolls the transaction back: the token stays usable by its owner.
                raise errors.invalid_reset_token()
            await storage.set_password_hash(conn, user.id, new_hash)
            await storage.invalidate_reset_tokens(conn, user.id, now)
            await storage.revoke_user_tokens(conn, user.id, now)
            await storage.clear_failures(conn, storage.normalize_email(user.email))
            await record_event(conn, "password_reset", user_id=user.id, origin=origin)

    # --- OpenID Connect -----------------------------------------------------------------

    async def start_login(self, provider_name: str, redirect_uri: str, browser_value: str) -> str:
        """Save the login's state, nonce and PKCE verifier; return the provider's URL."""
        provider = self.providers.get(provider_name)
        if provider is None:
            raise errors.provider_not_configured(provider_name)
        state, nonce, verifier = new_secret_token(), new_secret_token(), secrets.token_urlsafe(48)
        url = await provider.authorization_url(
            state=state, nonce=nonce, code_verifier=verifier, redirect_uri=self.callback_url
        )
        now = self.clock()
        async with self.db.write() as conn:
            # Expired states are kept an hour to tell "expired" from "unknown", then dropped.
            await storage.delete_stale_oauth_states(conn, now - 3600 * TICKS_PER_SECOND)
            await storage.insert_oauth_state(
                conn,
                storage.OAuthStateRow(
                    state_hash=token_hash(state),
                    provider=provider_name,
                    redirect_uri=redirect_uri,
                    nonce=nonce,
                    code_verifier=verifier,
                    browser_hash=token_hash(browser_value),
                    created_at=now,
                    expires_at=now + self.auth.login_state_minutes * _TICKS_PER_MINUTE,
                ),
            )
        return url

    async def finish_login(
        self,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        error_description: str | None,
        browser_value: str | None,
        origin: RequestOrigin,
    ) -> LoginRedirect:
        if state and len(state) <= 512:
            state_hash: str | None = token_hash(state)
        elif not state and error and browser_value:
            # Some providers drop ``state`` when the user declines: an error (never a code)
            # may then go back to this browser's newest sign-in.
            async with self.db.read() as conn:
                state_hash = await storage.latest_state_of_browser(
                    conn, token_hash(browser_value), self.clock()
                )
        else:
            state_hash = None
        if state_hash is None:
            return LoginRedirect(None, _failure("invalid_state", "The sign-in has no state."))
        async with self.db.write() as conn:
            saved = await storage.take_oauth_state(conn, state_hash)
        if saved is None:
            return LoginRedirect(
                None,
                _failure("invalid_state", "This sign-in is unknown or was already completed."),
            )
        back = saved.redirect_uri
        try:
            if saved.expires_at <= self.clock():
                raise OidcError("login_expired", "The sign-in took too long; please try again.")
            if not browser_value or token_hash(browser_value) != saved.browser_hash:
                raise OidcError(
                    "invalid_state", "The sign-in was started in another browser; try again."
                )
            if error:
                code_name = "access_denied" if error == "access_denied" else "provider_error"
                text = (error_description or "").strip()[:200] or (
                    "Sign-in was cancelled." if code_name == "access_denied" else error[:100]
                )
                raise OidcError(code_name, text)
            if not code:
                raise OidcError("provider_error", "The sign-in provider sent no code.")
            provider = self.providers.get(saved.provider)
            if provider is None:
                raise OidcError("provider_not_configured", "This provider is no longer enabled.")
            identity = await provider.redeem(
                code=code,
                code_verifier=saved.code_verifier,
                nonce=saved.nonce,
                redirect_uri=self.callback_url,
            )
            session = await self._sign_in(identity, origin)
        except OidcError as exc:
            log.warning("oauth_login_failed", provider=saved.provider, reason=exc.code)
            async with self.db.write() as conn:
                await record_event(
                    conn,
                    "login_failed",
                    origin=origin,
                    provider=saved.provider,
                    details={"reason": exc.code},
                )
            return LoginRedirect(back, _failure(exc.code, exc.message))
        user = session.user
        return LoginRedirect(
            back,
            {
                "access_token": session.tokens.access_token,
                "refresh_token": session.tokens.refresh_token,
                "expires_in": str(session.tokens.expires_in),
                "user_id": user.id,
                "email": user.email,
                "display_name": user.display_name,
            },
        )

    async def _sign_in(self, identity: IdentityClaims, origin: RequestOrigin) -> Session:
        """Find the user by identity, else link by verified email, else create the user."""
        now = self.clock()
        try:
            async with self.db.write() as conn:
                user: UserRow | None = None
                user_id = await storage.find_identity_user(
                    conn, identity.provider, identity.subject
                )
                if user_id is not None:
                    user = await storage.get_user(conn, user_id)
                    await storage.touch_identity(conn, identity.provider, identity.subject, now)
                if user is None:
                    user = await self._link_or_create(conn, identity, origin, now)
                if user.disabled:
                    raise OidcError("account_disabled", "This account is disabled.")
                pair = await self._issue_session(conn, user.id)
                await record_event(
                    conn, "login", user_id=user.id, origin=origin, provider=identity.provider
                )
        except IntegrityError as exc:  # two first sign-ins of one person racing
            raise OidcError("login_conflict", "Please try signing in again.") from exc
        return Session(pair, user)

    async def _link_or_create(
        self, conn: AsyncConnection, identity: IdentityClaims, origin: RequestOrigin, now: int
    ) -> UserRow:
        if not identity.email:
            raise OidcError("email_missing", "The sign-in provider did not share an email address.")
        existing = await storage.get_user_by_email(conn, identity.email)
        if existing is not None:
            if not identity.email_verified:
                # An unverified email claim must never take over an existing account.
                raise OidcError(
                    "account_exists",
                    "An account with this email already exists; sign in the way you did before.",
                )
            user = existing
        else:
            user = await storage.insert_user(
                conn,
                user_id=str(uuid.uuid4()),
                email=identity.email,
                display_name=identity.name or identity.email.split("@", 1)[0],
                provider=identity.provider,
                password_hash=None,
                created_at=now,
            )
            await record_event(
                conn, "user_created", user_id=user.id, origin=origin, provider=identity.provider
            )
        await storage.link_identity(
            conn,
            provider=identity.provider,
            subject=identity.subject,
            user_id=user.id,
            email=identity.email,
            now=now,
        )
        return user


def _failure(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}
