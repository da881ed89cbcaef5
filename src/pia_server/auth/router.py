"""Auth routes: OIDC sign-in, local accounts, token refresh/logout, /auth/me and the HTML pages."""

from __future__ import annotations

import html
import re
from importlib import resources

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from pia_server.auth import errors
from pia_server.auth.dependencies import CurrentUser
from pia_server.auth.mailer import build_mailer
from pia_server.auth.oidc import PROVIDER_NAMES, OidcError, Providers
from pia_server.auth.passwords import Passwords
from pia_server.auth.redirects import is_allowed_redirect_uri, with_query
from pia_server.auth.schemas import (
    ForgotPasswordRequest,
    ForgotPasswordResponse,
    LocalLoginRequest,
    LocalLoginResponse,
    LoginUser,
    MeResponse,
    RefreshRequest,
    RegisterRequest,
    RegisterResponse,
    ResetPasswordRequest,
    ResetPasswordResponse,
    TokenResponse,
)
from pia_server.auth.service import AuthService
from pia_server.auth.tokens import AccessTokens
from pia_server.core.context import AppContext, get_context
from pia_server.core.ratelimit import rate_limit
from pia_server.core.responses import model_response

router = APIRouter(tags=["auth"])
auth_limit = [Depends(rate_limit("auth"))]

LOGIN_COOKIE = "pia_login"
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{43}$")
# Pages and redirects that carry or lead to credentials: never cached, never leak a Referer.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}
_PAGE_HEADERS = {
    **_NO_STORE,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


async def startup(ctx: AppContext) -> None:
    settings = ctx.settings
    ctx.domains["auth"] = AuthService(
        settings,
        ctx.db,
        ctx.domain("access_tokens", AccessTokens),
        Passwords(settings.auth),
        Providers(settings.auth),
        build_mailer(settings.auth.smtp),
    )


async def shutdown(ctx: AppContext) -> None:
    service = ctx.domains.get("auth")
    if isinstance(service, AuthService):
        await service.drain()
        await service.providers.close()


def service_of(request: Request) -> AuthService:
    return get_context(request).domain("auth", AuthService)


# --- OpenID Connect -------------------------------------------------------------------------


@router.get(
    "/auth/login",
    dependencies=auth_limit,
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {"description": "To the identity provider (or back to redirect_uri with an error)"},
        400: {
            "description": "Bad redirect_uri (HTML page) or provider not configured (JSON)",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    },
)
async def login(request: Request, provider: str = "", redirect_uri: str = "") -> Response:
    """Start an OIDC sign-in: ``?provider=google|microsoft|entraid&redirect_uri=...``."""
    service = service_of(request)
    uris = request.query_params.getlist("redirect_uri")
    if len(uris) != 1 or not is_allowed_redirect_uri(
        uris[0], service.settings.auth.redirect_uri_allowlist
    ):
        # No redirect to an address we do not trust: an error page instead.
        return error_page(
            "This sign-in link is not valid",
            "The application asked to return to an address this server does not allow.",
        )
    redirect_uri = uris[0]
    if provider not in PROVIDER_NAMES:
        raise errors.unsupported_provider()
    if service.providers.get(provider) is None:
        raise errors.provider_not_configured(provider)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    # One random value per browser (reused by concurrent sign-ins), bound to each saved state.
    browser_value = cookie if _COOKIE_VALUE.match(cookie) else _new_browser_value()
    try:
        url = await service.start_login(provider, redirect_uri, browser_value)
    except OidcError as exc:
        return _redirect(with_query(redirect_uri, {"error": exc.code, "message": exc.message}))
    response = _redirect(url)
    response.set_cookie(
        LOGIN_COOKIE,
        browser_value,
        max_age=service.settings.auth.login_state_minutes * 60,
        path="/auth/callback",
        httponly=True,
        secure=service.settings.public_url.startswith("https://"),
        samesite="lax",
    )
    return response


@router.get(
    "/auth/callback",
    dependencies=auth_limit,
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {"description": "Back to the client's redirect_uri with tokens, or error+message"},
        400: {
            "description": "HTML error page when there is no redirect_uri to return to",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    },
)
async def callback(request: Request) -> Response:
    """Where the identity provider sends the browser back (never called by the client)."""
    params = request.query_params
    service = service_of(request)
    outcome = await service.finish_login(
        state=params.get("state"),
        code=params.get("code"),
        error=params.get("error"),
        error_description=params.get("error_description"),
        browser_value=request.cookies.get(LOGIN_COOKIE),
        origin=get_context(request).origin(request),
    )
    if outcome.redirect_uri is None:
        return error_page("Sign-in failed", outcome.params.get("message", "Sign-in failed."))
    return _redirect(with_query(outcome.redirect_uri, outcome.params))


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=302, headers=_NO_STORE)


def _new_browser_value() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def error_page(title: str, message: str, status: int = 400) -> HTMLResponse:
    body = _ERROR_TEMPLATE.format(title=html.escape(title), message=html.escape(message))
    return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)


_ERROR_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Pia</title><link rel="stylesheet" href="/auth/assets/auth.css"></head>
<body><main class="card"><h1>{title}</h1><p class="error" id="message">{message}</p>
<p>Close this window and start the sign-in again from the Pia app.</p></main></body></html>
"""


# --- tokens ---------------------------------------------------------------------------------


@router.post("/auth/refresh", dependencies=auth_limit, response_model=TokenResponse)
async def refresh(body: RefreshRequest, request: Request) -> Response:
    """Rotate a refresh token: a new access token and a new refresh token."""
    pair = await service_of(request).refresh(
        body.refresh_token, get_context(request).origin(request)
    )
    return model_response(
        TokenResponse(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
        ),
        headers=_NO_STORE,
    )


@router.post("/auth/logout", dependencies=auth_limit, status_code=204)
async def logout(body: RefreshRequest, request: Request) -> Response:
    """Revoke the refresh token's whole family; 204 also for an unknown token."""
    await service_of(request).logout(body.refresh_token, get_context(request).origin(request))
    return Response(status_code=204)


@router.get("/auth/me", dependencies=[Depends(rate_limit("global"))], response_model=MeResponse)
async def me(user: CurrentUser) -> Response:
    return model_response(
        MeResponse(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            provider=user.provider,
            created_at=user.created_at,
        )
    )


# --- local accounts -------------------------------------------------------------------------


@router.post("/auth/login/local", dependencies=auth_limit, response_model=LocalLoginResponse)
async def login_local(body: LocalLoginRequest, request: Request) -> Response:
    session = await service_of(request).login_local(
        body.email, body.password, get_context(request).origin(request)
    )
    user = session.user
    return model_response(
        LocalLoginResponse(
            access_token=session.tokens.access_token,
            refresh_token=session.tokens.refresh_token,
            expires_in=session.tokens.expires_in,
            user=LoginUser(
                id=user.id, email=user.email, display_name=user.display_name, provider="local"
            ),
        ),
        headers=_NO_STORE,
    )


@router.post(
    "/auth/register", dependencies=auth_limit, status_code=201, response_model=RegisterResponse
)
async def register(body: RegisterRequest, request: Request) -> Response:
    await service_of(request).register(
        body.email, body.password, body.display_name, get_context(request).origin(request)
    )
    return model_response(
        RegisterResponse(
            success=True,
            message="Your account is ready. Sign in from the Pia app with this email and password.",
            requires_email_verification=False,
        ),
        status_code=201,
    )


@router.post(
    "/auth/forgot-password",
    dependencies=auth_limit,
    status_code=202,
    response_model=ForgotPasswordResponse,
)
async def forgot_password(body: ForgotPasswordRequest, request: Request) -> Response:
    """Always 202: the answer never tells whether the email has an account."""
    service = service_of(request)
    await service.forgot_password(body.email)
    if service.mailer is not None:
        message = "If an account exists for this email, a reset link is on its way."
    else:
        message = (
            "If an account exists for this email, ask this server's administrator for a "
            "reset link (pia-server users reset-link)."
        )
    return model_response(ForgotPasswordResponse(message=message), status_code=202)


@router.post("/auth/reset-password", dependencies=auth_limit, response_model=ResetPasswordResponse)
async def reset_password(body: ResetPasswordRequest, request: Request) -> Response:
    await service_of(request).reset_password(
        body.token, body.email, body.new_password, get_context(request).origin(request)
    )
    return model_response(
        ResetPasswordResponse(
            message="Your password was changed. Sign in again in the Pia app on every device."
        )
    )


# --- HTML pages -----------------------------------------------------------------------------

_PAGES = {
    "register.html": "text/html; charset=utf-8",
    "forgot-password.html": "text/html; charset=utf-8",
    "reset-password.html": "text/html; charset=utf-8",
}
_ASSETS = {
    "auth.js": "text/javascript; charset=utf-8",
    "auth.css": "text/css; charset=utf-8",
}


def _static(name: str) -> bytes:
    return (resources.files("pia_server.auth") / "static" / name).read_bytes()


def _page_route(name: str) -> None:
    async def serve_page() -> Response:
        return Response(_static(name), media_type=_PAGES[name], headers=_PAGE_HEADERS)

    serve_page.__name__ = "page_" + name.replace("-", "_").replace(".", "_")
    router.add_api_route(f"/auth/{name}", serve_page, methods=["GET"], include_in_schema=False)


for _name in _PAGES:
    _page_route(_name)


@router.get("/auth/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        return Response(status_code=404)
    return Response(
        _static(name),
        media_type=_ASSETS[name],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
