"""``pia-server backup PATH``, ``restore PATH`` and ``doctor``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from pia_server.core.config import Settings


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    from pia_server.ops.backup import BackupError, backup

    try:
        result = backup(settings, Path(args.path), overwrite=args.force)
    except BackupError as exc:
        print(f"pia-server backup: {exc}", file=sys.stderr)
        return 1
    manifest = result.manifest
    rows = sum(manifest["row_counts"].values())
    print(
        f"backup written to {result.path} ({manifest['backend']}, "
        f"{len(manifest['row_counts'])} tables, {rows} rows, "
        f"revisions {', '.join(manifest['alembic_revisions']) or 'none'})"
    )
    print("it contains secrets (file mode 0600): store it as carefully as the server itself")
    if manifest["secrets_in_config"]:
        print(
            "not in the backup, keep them with it: "
            + ", ".join(manifest["secrets_in_config"])
            + " (set in the configuration)"
        )
    return 0


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    from pia_server.ops.backup import BackupError, restore

    try:
        result = restore(settings, Path(args.path), force=args.force)
    except BackupError as exc:
        print(f"pia-server restore: {exc}", file=sys.stderr)
        return 1
    manifest = result.manifest
    print(
        f"restored the backup of {manifest['created_at']} into {result.target} "
        f"(revisions {', '.join(manifest['alembic_revisions']) or 'none'})"
    )
    if result.secrets:
        print(f"restored secrets into the data dir: {', '.join(result.secrets)}")
    if manifest["secrets_in_config"]:
        print(
            "the backup's deployment set "
            + ", ".join(manifest["secrets_in_config"])
            + " in its configuration: set the same values here"
        )
    print("start the server with: pia-server serve")
    return 0


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from pia_server.ops.doctor import exit_status, format_check, run_checks, summary

    # Alembic (dialect) and httpx (every request) log at INFO: keep the report readable.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    checks = asyncio.run(run_checks(settings, seconds=args.timeout))
    for check in checks:
        print(format_check(check))
    print(summary(checks))
    return exit_status(checks)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    backup = subparsers.add_parser(
        "backup", help="write a backup archive (database and data-dir secrets) to PATH"
    )
    backup.add_argument("path", help="archive file to write, or a directory to write it into")
    backup.add_argument("--force", action="store_true", help="replace PATH if it exists")
    backup.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    backup.set_defaults(handler=cmd_backup)

    restore = subparsers.add_parser(
        "restore", help="restore a backup archive into this deployment (server stopped)"
    )
    restore.add_argument("path", help="archive written by pia-server backup")
    restore.add_argument(
        "--force", action="store_true", help="replace a database that already holds data"
    )
    restore.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    restore.set_defaults(handler=cmd_restore)

    doctor = subparsers.add_parser(
        "doctor", help="check the configuration and everything the server depends on"
    )
    doctor.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per network check (default 5)"
    )
    doctor.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    doctor.set_defaults(handler=cmd_doctor)
