"""``pia-server users create|list|disable|reset-link``: account administration from a shell."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pia_server.core.config import Settings
from pia_server.core.errors import ApiError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    users = subparsers.add_parser("users", help="manage user accounts")
    users.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    sub = users.add_subparsers(dest="users_command", required=True)

    create = sub.add_parser("create", help="create a local account")
    create.add_argument("--email", required=True)
    create.add_argument(
        "--password", help="the password (omit to be asked; or set PIA_NEW_PASSWORD)"
    )
    create.add_argument("--name", default=None, help="display name")
    create.set_defaults(handler=cmd_create)

    listing = sub.add_parser("list", help="list every account")
    listing.set_defaults(handler=cmd_list)

    disable = sub.add_parser("disable", help="disable an account (its tokens stop working)")
    disable.add_argument("email")
    disable.set_defaults(handler=cmd_disable)

    enable = sub.add_parser("enable", help="enable a disabled account again")
    enable.add_argument("email")
    enable.set_defaults(handler=cmd_enable)

    reset = sub.add_parser("reset-link", help="print a password-reset link for an account")
    reset.add_argument("email")
    reset.set_defaults(handler=cmd_reset_link)


def _run(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    async def main() -> int:
        from pia_server.auth.mailer import build_mailer
        from pia_server.auth.oidc import Providers
        from pia_server.auth.passwords import Passwords
        from pia_server.auth.service import AuthService
        from pia_server.auth.tokens import AccessTokens
        from pia_server.core.database import Database

        if settings.is_sqlite:
            # The embedded database may not exist yet on a fresh install.
            from pia_server.core.migrations import migrate

            await migrate(settings)
        db = Database(settings)
        providers = Providers(settings.auth)
        # The CLI never issues access tokens; a throwaway key keeps the service whole.
        tokens = AccessTokens(secrets.token_urlsafe(32))
        service = AuthService(
            settings,
            db,
            tokens,
            Passwords(settings.auth),
            providers,
            build_mailer(settings.auth.smtp),
        )
        try:
            return await work(service)
        finally:
            await providers.close()
            await db.dispose()

    return asyncio.run(main())


def cmd_create(settings: Settings, args: argparse.Namespace) -> int:
    import os

    password = args.password or os.environ.get("PIA_NEW_PASSWORD") or ""
    if not password:
        password = getpass.getpass("Password: ")

    async def work(service: Any) -> int:
        try:
            user = await service.create_local_user(args.email, password, args.name)
        except ApiError as exc:
            print(f"pia-server: {exc.message}", file=sys.stderr)
            return 1
        print(f"created {user.email} ({user.id})")
        return 0

    return _run(settings, work)


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    from pia_server.core.wire import format_timestamp

    async def work(service: Any) -> int:
        users = await service.list_users()
        print(f"{'ID':36}  {'EMAIL':32}  {'PROVIDER':9}  {'STATUS':8}  CREATED")
        for user in users:
            status = "disabled" if user.disabled else "active"
            created = format_timestamp(user.created_at)[:19] + "Z"
            print(f"{user.id:36}  {user.email:32}  {user.provider:9}  {status:8}  {created}")
        return 0

    return _run(settings, work)


def _set_disabled(settings: Settings, email: str, disabled: bool) -> int:
    async def work(service: Any) -> int:
        user = await service.set_disabled(email, disabled)
        if user is None:
            print(f"pia-server: no account with the email {email}", file=sys.stderr)
            return 1
        print(f"{'disabled' if disabled else 'enabled'} {user.email} ({user.id})")
        return 0

    return _run(settings, work)


def cmd_disable(settings: Settings, args: argparse.Namespace) -> int:
    return _set_disabled(settings, args.email, True)


def cmd_enable(settings: Settings, args: argparse.Namespace) -> int:
    return _set_disabled(settings, args.email, False)


def cmd_reset_link(settings: Settings, args: argparse.Namespace) -> int:
    async def work(service: Any) -> int:
        link = await service.create_reset_link(args.email)
        if link is None:
            print(f"pia-server: no active account with the email {args.email}", file=sys.stderr)
            return 1
        minutes = settings.auth.reset_token_minutes
        print(f"Reset link (valid {minutes} minutes, works once):\n{link}")
        return 0

    return _run(settings, work)
