"""Reference E2EE client crypto, matching the Pia desktop client byte for byte.

The server never decrypts anything; tests use this module to play the part of
real clients (first device, approving device, recovering device) so that the
blobs, signatures and proofs the server stores are exactly what the C# client
would produce and verify. Section F of the client contract is the source.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "ARGON2_MEMORY_KB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "COMPRESSED_MARKER",
    "DeviceKeys",
    "activation_proof",
    "activation_proof_key",
    "aes_gcm_open",
    "aes_gcm_seal",
    "approval_payload_v1",
    "approval_payload_v2",
    "b64d",
    "b64e",
    "decrypt_record",
    "dek_wrap_aad",
    "derive_recovery_kek",
    "encrypt_record",
    "fingerprint_of",
    "generate_recovery_code",
    "normalize_recovery_code",
    "public_key_from_b64",
    "random_umk",
    "record_aad",
    "self_wrap_umk",
    "sign_p1363",
    "umk_wrap_info",
    "unwrap_recovery_blob",
    "unwrap_umk",
    "utc_now_iso",
    "verify_p1363",
    "wrap_umk_for_device",
    "wrap_umk_for_recovery",
]

# Client defaults (RecoveryCodeService): Argon2id, 64 MiB, 3 passes, 4 lanes.
ARGON2_MEMORY_KB = 65536
ARGON2_TIME_COST = 3
ARGON2_PARALLELISM = 4

# Later clients prefix zlib-compressed record plaintext with this byte.
COMPRESSED_MARKER = 0x01

_NONCE_LEN = 12
_KEY_LEN = 32
_POINT_LEN = 65
_COORD_LEN = 32
_RECOVERY_AAD = b"pia-recovery-wrap-v1"
_BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


# --------------------------------------------------------------------------
# Encodings
# --------------------------------------------------------------------------


def b64e(data: bytes) -> str:
    """Standard padded base64, as .NET's Convert.ToBase64String writes it."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """Strict base64 decode: .NET rejects junk, so we do too."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def utc_now_iso() -> str:
    """UTC timestamp ending in `Z`: .NET turns `+00:00` into local time."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _point_bytes(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def public_key_from_b64(public_b64: str) -> ec.EllipticCurvePublicKey:
    """Parse a wire public key; the client insists on a 65-byte 0x04 point."""
    raw = b64d(public_b64)
    if len(raw) != _POINT_LEN or raw[0] != 0x04:
        raise ValueError("public key must be a 65-byte uncompressed P-256 point")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


def fingerprint_of(agreement_public_b64: str) -> str:
    """What the client shows for a device: hash of the *agreement* key point."""
    digest = hashlib.sha256(b64d(agreement_public_b64)).digest()[:8]
    hex_upper = digest.hex().upper()
    return "-".join(hex_upper[i : i + 4] for i in range(0, 16, 4))


# --------------------------------------------------------------------------
# Device keys
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKeys:
    """One client device: an id plus its ECDH (agreement) and ECDSA (signing) keys."""

    device_id: str
    agreement_key: ec.EllipticCurvePrivateKey = field(repr=False)
    signing_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, device_id: str | None = None) -> DeviceKeys:
        # The client's SyncDeviceId is Guid.NewGuid().ToString(): lowercase D form.
        return cls(
            device_id=device_id if device_id is not None else str(uuid.uuid4()),
            agreement_key=ec.generate_private_key(ec.SECP256R1()),
            signing_key=ec.generate_private_key(ec.SECP256R1()),
        )

    @property
    def agreement_public_b64(self) -> str:
        return b64e(_point_bytes(self.agreement_key.public_key()))

    @property
    def signing_public_b64(self) -> str:
        return b64e(_point_bytes(self.signing_key.public_key()))

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.agreement_public_b64)

    def shared_secret(self, peer_agreement_public_b64: str) -> bytes:
        """Raw ECDH X coordinate, like .NET DeriveRawSecretAgreement."""
        return self.agreement_key.exchange(
            ec.ECDH(), public_key_from_b64(peer_agreement_public_b64)
        )

    def sign(self, payload: bytes) -> str:
        return sign_p1363(self.signing_key, payload)

    def registration_body(
        self,
        device_name: str = "Test Device",
        os_version: str | None = None,
        app_version: str | None = None,
    ) -> dict[str, Any]:
        """The camelCase DeviceRegistrationRequest the client POSTs (nulls written)."""
        return {
            "deviceId": self.device_id,
            "deviceName": device_name,
            "agreementPublicKey": self.agreement_public_b64,
            "signingPublicKey": self.signing_public_b64,
            "osVersion": os_version,
            "appVersion": app_version,
        }


# --------------------------------------------------------------------------
# AES-GCM container: b64(nonce || ciphertext || tag)
# --------------------------------------------------------------------------


def aes_gcm_seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = os.urandom(_NONCE_LEN)
    return b64e(nonce + AESGCM(key).encrypt(nonce, plaintext, aad))


def aes_gcm_open(key: bytes, blob_b64: str, aad: bytes) -> bytes:
    """Raises cryptography's InvalidTag on a wrong key, AAD or tampered blob."""
    raw = b64d(blob_b64)
    if len(raw) < _NONCE_LEN + 16:
        raise InvalidTag
    return AESGCM(key).decrypt(raw[:_NONCE_LEN], raw[_NONCE_LEN:], aad)


def random_umk() -> bytes:
    return os.urandom(_KEY_LEN)


# --------------------------------------------------------------------------
# UMK wrapping for a device (ECDH + HKDF-SHA256 + AES-GCM)
# --------------------------------------------------------------------------


def umk_wrap_info(target_device_id: str) -> bytes:
    # Used both as HKDF info and as the AES-GCM AAD, binding the blob to its target.
    return f"pia-umk-wrap-v1:{target_device_id}".encode()


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_LEN, salt=salt, info=info).derive(ikm)


def wrap_umk_for_device(
    sender: DeviceKeys,
    target_device_id: str,
    target_agreement_pub_b64: str,
    umk: bytes,
) -> tuple[str, str]:
    """Returns (ciphertext_b64, hkdf_salt_b64); the ciphertext is 60 bytes raw."""
    info = umk_wrap_info(target_device_id)
    salt = os.urandom(_KEY_LEN)
    kek = _hkdf(sender.shared_secret(target_agreement_pub_b64), salt, info)
    return aes_gcm_seal(kek, umk, info), b64e(salt)


def unwrap_umk(
    receiver: DeviceKeys,
    sender_agreement_pub_b64: str,
    ciphertext_b64: str,
    salt_b64: str,
) -> bytes:
    """The receiver uses its own id: the blob was bound to it by the sender."""
    info = umk_wrap_info(receiver.device_id)
    kek = _hkdf(receiver.shared_secret(sender_agreement_pub_b64), b64d(salt_b64), info)
    return aes_gcm_open(kek, ciphertext_b64, info)


def self_wrap_umk(device: DeviceKeys, umk: bytes) -> tuple[str, str]:
    """Self-wrap: ECDH with the device's own public key (createdByDeviceId = itself)."""
    return wrap_umk_for_device(device, device.device_id, device.agreement_public_b64, umk)


# --------------------------------------------------------------------------
# Approval signatures (ECDSA P-256 / SHA-256, IEEE P1363 r||s)
# --------------------------------------------------------------------------


def approval_payload_v1(
    onboarding_session_id: str, target_device_id: str, target_agreement_pub_b64: str
) -> bytes:
    return f"{onboarding_session_id}:{target_device_id}:{target_agreement_pub_b64}".encode()


def approval_payload_v2(
    onboarding_session_id: str,
    target_device_id: str,
    target_agreement_pub_b64: str,
    wrapped_umk_b64: str,
    hkdf_salt_b64: str,
) -> bytes:
    # v2 also covers the wrapped blob, so the server cannot swap it undetected.
    return (
        f"pia-approval-v2:{onboarding_session_id}:{target_device_id}:"
        f"{target_agreement_pub_b64}:{wrapped_umk_b64}:{hkdf_salt_b64}"
    ).encode()


def sign_p1363(signing_key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    """.NET's ECDsa.SignData default is raw r||s (64 bytes), not DER."""
    der = signing_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return b64e(r.to_bytes(_COORD_LEN, "big") + s.to_bytes(_COORD_LEN, "big"))


def verify_p1363(public_b64: str, payload: bytes, sig_b64: str) -> bool:
    """False for any malformed key/signature too: the client just refuses then."""
    try:
        public_key = public_key_from_b64(public_b64)
        raw = b64d(sig_b64)
    except ValueError:  # includes binascii.Error from bad base64
        return False
    if len(raw) != 2 * _COORD_LEN:
        return False
    r = int.from_bytes(raw[:_COORD_LEN], "big")
    s = int.from_bytes(raw[_COORD_LEN:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# --------------------------------------------------------------------------
# Recovery code + Argon2id
# --------------------------------------------------------------------------


def _base32_no_padding(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def generate_recovery_code() -> str:
    """16 random bytes -> 26 base32 chars, grouped by 4: XXXX-...-XXXX-XX."""
    text = _base32_no_padding(secrets.token_bytes(16))
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def normalize_recovery_code(code: str) -> str:
    # The client only strips '-' and upper-cases; no other cleanup.
    return code.replace("-", "").upper()


def derive_recovery_kek(
    code: str,
    salt: bytes,
    memory_kb: int = ARGON2_MEMORY_KB,
    time_cost: int = ARGON2_TIME_COST,
    parallelism: int = ARGON2_PARALLELISM,
) -> bytes:
    return hash_secret_raw(
        secret=normalize_recovery_code(code).encode(),
        salt=salt,
        time_cost=time_cost,
        memory_cost=memory_kb,
        parallelism=parallelism,
        hash_len=_KEY_LEN,
        type=Type.ID,
    )


def wrap_umk_for_recovery(
    code: str,
    umk: bytes,
    memory_kb: int = ARGON2_MEMORY_KB,
    time_cost: int = ARGON2_TIME_COST,
    parallelism: int = ARGON2_PARALLELISM,
) -> dict[str, Any]:
    """The camelCase RecoveryWrappedUmkBlob the client POSTs to recovery/wrapped-umk.

    Smaller Argon2 parameters are only for fast tests; they are recorded in the
    blob, so unwrapping still works.
    """
    salt = os.urandom(_KEY_LEN)
    kek = derive_recovery_kek(code, salt, memory_kb, time_cost, parallelism)
    return {
        "ciphertext": aes_gcm_seal(kek, umk, _RECOVERY_AAD),
        "kdfSalt": b64e(salt),
        "kdfMemoryCostKb": memory_kb,
        "kdfTimeCost": time_cost,
        "kdfParallelism": parallelism,
        "wrapVersion": 1,
        "umkVersion": 1,
        "createdAt": utc_now_iso(),
    }


def _get_ci(blob: Mapping[str, Any], key: str) -> Any:
    # The client reads server JSON case-insensitively; mirror that.
    if key in blob:
        return blob[key]
    lowered = key.lower()
    for k, v in blob.items():
        if k.lower() == lowered:
            return v
    raise KeyError(key)


def unwrap_recovery_blob(code: str, blob: Mapping[str, Any]) -> bytes:
    """Honours the blob's own kdf* parameters, as the client does."""
    kek = derive_recovery_kek(
        code,
        b64d(str(_get_ci(blob, "kdfSalt"))),
        memory_kb=int(_get_ci(blob, "kdfMemoryCostKb")),
        time_cost=int(_get_ci(blob, "kdfTimeCost")),
        parallelism=int(_get_ci(blob, "kdfParallelism")),
    )
    return aes_gcm_open(kek, str(_get_ci(blob, "ciphertext")), _RECOVERY_AAD)


# --------------------------------------------------------------------------
# Proof of possession (recovery activation)
# --------------------------------------------------------------------------


def activation_proof_key(umk: bytes) -> bytes:
    """The 32-byte key later clients upload via PUT recovery/proof-key (as b64)."""
    return _hkdf(umk, b"activation", b"pia-activation-proof-v1")


def activation_proof(umk: bytes, onboarding_session_id: str) -> str:
    # The HMAC covers the session id *text*, not serverChallenge.
    mac = hmac.new(
        activation_proof_key(umk), onboarding_session_id.encode(), hashlib.sha256
    ).digest()
    return b64e(mac)


# --------------------------------------------------------------------------
# Record encryption (per-record DEK wrapped by the UMK)
# --------------------------------------------------------------------------


def record_aad(user_id: str, entity_type: str, entity_id: str) -> bytes:
    return f"pia-e2ee-v1:{user_id}:{entity_type}:{entity_id}".encode()


def dek_wrap_aad(entity_type: str, entity_id: str) -> bytes:
    return f"pia-dek-wrap-v1:{entity_type}:{entity_id}".encode()


def encrypt_record(
    umk: bytes,
    user_id: str,
    entity_type: str,
    entity_id: str,
    payload: Mapping[str, Any],
    compress: bool = False,
) -> tuple[str, str]:
    """Returns (encryptedPayload_b64, wrappedDek_b64) with a fresh DEK.

    `payload` should use the PascalCase keys of contract F.3 (default STJ
    options). compress=True gives the later clients' 0x01 + zlib format.
    """
    # Compact JSON like STJ; ensure_ascii mirrors STJ's default escaping of non-ASCII.
    plaintext = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()
    if compress:
        plaintext = bytes([COMPRESSED_MARKER]) + zlib.compress(plaintext)
    dek = os.urandom(_KEY_LEN)
    encrypted = aes_gcm_seal(dek, plaintext, record_aad(user_id, entity_type, entity_id))
    wrapped_dek = aes_gcm_seal(umk, dek, dek_wrap_aad(entity_type, entity_id))
    return encrypted, wrapped_dek


def decrypt_record(
    umk: bytes,
    user_id: str,
    entity_type: str,
    entity_id: str,
    encrypted_payload_b64: str,
    wrapped_dek_b64: str,
) -> dict[str, Any]:
    """Accepts both the 0x01 + zlib format and legacy raw JSON."""
    dek = aes_gcm_open(umk, wrapped_dek_b64, dek_wrap_aad(entity_type, entity_id))
    data = aes_gcm_open(dek, encrypted_payload_b64, record_aad(user_id, entity_type, entity_id))
    if data[:1] == bytes([COMPRESSED_MARKER]):
        data = zlib.decompress(data[1:])
    result = json.loads(data)
    if not isinstance(result, dict):
        raise ValueError("decrypted record is not a JSON object")
    return result
