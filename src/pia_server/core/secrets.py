"""Secrets that may be generated once and kept in the data dir (file mode 0600)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import structlog

log = structlog.get_logger("pia_server.secrets")


def load_or_create_secret(data_dir: Path, filename: str, *, nbytes: int = 32) -> str:
    """Return the secret kept in ``data_dir/filename``, creating it (0600) on first use.

    Created with O_EXCL so that two instances starting together agree on one value.
    """
    path = data_dir / filename
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text(encoding="ascii").strip()
        if value:
            return value
        raise RuntimeError(f"{path} is empty; delete it to have a new secret generated") from None
    value = base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode("ascii").rstrip("=")
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value + "\n")
    log.info("secret_generated", file=str(path), note="kept in the data dir with mode 0600")
    return value
