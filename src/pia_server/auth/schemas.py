"""Auth wire DTOs (camelCase out, any casing in)."""

from __future__ import annotations

from pydantic import Field

from pia_server.core.wire import WireModel, WireTime


class RegisterRequest(WireModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    display_name: str | None = Field(default=None, max_length=200)


class RegisterResponse(WireModel):
    success: bool
    message: str
    requires_email_verification: bool = False


class LocalLoginRequest(WireModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class LoginUser(WireModel):
    id: str
    email: str
    display_name: str | None
    provider: str
    requires_business_profile: bool = False


class LocalLoginResponse(WireModel):
    access_token: str
    refresh_token: str
    expires_in: int
    user: LoginUser


class RefreshRequest(WireModel):
    refresh_token: str = Field(max_length=512)


class TokenResponse(WireModel):
    access_token: str
    refresh_token: str
    expires_in: int


class ForgotPasswordRequest(WireModel):
    email: str = Field(max_length=320)


class ForgotPasswordResponse(WireModel):
    success: bool = True
    message: str


class ResetPasswordRequest(WireModel):
    token: str = Field(max_length=512)
    email: str = Field(max_length=320)
    new_password: str = Field(max_length=1024)


class ResetPasswordResponse(WireModel):
    success: bool = True
    message: str


class MeResponse(WireModel):
    id: str
    email: str
    display_name: str
    provider: str
    created_at: WireTime
    requires_business_profile: bool = False
