"""Auth errors, in the shared error shape."""

from __future__ import annotations

from pia_server.core.errors import ApiError


def invalid_token(code: str, message: str, *, missing: bool = False) -> ApiError:
    """401 ``invalid_token`` or ``token_expired`` with the RFC 6750 challenge header."""
    header = "Bearer" if missing else f'Bearer error="invalid_token", error_description="{code}"'
    return ApiError(401, code, message, headers={"WWW-Authenticate": header})


def invalid_credentials() -> ApiError:
    return ApiError(401, "invalid_credentials", "The email or password is not correct.")


def account_locked(retry_after: int) -> ApiError:
    minutes = max(1, (retry_after + 59) // 60)
    return ApiError(
        429,
        "account_locked",
        f"Too many failed sign-ins for this email; try again in {minutes} minutes.",
        extra={"retryAfter": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def account_disabled() -> ApiError:
    return ApiError(403, "account_disabled", "This account is disabled.")


def invalid_refresh_token(code: str = "invalid_refresh_token") -> ApiError:
    # 401 tells the client to sign out: the token can never work again.
    messages = {
        "invalid_refresh_token": "The refresh token is not valid.",
        "refresh_token_expired": "The refresh token has expired; sign in again.",
        "refresh_token_reused": "The refresh token was already used; sign in again.",
    }
    return ApiError(401, code, messages.get(code, "The refresh token is not valid."))


def registration_disabled() -> ApiError:
    return ApiError(403, "registration_disabled", "Registration is switched off on this server.")


def email_taken() -> ApiError:
    return ApiError(409, "email_taken", "An account with this email already exists.")


def invalid_reset_token() -> ApiError:
    return ApiError(400, "invalid_reset_token", "This reset link is not valid or has expired.")


def field_error(field: str, message: str) -> ApiError:
    return ApiError(
        400,
        "validation_failed",
        f"The request is not valid ({field}: {message})",
        extra={"errors": [{"field": field, "message": message}]},
    )


def provider_not_configured(provider: str) -> ApiError:
    return ApiError(
        400, "provider_not_configured", f"Sign-in with {provider} is not configured on this server."
    )


def unsupported_provider() -> ApiError:
    return ApiError(
        400, "unsupported_provider", "provider must be one of google, microsoft, entraid."
    )
