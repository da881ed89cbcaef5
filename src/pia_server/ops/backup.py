"""``pia-server backup`` and ``restore``: one archive holding the database and the data-dir secrets.

The archive (a gzipped tar, written with mode 0600) holds:

* ``manifest.json``: format, pia-server version, time, backend, schema, Alembic revisions, the row
  count of every table at the moment of the snapshot, and the SHA-256 of the database member;
* ``pia.db`` (SQLite: a consistent online copy made with SQLite's backup API, so the server
  keeps running and writing) or ``pia.pgdump`` (PostgreSQL: ``pg_dump -Fc`` of the snapshot the
  row counts were taken in, shared through ``pg_export_snapshot``);
* ``secrets/<name>``: the secrets the server keeps in its data dir (``jwt-secret``,
  ``sync-key``). Without them a restored server would reject every issued token and could not
  decrypt provider API keys stored at rest.

Restore stages everything, checks it (checksum, ``PRAGMA integrity_check``, revisions, row
counts) and only then replaces anything: a failure leaves the target as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from pia_server import __version__
from pia_server.core.config import Settings
from pia_server.core.database import build_engine
from pia_server.core.migrations import alembic_config

FORMAT = "pia-server-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SQLITE_MEMBER = "pia.db"
PG_MEMBER = "pia.pgdump"
SECRETS_DIR = "secrets"
# Secrets generated into the data dir when the configuration does not set them.
SECRET_FILES = ("jwt-secret", "sync-key")
_CONFIG_SECRETS = {"jwt-secret": "auth.jwt_secret", "sync-key": "sync.encryption_key"}
# Query parameters of an asyncpg URL that libpq understands as they are.
_LIBPQ_PARAMS = frozenset(
    {"sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "target_session_attrs"}
)
_CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: dict[str, Any]


@dataclass(frozen=True)
class RestoreResult:
    target: str
    manifest: dict[str, Any]
    secrets: list[str]


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def sqlite_file(settings: Settings) -> Path:
    url = make_url(settings.database_url)
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(url.database)


def libpq_connection(settings: Settings) -> tuple[str, dict[str, str]]:
    """The settings' asyncpg URL as a libpq URL without the password, and the environment.

    The password goes into ``PGPASSWORD`` so that it never shows on a command line (``ps``).
    """
    url = make_url(settings.database_url)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    query: dict[str, str] = {}
    for key, value in url.query.items():
        item = value if isinstance(value, str) else value[-1]
        if key == "ssl":
            # asyncpg's ``ssl=require`` is libpq's ``sslmode=require``.
            query["sslmode"] = "require" if item.lower() in ("true", "1") else item
        elif key in _LIBPQ_PARAMS:
            query[key] = item
    query["connect_timeout"] = str(max(2, int(settings.database.connect_timeout_seconds)))
    # Built by hand: SQLAlchemy's URL.set() treats password=None as "unchanged".
    netloc = quote(url.username or "", safe="")
    netloc = f"{netloc}@" if netloc else ""
    host = url.host or ""
    netloc += f"[{host}]" if ":" in host else host
    netloc += f":{url.port}" if url.port else ""
    database = quote(url.database or "", safe="")
    return f"postgresql://{netloc}/{database}?{urlencode(query)}", env


def known_revisions(revisions: list[str]) -> list[str]:
    """The revisions this pia-server does not know (a backup made by a newer version)."""
    script = ScriptDirectory.from_config(alembic_config())
    unknown = []
    for rev in revisions:
        try:
            if script.get_revision(rev) is None:
                unknown.append(rev)
        except CommandError:
            unknown.append(rev)
    return unknown


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _secret_files(settings: Settings) -> list[tuple[str, Path]]:
    data_dir = settings.server.data_dir
    return [(name, data_dir / name) for name in SECRET_FILES if (data_dir / name).is_file()]


def _secrets_in_config(settings: Settings) -> list[str]:
    names = []
    if settings.auth.jwt_secret:
        names.append(_CONFIG_SECRETS["jwt-secret"])
    if settings.sync.encryption_key:
        names.append(_CONFIG_SECRETS["sync-key"])
    return names


@contextlib.contextmanager
def _scratch_dir(near: Path) -> Iterator[Path]:
    """A private (0700) scratch directory on the same file system as ``near``."""
    path = Path(tempfile.mkdtemp(prefix=".pia-backup-", dir=near))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Backup
# --------------------------------------------------------------------------------------


def _destination(path: Path, overwrite: bool) -> Path:
    if path.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = path / f"pia-backup-{stamp}.tar.gz"
    if path.exists() and not overwrite:
        raise BackupError(f"{path} exists; choose another name or pass --force to replace it")
    if not path.parent.is_dir():
        raise BackupError(f"the directory {path.parent} does not exist")
    return path


def backup(settings: Settings, path: Path, *, overwrite: bool = False) -> BackupResult:
    """Write a backup archive of the running deployment to ``path`` (a file or a directory)."""
    dest = _destination(path, overwrite)
    with _scratch_dir(dest.parent) as scratch:
        if settings.is_sqlite:
            member = SQLITE_MEMBER
            details = _sqlite_snapshot(sqlite_file(settings), scratch / member)
        else:
            member = PG_MEMBER
            details = asyncio.run(_pg_snapshot(settings, scratch / member))
        secrets = _secret_files(settings)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "pia_server_version": __version__,
            "created_at": _now_iso(),
            "backend": "sqlite" if settings.is_sqlite else "postgresql",
            "schema": "" if settings.is_sqlite else settings.database.schema_name,
            "database_member": member,
            "sha256": _sha256(scratch / member),
            "secrets": [name for name, _ in secrets],
            "secrets_in_config": _secrets_in_config(settings),
            **details,
        }
        manifest_path = scratch / MANIFEST_NAME
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        files = [(MANIFEST_NAME, manifest_path), (member, scratch / member)]
        files += [(f"{SECRETS_DIR}/{name}", source) for name, source in secrets]
        _write_archive(dest, files)
    return BackupResult(dest, manifest)


def _write_archive(dest: Path, files: list[tuple[str, Path]]) -> None:
    # mkstemp creates the file with mode 0600: the archive holds secrets from the first byte.
    fd, partial = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                for arcname, source in files:
                    info = tar.gettarinfo(str(source), arcname)
                    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
                    with source.open("rb") as handle:
                        tar.addfile(info, handle)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(partial, 0o600)
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def _sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    ).fetchall()
    return [str(row[0]) for row in rows]


def _sqlite_facts(conn: sqlite3.Connection) -> dict[str, Any]:
    tables = _sqlite_tables(conn)
    counts = {
        name: int(conn.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()[0])  # noqa: S608
        for name in tables
        if name != "alembic_version"
    }
    revisions: list[str] = []
    if "alembic_version" in tables:
        revisions = sorted(
            str(row[0]) for row in conn.execute("SELECT version_num FROM alembic_version")
        )
    return {"alembic_revisions": revisions, "row_counts": counts}


def _integrity(conn: sqlite3.Connection) -> str:
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(row[0]) for row in rows)


def _sqlite_snapshot(source: Path, copy: Path) -> dict[str, Any]:
    if not source.is_file():
        raise BackupError(f"there is no SQLite database at {source}")
    # The backup API copies one consistent snapshot in a single step, under a read
    # transaction: in WAL mode the server's writers carry on meanwhile. A plain file copy
    # could catch the database file and its WAL at different moments.
    # Read-write only so that, when no server runs, closing cleans up the WAL as usual; the
    # backup itself never writes to the source.
    src = sqlite3.connect(source, timeout=30, isolation_level=None)
    dst = sqlite3.connect(copy, isolation_level=None)
    try:
        src.backup(dst)
        # A self-contained file: no WAL beside it.
        dst.execute("PRAGMA journal_mode=DELETE")
        check = _integrity(dst)
        if check != "ok":
            raise BackupError(f"the copy failed SQLite's integrity check: {check}")
        return _sqlite_facts(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {source} failed: {exc}") from exc
    finally:
        dst.close()
        src.close()


async def _pg_tables(conn: AsyncConnection) -> list[str]:
    result = await conn.execute(
        text(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
            "ORDER BY table_name"
        )
    )
    return [str(row[0]) for row in result]


async def _pg_facts(conn: AsyncConnection) -> dict[str, Any]:
    tables = await _pg_tables(conn)
    counts: dict[str, int] = {}
    for name in tables:
        if name != "alembic_version":
            counts[name] = int(
                (await conn.execute(text(f"SELECT count(*) FROM {_quote(name)}"))).scalar_one()  # noqa: S608
            )
    revisions: list[str] = []
    if "alembic_version" in tables:
        result = await conn.execute(text("SELECT version_num FROM alembic_version"))
        revisions = sorted(str(row[0]) for row in result)
    return {"alembic_revisions": revisions, "row_counts": counts}


def _run(args: list[str], env: dict[str, str], what: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed program, arguments from settings
            args, env=env, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise BackupError(
            f"{args[0]} is not installed; install the PostgreSQL client tools "
            "(Debian: apt install postgresql-client) matching your server's major version"
        ) from exc
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


async def _pg_snapshot(settings: Settings, dump: Path) -> dict[str, Any]:
    url, env = libpq_connection(settings)
    engine = build_engine(settings)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with conn.begin():
                # pg_dump joins this transaction's snapshot: the manifest's row counts and
                # revisions describe exactly what is in the dump, whatever is written meanwhile.
                snapshot = str((await conn.execute(text("SELECT pg_export_snapshot()"))).scalar())
                details = await _pg_facts(conn)
                args = ["pg_dump", "-Fc", "--no-owner", f"--snapshot={snapshot}"]
                if settings.database.schema_name:
                    args.append(f"--schema={settings.database.schema_name}")
                args += [f"--file={dump}", f"--dbname={url}"]
                await asyncio.to_thread(_run, args, env, "pg_dump")
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(f"PostgreSQL backup failed: {type(exc).__name__}: {exc}") from exc
    finally:
        await engine.dispose()
    # The archive must be readable by pg_restore before we call the backup done.
    toc = _run(["pg_restore", "--list", str(dump)], env, "pg_restore --list (checking the dump)")
    if "TABLE DATA" not in toc and details["row_counts"]:
        raise BackupError("the dump lists no table data")
    return details


# --------------------------------------------------------------------------------------
# Restore
# --------------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        with tarfile.open(path, "r:*") as tar:
            handle = tar.extractfile(MANIFEST_NAME)
            if handle is None:
                raise KeyError(MANIFEST_NAME)
            manifest: Any = json.loads(handle.read())
    except (OSError, EOFError, zlib.error, tarfile.TarError, KeyError, ValueError) as exc:
        raise BackupError(f"{path} is not a pia-server backup: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is not a pia-server backup (no {FORMAT} manifest)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{path} has backup format {manifest.get('format_version')}; this pia-server reads "
            f"format {FORMAT_VERSION}"
        )
    return manifest


def _extract(tar: tarfile.TarFile, name: str, target: Path) -> None:
    """Copy one archive member (by exact name, never a path from the archive) into ``target``."""
    try:
        handle: IO[bytes] | None = tar.extractfile(name)
    except KeyError:
        handle = None
    if handle is None:
        raise BackupError(f"the backup has no {name}")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            shutil.copyfileobj(handle, out, _CHUNK)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise BackupError(f"the backup archive is damaged ({name}: {exc})") from exc
        out.flush()
        os.fsync(out.fileno())


def _check_manifest(manifest: dict[str, Any], settings: Settings) -> None:
    backend = "sqlite" if settings.is_sqlite else "postgresql"
    if manifest.get("backend") != backend:
        raise BackupError(
            f"the backup is of a {manifest.get('backend')} database and this deployment uses "
            f"{backend}; restore it into a deployment of the same kind"
        )
    unknown = known_revisions(list(manifest.get("alembic_revisions", [])))
    if unknown:
        raise BackupError(
            f"the backup was made by a newer pia-server (unknown migration revisions "
            f"{', '.join(unknown)}); restore it with that version"
        )


def _stage_secrets(
    tar: tarfile.TarFile,
    manifest: dict[str, Any],
    data_dir: Path,
    staged: list[tuple[Path, Path]],
) -> None:
    """Extract the backup's secrets beside their final names; ``staged`` lists what exists."""
    for name in manifest.get("secrets", []):
        if name not in SECRET_FILES:
            continue
        partial = data_dir / f".{name}.restore"
        staged.append((partial, data_dir / name))
        _extract(tar, f"{SECRETS_DIR}/{name}", partial)


def restore(settings: Settings, path: Path, *, force: bool = False) -> RestoreResult:
    """Restore the archive at ``path`` into this deployment's database and data dir.

    Everything is extracted and checked first; only then is anything replaced.
    """
    manifest = read_manifest(path)
    _check_manifest(manifest, settings)
    data_dir = settings.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            if settings.is_sqlite:
                target = sqlite_file(settings)
                target.parent.mkdir(parents=True, exist_ok=True)
                with _scratch_dir(target.parent) as scratch:
                    staged_db = scratch / SQLITE_MEMBER
                    _extract(tar, SQLITE_MEMBER, staged_db)
                    _verify_sqlite_copy(staged_db, manifest)
                    _stage_secrets(tar, manifest, data_dir, staged)
                    _release_sqlite_target(target, force)
                    os.replace(staged_db, target)
                    _fsync_dir(target.parent)
                    _install_secrets(staged)
                where = str(target)
            else:
                with _scratch_dir(data_dir) as scratch:
                    dump = scratch / PG_MEMBER
                    _extract(tar, PG_MEMBER, dump)
                    if _sha256(dump) != manifest.get("sha256"):
                        raise BackupError("the dump does not match the manifest's checksum")
                    _stage_secrets(tar, manifest, data_dir, staged)
                    asyncio.run(_pg_restore(settings, dump, manifest, force))
                    _install_secrets(staged)
                schema = settings.database.schema_name
                where = make_url(settings.database_url).render_as_string(hide_password=True)
                where += f" (schema {schema})" if schema else ""
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BackupError(f"the backup archive {path} is damaged: {exc}") from exc
    finally:
        _discard(staged)
    return RestoreResult(where, manifest, [final.name for _, final in staged])


def _install_secrets(staged: list[tuple[Path, Path]]) -> None:
    for partial, final in staged:
        os.replace(partial, final)
    if staged:
        _fsync_dir(staged[0][1].parent)


def _discard(staged: list[tuple[Path, Path]]) -> None:
    for partial, _ in staged:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _verify_sqlite_copy(staged: Path, manifest: dict[str, Any]) -> None:
    if _sha256(staged) != manifest.get("sha256"):
        raise BackupError("the database in the backup does not match the manifest's checksum")
    conn = sqlite3.connect(staged, isolation_level=None)
    try:
        check = _integrity(conn)
        if check != "ok":
            raise BackupError(f"the database in the backup failed the integrity check: {check}")
        facts = _sqlite_facts(conn)
    except sqlite3.Error as exc:
        raise BackupError(f"the database in the backup cannot be read: {exc}") from exc
    finally:
        conn.close()
    _compare_facts(facts, manifest)


def _compare_facts(facts: dict[str, Any], manifest: dict[str, Any]) -> None:
    if facts["alembic_revisions"] != manifest.get("alembic_revisions"):
        raise BackupError(
            f"restored revisions {facts['alembic_revisions']} differ from the backup's "
            f"{manifest.get('alembic_revisions')}"
        )
    if facts["row_counts"] != manifest.get("row_counts"):
        raise BackupError("restored row counts differ from the backup's manifest")


def _release_sqlite_target(target: Path, force: bool) -> None:
    """Check that ``target`` may be replaced, and fold its WAL in so no stale WAL survives."""
    if not target.exists():
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{target}{suffix}").unlink()
        return
    try:
        conn = sqlite3.connect(target, timeout=0.5, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {target}: {exc}") from exc
    try:
        # An exclusive lock fails while any other connection (a running server) has it open.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        if not force and _sqlite_has_data(conn):
            raise BackupError(
                f"{target} already holds data; pass --force to replace it with the backup"
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise BackupError(f"{target} is in use; stop pia-server before restoring") from exc
        if not force:
            raise BackupError(
                f"{target} cannot be read ({exc}); pass --force to replace it"
            ) from exc
    except sqlite3.DatabaseError as exc:
        if not force:
            raise BackupError(
                f"{target} cannot be read ({exc}); pass --force to replace it"
            ) from exc
    finally:
        conn.close()
    # Closing the last connection checkpoints and removes the WAL; a WAL left beside the new
    # file would be replayed into it.
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{target}{suffix}").unlink()


def _sqlite_has_data(conn: sqlite3.Connection) -> bool:
    for name in _sqlite_tables(conn):
        if name == "alembic_version":
            continue
        if conn.execute(f"SELECT 1 FROM {_quote(name)} LIMIT 1").fetchone():  # noqa: S608
            return True
    return False


async def _pg_has_data(conn: AsyncConnection) -> bool:
    for name in await _pg_tables(conn):
        if name == "alembic_version":
            continue
        found = await conn.execute(text(f"SELECT 1 FROM {_quote(name)} LIMIT 1"))  # noqa: S608
        if found.first() is not None:
            return True
    return False


async def _pg_restore(
    settings: Settings, dump: Path, manifest: dict[str, Any], force: bool
) -> None:
    schema = settings.database.schema_name
    if manifest.get("schema", "") != schema:
        source = manifest.get("schema") or "the default (public)"
        raise BackupError(
            f"the backup holds schema {source} and this deployment uses "
            f"{schema or 'the default (public)'}; set [database] schema to the backup's schema "
            "(restore into another database if that schema is in use)"
        )
    url, env = libpq_connection(settings)
    engine = build_engine(settings)
    try:
        async with engine.connect() as conn:
            if not force and await _pg_has_data(conn):
                raise BackupError(
                    "the database already holds data; pass --force to replace it with the backup"
                )
            await conn.rollback()
        # One transaction: an error rolls everything back and leaves the database as it was.
        await asyncio.to_thread(
            _run,
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                "--exit-on-error",
                f"--dbname={url}",
                str(dump),
            ],
            env,
            "pg_restore",
        )
        async with engine.connect() as conn:
            facts = await _pg_facts(conn)
        _compare_facts(facts, manifest)
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(f"PostgreSQL restore failed: {type(exc).__name__}: {exc}") from exc
    finally:
        await engine.dispose()
