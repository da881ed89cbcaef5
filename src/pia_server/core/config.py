"""The one typed settings object: an optional TOML file, overridden by ``PIA_*`` variables.

Every setting is documented in ``docs/configuration.md``. A setting that is wrong raises
:class:`ConfigError` with a message naming the setting and what is allowed; the CLI prints it
and exits, never with a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic import ValidationInfo as _ValidationInfo

RATE_LIMIT_POLICIES = ("auth", "sync", "global", "ai")


class ConfigError(Exception):
    """A setting that cannot be used; the message names it and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str = ""
    data_dir: Path = Path("./data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    workers: int = Field(1, ge=1, le=64)
    server: Literal["uvicorn", "granian"] = "uvicorn"
    # Peers whose X-Forwarded-For is believed (a reverse proxy); empty means none.
    trusted_proxies: list[str] = []
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_inflated_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    metrics_enabled: bool = True
    metrics_allow: list[str] = ["127.0.0.1/32", "::1/128"]

    @field_validator("trusted_proxies", "metrics_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from exc
        return value

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class DatabaseSettings(_Section):
    # Empty means SQLite at <data_dir>/pia.db.
    url: str = ""
    pool_size: int = Field(10, ge=1, le=200)
    max_overflow: int = Field(10, ge=0, le=200)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    statement_timeout_seconds: float = Field(30.0, gt=0)
    # PostgreSQL only: the schema (search_path) holding pia-server's tables.
    schema_name: str = Field("", alias="schema")
    echo: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("url")
    @classmethod
    def _driver(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value


class RedisSettings(_Section):
    # Empty: rate limits and shared state stay in this process.
    url: str = ""
    socket_timeout_seconds: float = Field(1.0, gt=0)
    # After a Redis failure, how long to serve from the in-process fallback before retrying.
    retry_after_seconds: float = Field(5.0, gt=0)
    # Prefix of every key pia-server writes, so that deployments (or tests) can share a Redis.
    key_prefix: str = "pia"

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class OAuthProviderSettings(_Section):
    client_id: str = ""
    client_secret: str = ""
    # Empty: the provider's real issuer (Google, Microsoft common, Entra ID from tenant_id).
    issuer: str = ""
    tenant_id: str = ""
    scopes: str = "openid email profile"


class SmtpSettings(_Section):
    host: str = ""
    port: int = Field(587, ge=1, le=65535)
    username: str = ""
    password: str = ""
    starttls: bool = True
    from_address: str = ""


class AuthSettings(_Section):
    # Empty: generated once into <data_dir>/jwt-secret (mode 0600).
    jwt_secret: str = ""
    # The client refreshes after 14 minutes: keep 900 or more outside of tests.
    access_token_ttl_seconds: int = Field(900, ge=1, le=86_400)
    # Clock skew forgiven on expiry; the issue caps it at 30 s.
    access_token_leeway_seconds: int = Field(30, ge=0, le=30)
    refresh_token_ttl_days: int = Field(30, ge=1, le=365)
    max_refresh_tokens: int = Field(10, ge=1, le=1000)
    refresh_reuse_grace_seconds: int = Field(30, ge=0, le=300)
    allow_registration: bool = True
    password_min_length: int = Field(10, ge=8, le=128)
    lockout_failures: int = Field(6, ge=1, le=100)
    lockout_minutes: int = Field(15, ge=1, le=1440)
    reset_token_minutes: int = Field(30, ge=5, le=1440)
    redirect_uri_allowlist: list[str] = []
    providers: dict[Literal["google", "microsoft", "entraid"], OAuthProviderSettings] = {}
    smtp: SmtpSettings = SmtpSettings()
    # Argon2id cost (argon2-cffi's defaults); lower only for tests.
    argon2_time_cost: int = Field(3, ge=1, le=20)
    argon2_memory_kib: int = Field(65_536, ge=8, le=4_194_304)
    argon2_parallelism: int = Field(4, ge=1, le=64)
    # OAuth state/nonce/PKCE lifetime, and how long provider discovery documents are cached.
    login_state_minutes: int = Field(10, ge=1, le=60)
    discovery_cache_seconds: int = Field(3600, ge=0, le=86_400)

    @field_validator("providers")
    @classmethod
    def _entra_tenant(
        cls, value: dict[str, OAuthProviderSettings]
    ) -> dict[str, OAuthProviderSettings]:
        entra = value.get("entraid")
        if entra is not None and entra.client_id and not (entra.tenant_id or entra.issuer):
            raise ValueError("entraid needs tenant_id (your directory's id or domain)")
        return value


class RateLimitSettings(_Section):
    enabled: bool = True
    strategy: Literal["moving-window", "sliding-window-counter", "fixed-window"] = "moving-window"
    auth: str = "20/minute"
    sync: str = "30/minute"
    global_: str = Field("300/minute", alias="global")
    ai: str = "30/minute"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("auth", "sync", "global_", "ai")
    @classmethod
    def _limit(cls, value: str, info: _ValidationInfo) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a rate limit; write e.g. '30/minute' or '10 per second'"
            ) from exc
        return value

    def policy(self, name: str) -> str:
        return self.global_ if name == "global" else str(getattr(self, name))


class SyncSettings(_Section):
    conflict_strategy: Literal["last-write-wins", "server-wins"] = "last-write-wins"
    pull_overlap_seconds: int = Field(300, ge=0, le=86_400)
    max_page_size: int = Field(500, ge=1, le=500)
    # base64 of 32 bytes for provider API keys at rest; empty: generated into the data dir.
    encryption_key: str = ""

    @field_validator("encryption_key")
    @classmethod
    def _key(cls, value: str) -> str:
        if value:
            from pia_server.sync.keys import decode_key

            decode_key(value)  # raises ValueError naming what is wrong
        return value


class QuotaSettings(_Section):
    max_records_per_type: int = Field(10_000, ge=1)
    # Per-type overrides, e.g. {sessions = 20000}.
    records_per_type: dict[str, int] = {}
    max_record_bytes: int = Field(1024 * 1024, ge=1024)
    max_total_bytes: int = Field(100 * 1024 * 1024, ge=1024)


class AiProviderSettings(_Section):
    type: Literal[
        "openai",
        "azure-openai",
        "openrouter",
        "mistral",
        "ollama",
        "openai-compatible",
        "anthropic",
    ]
    base_url: str = ""
    api_key: str = ""
    api_key_env: str = ""
    model: str = ""
    timeout_seconds: float = Field(60.0, gt=0, le=3600)
    max_output_tokens: int = Field(2048, ge=1, le=1_000_000)
    deployment: str = ""
    api_version: str = ""

    def resolved_api_key(self) -> str:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "")
        return ""


class AiModeSettings(_Section):
    provider: str
    model: str = ""


class AiSettings(_Section):
    default_provider: str = ""
    allow_anonymous: bool = False
    max_text_length: int = Field(10_000, ge=1)
    user_tokens_per_hour: int = Field(200_000, ge=0)
    user_tokens_per_day: int = Field(1_000_000, ge=0)
    anonymous_tokens_per_hour: int = Field(20_000, ge=0)
    anonymous_tokens_per_day: int = Field(100_000, ge=0)
    providers: dict[str, AiProviderSettings] = {}
    modes: dict[Literal["optimize", "assistant", "research"], AiModeSettings] = {}


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    sync: SyncSettings = SyncSettings()
    quota: QuotaSettings = QuotaSettings()
    ai: AiSettings = AiSettings()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.server.data_dir / 'pia.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def public_url(self) -> str:
        return self.server.public_url or f"http://{self.server.host}:{self.server.port}"


# The fixed variable names of the issue, mapped to where they live in the TOML tree.
_ENV_NAMES: dict[str, tuple[str, str]] = {
    "PIA_DATA_DIR": ("server", "data_dir"),
    "PIA_HOST": ("server", "host"),
    "PIA_PORT": ("server", "port"),
    "PIA_PUBLIC_URL": ("server", "public_url"),
    "PIA_LOG_LEVEL": ("server", "log_level"),
    "PIA_LOG_FORMAT": ("server", "log_format"),
    "PIA_DATABASE_URL": ("database", "url"),
    "PIA_REDIS_URL": ("redis", "url"),
    "PIA_JWT_SECRET": ("auth", "jwt_secret"),
}
_SECTIONS = ("server", "database", "redis", "auth", "rate_limits", "sync", "quota", "ai")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``PIA_HOST`` style names, plus ``PIA_<SECTION>__<KEY>`` for every other scalar setting."""
    tree: dict[str, dict[str, Any]] = {}
    for name, (section, key) in _ENV_NAMES.items():
        if name in environ:
            tree.setdefault(section, {})[key] = environ[name]
    for name, value in environ.items():
        if not name.startswith("PIA_") or "__" not in name:
            continue
        section, _, key = name[4:].partition("__")
        section = section.lower()
        if section in _SECTIONS and key:
            tree.setdefault(section, {})[key.lower()] = _env_value(value)
    return tree


def _env_value(value: str) -> Any:
    # Lists and tables may be TOML inline values: PIA_SERVER__TRUSTED_PROXIES='["10.0.0.1"]'.
    if value[:1] in "[{":
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value
    return value


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Any) -> str:
    path = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "is not a known setting (see docs/configuration.md)"
    return f"setting `{path}`: {message}"


def load_settings(
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from (lowest first) defaults, the TOML file, the environment, ``overrides``."""
    env = os.environ if environ is None else environ
    path = config_path or env.get("PIA_CONFIG") or None
    tree: dict[str, Any] = {}
    if path:
        try:
            tree = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist (PIA_CONFIG / --config)") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    tree = _merge(tree, _env_overrides(env))
    if overrides:
        tree = _merge(tree, overrides)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(problems) from None
