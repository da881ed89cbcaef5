"""The server key that encrypts provider API keys at rest (AES-256-GCM).

The key comes from ``[sync] encryption_key`` (base64 of 32 bytes) or is generated once into
``<data_dir>/sync-key`` (mode 0600). Each value gets a fresh 96-bit nonce; the user and record id
are the associated data, so a ciphertext copied to another user's or record's row does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pia_server.core.config import Settings
from pia_server.core.secrets import load_or_create_secret

_VERSION = "v1"


def decode_key(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding; must be 32 bytes."""
    cleaned = text.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is not base64") from exc
    if len(raw) != 32:
        raise ValueError(f"must decode to 32 bytes (got {len(raw)})")
    return raw


class SecretCipher:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretCipher:
        text = settings.sync.encryption_key or load_or_create_secret(
            settings.server.data_dir, "sync-key"
        )
        return cls(decode_key(text))

    @staticmethod
    def _aad(user_id: str, entity: str, entity_id: str) -> bytes:
        return f"pia-sync-secret:{user_id}:{entity}:{entity_id}".encode()

    def encrypt(self, value: str, user_id: str, entity: str, entity_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), self._aad(user_id, entity, entity_id))
        return f"{_VERSION}:" + base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, stored: str, user_id: str, entity: str, entity_id: str) -> str | None:
        """The plaintext, or ``None`` when it cannot be opened (another key, a tampered row)."""
        version, _, body = stored.partition(":")
        if version != _VERSION:
            return None
        try:
            raw = base64.b64decode(body)
            plain = self._aead.decrypt(raw[:12], raw[12:], self._aad(user_id, entity, entity_id))
        except (InvalidTag, ValueError, binascii.Error):
            return None
        return plain.decode()
