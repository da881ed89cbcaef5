"""``pia-server doctor``: check a deployment the way a self-hoster needs when something is off.

Every check gives one :class:`Check` (``ok``, ``warn``, ``FAIL`` or ``skip``) with what to do
about it. Network checks run concurrently, each bounded by a short timeout. Nothing secret is
printed: every configured secret is scrubbed from the messages before they leave this module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sqlite3
import stat
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from alembic.runtime.migration import MigrationContext
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from pia_server.ai.upstream import (
    ANTHROPIC_VERSION,
    AZURE_DEFAULT_API_VERSION,
    DEFAULT_BASE_URLS,
    KEY_OPTIONAL,
    OPENAI_WIRE,
)
from pia_server.auth.oidc import default_issuer
from pia_server.core.config import AiProviderSettings, OAuthProviderSettings, Settings
from pia_server.core.database import build_engine
from pia_server.core.migrations import expected_heads

Status = Literal["ok", "warn", "FAIL", "skip"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "FAIL", "skip")

# Clock skew against the database server: tokens and sync timestamps tolerate a little.
CLOCK_WARN_SECONDS = 2.0
CLOCK_FAIL_SECONDS = 30.0
_MAX_DETAIL = 200


@dataclass(frozen=True)
class Check:
    status: Status
    name: str
    message: str
    advice: str = ""


def format_check(check: Check) -> str:
    line = f"{check.status:<4}  {check.name}: {check.message}"
    if check.advice and check.status in ("warn", "FAIL"):
        line += f" -> {check.advice}"
    return line


def summary(checks: list[Check]) -> str:
    counts = {status: sum(1 for c in checks if c.status == status) for status in STATUSES}
    return (
        f"{counts['ok']} ok, {counts['warn']} warning{'' if counts['warn'] == 1 else 's'}, "
        f"{counts['FAIL']} failed, "
        f"{counts['skip']} skipped"
    )


def exit_status(checks: list[Check]) -> int:
    """Non-zero when any check failed; warnings alone do not fail the run."""
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def _describe(exc: BaseException) -> str:
    # First line only: SQLAlchemy appends a "Background on this error" link on the next one.
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        detail = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        detail = f"cannot connect ({detail})"
    name = type(exc).__name__
    text_ = detail if detail.startswith(name) else f"{name}: {detail}"
    return text_[:_MAX_DETAIL]


def _secrets(settings: Settings) -> list[str]:
    """Every secret value the settings hold, to scrub from anything printed."""
    values = [settings.auth.jwt_secret, settings.sync.encryption_key]
    values.append(settings.auth.smtp.password)
    values += [p.client_secret for p in settings.auth.providers.values()]
    values += [p.resolved_api_key() for p in settings.ai.providers.values()]
    for url in (settings.database_url, settings.redis.url):
        if url:
            try:
                values.append(str(make_url(url).password or ""))
            except Exception:  # noqa: S112 - a URL that does not parse holds no password we know
                continue
    return [v for v in values if v and len(v) >= 4]


def _scrub(check: Check, secrets: list[str]) -> Check:
    message, advice = check.message, check.advice
    for secret in secrets:
        message = message.replace(secret, "***")
        advice = advice.replace(secret, "***")
    return replace(check, message=message, advice=advice)


def _is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------
# Configuration (no network)
# --------------------------------------------------------------------------------------


def config_checks(settings: Settings) -> list[Check]:
    checks = [Check("ok", "config", "settings are valid")]
    warn = checks.append
    if not settings.auth.jwt_secret and not settings.is_sqlite:
        warn(
            Check(
                "warn",
                "config auth.jwt_secret",
                "not set: the JWT secret is generated in this instance's data dir, so other "
                "instances on the same PostgreSQL reject its tokens",
                "set PIA_JWT_SECRET to the same long random value on every instance",
            )
        )
    elif settings.auth.jwt_secret and len(settings.auth.jwt_secret) < 32:
        warn(
            Check(
                "warn",
                "config auth.jwt_secret",
                f"only {len(settings.auth.jwt_secret)} characters long",
                "use at least 32 random characters (e.g. `openssl rand -base64 48`)",
            )
        )
    public = settings.server.public_url
    if not public:
        if not _is_loopback_host(settings.server.host):
            warn(
                Check(
                    "warn",
                    "config server.public_url",
                    "not set while serving on a non-loopback address",
                    "set PIA_PUBLIC_URL to the https:// address clients use",
                )
            )
    elif not public.startswith("https://") and not _is_loopback_host(
        urlsplit(public).hostname or ""
    ):
        warn(
            Check(
                "warn",
                "config server.public_url",
                f"{public} is not https: tokens and passwords would cross the network in clear",
                "serve through a TLS reverse proxy and set PIA_PUBLIC_URL to its https:// URL",
            )
        )
    if settings.auth.allow_registration:
        warn(
            Check(
                "warn",
                "config auth.allow_registration",
                "registration is open: anyone who reaches the server can create an account",
                "set [auth] allow_registration = false once your users exist",
            )
        )
    if settings.server.metrics_enabled:
        open_nets = [
            net
            for net in settings.server.metrics_allow
            if not ipaddress.ip_network(net, strict=False).is_loopback
        ]
        if open_nets:
            warn(
                Check(
                    "warn",
                    "config server.metrics_allow",
                    f"/metrics is readable from {', '.join(open_nets)}",
                    "restrict [server] metrics_allow to loopback or your monitoring host",
                )
            )
    wide_proxies = [
        net
        for net in settings.server.trusted_proxies
        if ipaddress.ip_network(net, strict=False).prefixlen == 0
    ]
    if wide_proxies:
        warn(
            Check(
                "warn",
                "config server.trusted_proxies",
                "every peer is trusted to set X-Forwarded-For, so anyone can pick the IP that "
                "rate limits and the audit log see",
                "list only your reverse proxy's address",
            )
        )
    if not settings.rate_limits.enabled:
        warn(
            Check(
                "warn",
                "config rate_limits.enabled",
                "rate limits are off: password guessing and floods are not slowed down",
                "set [rate_limits] enabled = true",
            )
        )
    if settings.ai.allow_anonymous:
        warn(
            Check(
                "warn",
                "config ai.allow_anonymous",
                "anyone who reaches the server can spend your AI provider budget",
                "set [ai] allow_anonymous = false unless the server is private",
            )
        )
    checks += _ai_reference_checks(settings)
    return checks


def _ai_reference_checks(settings: Settings) -> list[Check]:
    known = settings.ai.providers
    problems = []
    if settings.ai.default_provider and settings.ai.default_provider not in known:
        problems.append(f"ai.default_provider names {settings.ai.default_provider!r}")
    for mode, choice in settings.ai.modes.items():
        if choice.provider not in known:
            problems.append(f"ai.modes.{mode}.provider names {choice.provider!r}")
    if not problems:
        return []
    return [
        Check(
            "FAIL",
            "config ai",
            "; ".join(problems) + ", which is not under [ai.providers]",
            f"use one of: {', '.join(sorted(known)) or '(no providers configured)'}",
        )
    ]


def data_dir_check(settings: Settings) -> Check:
    data_dir = settings.server.data_dir
    if not data_dir.exists():
        return Check(
            "warn",
            "data_dir",
            f"{data_dir} does not exist yet",
            "pia-server serve creates it; check PIA_DATA_DIR if you expected data there",
        )
    if not os.access(data_dir, os.W_OK | os.X_OK):
        return Check(
            "FAIL",
            "data_dir",
            f"{data_dir} is not writable by this user",
            "run pia-server as the owner of the data dir, or fix its permissions",
        )
    loose = []
    for name in ("jwt-secret", "sync-key"):
        path = data_dir / name
        if path.is_file() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            loose.append(name)
    if loose:
        return Check(
            "warn",
            "data_dir",
            f"secret files readable by other users: {', '.join(loose)}",
            f"chmod 600 {' '.join(str(data_dir / n) for n in loose)}",
        )
    return Check("ok", "data_dir", f"{data_dir} is writable")


# --------------------------------------------------------------------------------------
# Database, migrations, clock
# --------------------------------------------------------------------------------------


def _current_heads(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


async def database_checks(settings: Settings, seconds: float) -> list[Check]:
    """``database``, ``migrations`` and ``clock``: the last two need the first."""
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    skipped = [
        Check("skip", "migrations", "database not reachable"),
        Check("skip", "clock", "database not reachable"),
    ]
    if settings.is_sqlite:
        path = make_url(settings.database_url).database or ""
        if path != ":memory:" and not await asyncio.to_thread(os.path.isfile, path):
            return [
                Check(
                    "warn",
                    "database",
                    f"no SQLite database at {path} yet",
                    "pia-server serve (or migrate) creates it; check PIA_DATA_DIR / "
                    "PIA_DATABASE_URL if you expected data there",
                ),
                *skipped[:1],
                Check("ok", "clock", "SQLite uses this machine's clock"),
            ]
    engine = build_engine(settings)
    try:
        try:
            async with asyncio.timeout(seconds):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                    heads = await conn.run_sync(_current_heads)
                    db_now: datetime | None = None
                    local_now = datetime.now(UTC)
                    if not settings.is_sqlite:
                        db_now = (await conn.execute(text("SELECT now()"))).scalar_one()
                        local_now = local_now + (datetime.now(UTC) - local_now) / 2
        except Exception as exc:
            advice = (
                "check [database] url (PIA_DATABASE_URL), that the server is running and "
                "reachable from here, and the credentials"
            )
            if isinstance(exc, sqlite3.DatabaseError) or "not a database" in str(exc):
                advice = "the file is damaged or not a database: restore it from a backup"
            return [Check("FAIL", "database", f"{shown}: {_describe(exc)}", advice), *skipped]
    finally:
        await engine.dispose()
    backend = "SQLite" if settings.is_sqlite else "PostgreSQL"
    checks = [Check("ok", "database", f"connected to {backend} at {shown}")]
    checks.append(_migration_check(heads))
    if db_now is None:
        checks.append(Check("ok", "clock", "SQLite uses this machine's clock"))
    else:
        checks.append(_clock_check(db_now, local_now))
    return checks


def _migration_check(heads: set[str]) -> Check:
    expected = expected_heads()
    if heads == expected:
        return Check("ok", "migrations", f"at head ({', '.join(sorted(heads))})")
    unknown = heads - expected
    if unknown:
        # Not behind: the database has revisions this code does not know (a newer version).
        from pia_server.ops.backup import known_revisions

        if known_revisions(sorted(unknown)):
            return Check(
                "FAIL",
                "migrations",
                f"the database has revisions this pia-server does not know: "
                f"{', '.join(sorted(unknown))}",
                "run the pia-server version that migrated it (or newer)",
            )
    if not heads:
        return Check(
            "warn",
            "migrations",
            "the database has no tables yet",
            "run pia-server migrate (serve does it at start)",
        )
    return Check(
        "warn",
        "migrations",
        f"pending: at {', '.join(sorted(heads))}, code has {', '.join(sorted(expected))}",
        "run pia-server migrate (serve does it at start)",
    )


def _clock_check(db_now: datetime, local_now: datetime) -> Check:
    skew = (local_now - db_now).total_seconds()
    direction = "ahead of" if skew > 0 else "behind"
    message = f"this machine is {abs(skew):.1f} s {direction} the database server"
    advice = "run NTP (e.g. systemd-timesyncd or chrony) on both machines"
    if abs(skew) >= CLOCK_FAIL_SECONDS:
        return Check("FAIL", "clock", message, advice)
    if abs(skew) >= CLOCK_WARN_SECONDS:
        return Check("warn", "clock", message, advice)
    return Check("ok", "clock", message)


# --------------------------------------------------------------------------------------
# Redis, OAuth providers, AI upstreams, public URL
# --------------------------------------------------------------------------------------


async def redis_check(settings: Settings, seconds: float) -> Check:
    if not settings.redis.url:
        return Check("skip", "redis", "not configured: rate limits are kept in this process")
    parts = urlsplit(settings.redis.url)
    shown = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    client = Redis.from_url(
        settings.redis.url, socket_timeout=seconds, socket_connect_timeout=seconds
    )
    try:
        async with asyncio.timeout(seconds):
            await client.ping()
    except Exception as exc:
        return Check(
            "FAIL",
            "redis",
            f"{shown}: {_describe(exc)}",
            "check [redis] url (PIA_REDIS_URL) and that Redis is running; unset it to keep rate "
            "limits in process (single instance only)",
        )
    finally:
        await client.aclose()
    return Check("ok", "redis", f"{shown} answers PING")


async def oauth_check(http: httpx.AsyncClient, name: str, provider: OAuthProviderSettings) -> Check:
    check_name = f"oauth {name}"
    if not provider.client_id:
        return Check(
            "FAIL",
            check_name,
            "client_id is empty",
            f"set [auth.providers.{name}] client_id from the provider's app registration",
        )
    if name == "entraid" and not provider.issuer and not provider.tenant_id:
        return Check(
            "FAIL", check_name, "tenant_id is empty", f"set [auth.providers.{name}] tenant_id"
        )
    url = f"{default_issuer(name, provider)}/.well-known/openid-configuration"
    advice = (
        f"check [auth.providers.{name}] issuer and that this machine can reach it (proxy, DNS, "
        "firewall)"
    )
    try:
        response = await http.get(url)
    except httpx.HTTPError as exc:
        return Check("FAIL", check_name, f"{url}: {_describe(exc)}", advice)
    if response.status_code != 200:
        return Check("FAIL", check_name, f"{url} answered {response.status_code}", advice)
    try:
        document: Any = response.json()
    except ValueError:
        return Check("FAIL", check_name, f"{url} did not answer JSON", advice)
    required = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
    missing = [key for key in required if not isinstance(document, dict) or key not in document]
    if missing:
        return Check("FAIL", check_name, f"discovery document lacks {', '.join(missing)}", advice)
    return Check("ok", check_name, f"discovery document at {url}")


def _ai_request(provider: AiProviderSettings, key: str) -> tuple[str, dict[str, str]]:
    """The cheapest authenticated request of each provider type: list the models."""
    base = (provider.base_url or DEFAULT_BASE_URLS.get(provider.type, "")).rstrip("/")
    if provider.type == "anthropic":
        base = base.removesuffix("/v1")
        return f"{base}/v1/models", {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}
    if provider.type == "azure-openai":
        version = provider.api_version or AZURE_DEFAULT_API_VERSION
        return f"{base}/openai/models?api-version={version}", {"api-key": key}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return f"{base}/models", headers


async def ai_check(http: httpx.AsyncClient, name: str, provider: AiProviderSettings) -> Check:
    check_name = f"ai {name}"
    section = f"[ai.providers.{name}]"
    key = provider.resolved_api_key()
    if not key and provider.type not in KEY_OPTIONAL:
        where = (
            f"the environment variable {provider.api_key_env} is empty"
            if provider.api_key_env
            else "no api_key or api_key_env"
        )
        return Check("FAIL", check_name, f"no API key: {where}", f"set {section} api_key_env")
    if not (provider.base_url or provider.type in DEFAULT_BASE_URLS):
        return Check(
            "FAIL",
            check_name,
            "base_url is empty",
            f"set {section} base_url (type {provider.type})",
        )
    url, headers = _ai_request(provider, key)
    try:
        response = await http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return Check(
            "FAIL",
            check_name,
            f"{url}: {_describe(exc)}",
            f"check {section} base_url and that this machine can reach it",
        )
    status = response.status_code
    if status in (401, 403):
        return Check(
            "FAIL",
            check_name,
            f"{url} rejected the API key ({status})",
            f"check {section} api_key / api_key_env",
        )
    if 200 <= status < 300:
        return Check("ok", check_name, f"{provider.type} at {url} answers")
    if status in (404, 405) and (provider.type in OPENAI_WIRE or provider.type == "azure-openai"):
        # Some compatible servers do not list models; they answered, so the address is right.
        return Check(
            "warn",
            check_name,
            f"{url} answered {status}: reachable, but it does not list models",
            "make sure base_url is the API root (for OpenAI-wire servers usually ending in /v1)",
        )
    return Check(
        "FAIL",
        check_name,
        f"{url} answered {status}",
        f"check {section} base_url and the provider's status page",
    )


async def public_url_check(http: httpx.AsyncClient, settings: Settings) -> Check:
    url = f"{settings.public_url}/healthz"
    where = "PIA_PUBLIC_URL" if settings.server.public_url else "host and port (no public_url)"
    advice = (
        f"is pia-server running and reachable at {settings.public_url}? check the reverse proxy, "
        f"DNS, TLS certificate and {where}"
    )
    try:
        response = await http.get(url)
    except httpx.HTTPError as exc:
        return Check("FAIL", "public_url", f"{url}: {_describe(exc)}", advice)
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "ok":
        return Check(
            "FAIL",
            "public_url",
            f"{url} answered {response.status_code}, not pia-server's health answer",
            advice,
        )
    return Check("ok", "public_url", f"{url} answers")


# --------------------------------------------------------------------------------------
# All together
# --------------------------------------------------------------------------------------


async def run_checks(settings: Settings, *, seconds: float = 5.0) -> list[Check]:
    """Run every check; the order of the result is stable (config first, network after)."""
    checks = config_checks(settings)
    checks.append(data_dir_check(settings))
    # No redirects: a discovery document or health answer should be where it is configured.
    async with httpx.AsyncClient(timeout=seconds, follow_redirects=False) as http:
        jobs: list[Awaitable[Check | list[Check]]] = [
            database_checks(settings, seconds),
            redis_check(settings, seconds),
        ]
        jobs += [oauth_check(http, n, p) for n, p in settings.auth.providers.items()]
        jobs += [ai_check(http, n, p) for n, p in settings.ai.providers.items()]
        jobs.append(public_url_check(http, settings))
        results = await asyncio.gather(*(_guarded(job) for job in jobs))
    for result in results:
        checks += result if isinstance(result, list) else [result]
    secrets = _secrets(settings)
    return [_scrub(check, secrets) for check in checks]


async def _guarded(job: Awaitable[Check | list[Check]]) -> Check | list[Check]:
    try:
        return await job
    except Exception as exc:  # a bug in one check must not hide the others
        return Check("FAIL", "doctor", f"a check crashed: {_describe(exc)}")
