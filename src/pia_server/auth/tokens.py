"""Access tokens: JWT HS256, ``iss`` pia-server, ``aud`` pia-client, 15 minutes by default."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

ISSUER = "pia-server"
AUDIENCE = "pia-client"
LEEWAY_SECONDS = 30
# Verified tokens remembered per instance: a client sends the same token on every request for
# its lifetime, and checking its signature and claims again costs more than the sync status
# queries. Only a token that verified can get in (the key is the whole string), and expiry is
# checked on every use. Past the bound the oldest entries go first.
_VERIFIED_CACHE_SIZE = 8192


class TokenError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    issued_at: int
    expires_at: int
    token_id: str


class AccessTokens:
    """Issues and verifies access tokens with one HS256 key."""

    def __init__(
        self, secret: str, ttl_seconds: int = 900, leeway_seconds: int = LEEWAY_SECONDS
    ) -> None:
        self._key = OctKey.import_key(secret.encode("utf-8"))
        self.ttl_seconds = ttl_seconds
        self.leeway_seconds = leeway_seconds
        self._registry = jwt.JWTClaimsRegistry(
            leeway=leeway_seconds,
            iss={"essential": True, "value": ISSUER},
            aud={"essential": True, "value": AUDIENCE},
            sub={"essential": True},
            exp={"essential": True},
        )
        self._verified: dict[str, AccessClaims] = {}

    def issue(self, user_id: str, now: int | None = None) -> str:
        issued = int(time.time()) if now is None else now
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "iat": issued,
            "exp": issued + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, self._key)

    def verify(self, token: str) -> AccessClaims:
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at + self.leeway_seconds < time.time():
                del self._verified[token]
                raise TokenError("token_expired", "The access token has expired.")
            return cached
        claims = self._verify_signed(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
        return claims

    def _verify_signed(self, token: str) -> AccessClaims:
        try:
            # Only HS256: "none" and every other algorithm are refused here.
            decoded = jwt.decode(token, self._key, algorithms=["HS256"])
        except (JoseError, ValueError, TypeError) as exc:
            raise TokenError("invalid_token", "The access token is not valid.") from exc
        claims = decoded.claims
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp + self.leeway_seconds < time.time():
            raise TokenError("token_expired", "The access token has expired.")
        try:
            self._registry.validate(claims)
        except JoseError as exc:
            raise TokenError("invalid_token", "The access token is not valid.") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise TokenError("invalid_token", "The access token is not valid.")
        try:
            user_id = str(uuid.UUID(sub))
        except ValueError as exc:
            raise TokenError("invalid_token", "The access token is not valid.") from exc
        return AccessClaims(
            user_id=user_id,
            issued_at=int(claims.get("iat", 0)),
            expires_at=int(exp) if isinstance(exp, int | float) else 0,
            token_id=str(claims.get("jti", "")),
        )
