"""The ``pia-server`` command: serve, migrate, version, and the commands each domain adds."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pia_server import __version__
from pia_server.core.config import ConfigError, Settings, load_settings
from pia_server.core.logging import configure_logging

# Modules that add subcommands: each has ``register(subparsers)``; the handlers they set take
# ``(settings, args)`` and return an exit status.
COMMAND_MODULES = ("pia_server.auth.cli", "pia_server.ops.cli")

Handler = Callable[[Settings, argparse.Namespace], int]


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    server: dict[str, Any] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None):
        server["port"] = args.port
    if server:
        overrides["server"] = server
    return load_settings(args.config, overrides=overrides)


def cmd_version(_settings: Settings, _args: argparse.Namespace) -> int:
    print(f"pia-server {__version__}")
    return 0


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from pia_server.core.migrations import migrate

    asyncio.run(migrate(settings))
    print("migrations applied")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from pia_server.core.migrations import migrate

    # SQLite is migrated on every start; on PostgreSQL too, under an advisory lock, so that
    # several instances starting together migrate once.
    asyncio.run(migrate(settings))
    if settings.server.server == "granian" or settings.server.workers > 1:
        return _serve_granian(settings, args)
    import uvicorn

    from pia_server.app import create_app
    from pia_server.core.heap import freeze_startup_objects

    app = create_app(settings)
    freeze_startup_objects()
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0


def _serve_granian(settings: Settings, args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    # Workers are separate processes: they rebuild the settings from the same file and
    # environment, so hand the command-line overrides over as environment variables.
    if args.config:
        os.environ["PIA_CONFIG"] = str(args.config)
    os.environ["PIA_HOST"] = settings.server.host
    os.environ["PIA_PORT"] = str(settings.server.port)
    Granian(
        "pia_server.asgi:app",
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.ASGI,
        workers=settings.server.workers,
    ).serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pia-server", description=__doc__)
    parser.add_argument("--config", help="TOML config file (or PIA_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate, then serve HTTP")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    migrate.set_defaults(handler=cmd_migrate)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(handler=cmd_version)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        settings = _settings(args)
        configure_logging(settings.server.log_level, settings.server.log_format)
        return handler(settings, args)
    except ConfigError as exc:
        print(f"pia-server: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
