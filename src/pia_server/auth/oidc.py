"""OpenID Connect sign-in with Google, Microsoft (any tenant) and Entra ID (one tenant).

Authlib's OAuth 2 client builds the authorization URL (S256 PKCE, state, nonce) and redeems the
code; joserfc checks the ID token against the provider's JWKS. This is the only module that
talks HTTP to identity providers (Authlib brings its own HTTP client, httpx2 or httpx).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from pia_server.core.config import AuthSettings, OAuthProviderSettings

log = structlog.get_logger("pia_server.auth.oidc")

PROVIDER_NAMES = ("google", "microsoft", "entraid")
GOOGLE_ISSUER = "https://accounts.google.com"
MICROSOFT_COMMON_ISSUER = "https://login.microsoftonline.com/common/v2.0"
ENTRA_ISSUER = "https://login.microsoftonline.com/{tenant}/v2.0"
# Microsoft's multi-tenant metadata publishes this placeholder in its issuer.
TENANT_PLACEHOLDER = "{tenantid}"
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]
CLOCK_SKEW_SECONDS = 120
HTTP_TIMEOUT_SECONDS = 10.0


class OidcError(Exception):
    """A sign-in that cannot finish; ``code`` goes back to the client in the redirect."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class IdentityClaims:
    provider: str
    subject: str
    email: str
    email_verified: bool
    name: str


def default_issuer(name: str, settings: OAuthProviderSettings) -> str:
    if settings.issuer:
        return settings.issuer.rstrip("/")
    if name == "google":
        return GOOGLE_ISSUER
    if name == "microsoft":
        return MICROSOFT_COMMON_ISSUER
    return ENTRA_ISSUER.format(tenant=settings.tenant_id)


def expected_issuer(provider: str, metadata_issuer: str, claims: dict[str, Any]) -> str:
    """The ``iss`` an ID token must carry.

    ``microsoft`` (the ``common`` endpoint) publishes a template issuer: the token's own ``tid``
    fills it in, so a token is only accepted with the issuer of the tenant it claims to be from.
    """
    if TENANT_PLACEHOLDER in metadata_issuer:
        if provider != "microsoft":
            raise OidcError("invalid_id_token", "The provider's issuer is a tenant template.")
        tid = claims.get("tid")
        if not isinstance(tid, str) or not tid or "/" in tid:
            raise OidcError("invalid_id_token", "The ID token names no tenant (tid).")
        return metadata_issuer.replace(TENANT_PLACEHOLDER, tid)
    return metadata_issuer


def check_id_token_claims(
    claims: dict[str, Any],
    *,
    provider: str,
    metadata_issuer: str,
    client_id: str,
    nonce: str,
    now: float | None = None,
) -> None:
    """Check ``iss``, ``aud``/``azp``, ``exp``, ``iat`` and ``nonce`` (the signature is done)."""
    now = time.time() if now is None else now
    if claims.get("iss") != expected_issuer(provider, metadata_issuer, claims):
        raise OidcError("invalid_id_token", "The ID token was issued by another issuer.")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise OidcError("invalid_id_token", "The ID token was issued for another application.")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise OidcError("invalid_id_token", "The ID token was issued for another application.")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + CLOCK_SKEW_SECONDS < now:
        raise OidcError("invalid_id_token", "The ID token has expired.")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and iat - CLOCK_SKEW_SECONDS > now:
        raise OidcError("invalid_id_token", "The ID token was issued in the future.")
    if claims.get("nonce") != nonce:
        raise OidcError("invalid_id_token", "The ID token does not belong to this sign-in (nonce).")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise OidcError("invalid_id_token", "The ID token names no subject.")


def identity_from_claims(provider: str, claims: dict[str, Any]) -> IdentityClaims:
    email = claims.get("email")
    verified = claims.get("email_verified") is True or claims.get("email_verified") == "true"
    if provider in ("microsoft", "entraid") and claims.get("xms_edov") in (True, "1", 1, "true"):
        # Entra's "email domain owner verified" optional claim.
        verified = True
    if not isinstance(email, str) or "@" not in email:
        # Microsoft work accounts often carry the address only as the sign-in name; it is not
        # a verified email, so it never links to an existing account.
        preferred = claims.get("preferred_username")
        email = preferred if isinstance(preferred, str) and "@" in preferred else ""
        verified = False
    name = claims.get("name")
    return IdentityClaims(
        provider=provider,
        subject=str(claims["sub"]),
        email=email.strip()[:320],
        email_verified=verified,
        name=name.strip()[:200] if isinstance(name, str) else "",
    )


class Provider:
    """One configured provider: its client, and its cached discovery document and keys."""

    def __init__(self, name: str, settings: OAuthProviderSettings, cache_seconds: int) -> None:
        self.name = name
        self.settings = settings
        self.issuer = default_issuer(name, settings)
        self._cache_seconds = cache_seconds
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0
        self._http = AsyncOAuth2Client(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def metadata(self) -> dict[str, Any]:
        fresh = time.monotonic() - self._metadata_at < self._cache_seconds
        if self._metadata is not None and fresh:
            return self._metadata
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            response = await self._http.request("GET", url, withhold_token=True)
            response.raise_for_status()
            document = response.json()
        except Exception as exc:  # any failure here means the provider is unusable
            log.warning("oidc_discovery_failed", provider=self.name, error=type(exc).__name__)
            raise OidcError(
                "provider_unavailable", "The sign-in provider could not be reached."
            ) from exc
        required = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
        if not isinstance(document, dict) or not all(
            isinstance(document.get(k), str) for k in required
        ):
            raise OidcError(
                "provider_unavailable", "The sign-in provider's metadata is incomplete."
            )
        self._metadata = document
        self._metadata_at = time.monotonic()
        return document

    async def _keys(self, jwks_uri: str, refresh: bool = False) -> KeySet:
        fresh = time.monotonic() - self._jwks_at < self._cache_seconds
        if self._jwks is not None and fresh and not refresh:
            return self._jwks
        try:
            response = await self._http.request("GET", jwks_uri, withhold_token=True)
            response.raise_for_status()
            keys = KeySet.import_key_set(response.json())
        except Exception as exc:
            log.warning("oidc_jwks_failed", provider=self.name, error=type(exc).__name__)
            raise OidcError(
                "provider_unavailable", "The sign-in provider's keys could not be fetched."
            ) from exc
        self._jwks = keys
        self._jwks_at = time.monotonic()
        return keys

    def _client(self, metadata: dict[str, Any], redirect_uri: str) -> AsyncOAuth2Client:
        methods = metadata.get("token_endpoint_auth_methods_supported")
        if not self.settings.client_secret:
            auth_method = "none"
        elif not isinstance(methods, list) or "client_secret_basic" in methods:
            auth_method = "client_secret_basic"
        else:
            auth_method = "client_secret_post"
        return AsyncOAuth2Client(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret or None,
            token_endpoint_auth_method=auth_method,
            scope=self.settings.scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT_SECONDS,
            follow_redirects=False,
        )

    async def authorization_url(
        self, *, state: str, nonce: str, code_verifier: str, redirect_uri: str
    ) -> str:
        metadata = await self.metadata()
        client = self._client(metadata, redirect_uri)
        try:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"],
                state=state,
                code_verifier=code_verifier,
                nonce=nonce,
            )
        finally:
            await client.aclose()
        return str(url)

    async def redeem(
        self, *, code: str, code_verifier: str, nonce: str, redirect_uri: str
    ) -> IdentityClaims:
        """Exchange the code, verify the ID token, and return who signed in."""
        metadata = await self.metadata()
        client = self._client(metadata, redirect_uri)
        try:
            token = await client.fetch_token(
                metadata["token_endpoint"], code=code, code_verifier=code_verifier
            )
        except Exception as exc:  # every token-endpoint failure is a failed login
            log.warning("oidc_code_exchange_failed", provider=self.name, error=type(exc).__name__)
            raise OidcError(
                "code_exchange_failed", "The sign-in provider did not accept the login."
            ) from exc
        finally:
            await client.aclose()
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            raise OidcError("invalid_id_token", "The sign-in provider sent no ID token.")
        claims = await self._verify_signature(id_token, metadata["jwks_uri"])
        check_id_token_claims(
            claims,
            provider=self.name,
            metadata_issuer=metadata["issuer"],
            client_id=self.settings.client_id,
            nonce=nonce,
        )
        return identity_from_claims(self.name, claims)

    async def _verify_signature(self, id_token: str, jwks_uri: str) -> dict[str, Any]:
        keys = await self._keys(jwks_uri)
        for attempt in range(2):
            try:
                return dict(jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS).claims)
            except (JoseError, ValueError, TypeError) as exc:
                if attempt == 0 and _maybe_unknown_key(exc):
                    # The provider may have rotated its keys since we cached them.
                    keys = await self._keys(jwks_uri, refresh=True)
                    continue
                raise OidcError(
                    "invalid_id_token", "The ID token's signature is not valid."
                ) from exc
        raise OidcError("invalid_id_token", "The ID token's signature is not valid.")


def _maybe_unknown_key(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "key" in text or "kid" in text


class Providers:
    """The providers that have a client id; the others are disabled."""

    def __init__(self, settings: AuthSettings) -> None:
        self._providers: dict[str, Provider] = {
            name: Provider(name, conf, settings.discovery_cache_seconds)
            for name, conf in settings.providers.items()
            if conf.client_id
        }

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    @property
    def enabled(self) -> list[str]:
        return sorted(self._providers)

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
