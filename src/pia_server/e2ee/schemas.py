"""E2EE wire DTOs (the client's Pia.Shared E2EE types) and their mapping from storage rows.

Input checks are the ones the server can make without any key: base64 that decodes, P-256
points that are on the curve, blob and signature lengths, id and name lengths.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AfterValidator, Field, StringConstraints, field_validator

from pia_server.core.wire import WireModel, WireTime
from pia_server.e2ee.storage import (
    AccountRow,
    DeviceRow,
    DeviceStatus,
    RecoveryBlob,
    SessionRow,
    WrappedUmkRow,
)

MAX_DEVICE_ID = 64
MAX_NAME = 200
POINT_LEN = 65
# nonce 12 + UMK 32 + tag 16
WRAPPED_UMK_LEN = 60
SIGNATURE_LEN = 64
PROOF_KEY_LEN = 32
MAX_SALT_LEN = 64


def decode_b64(value: str) -> bytes:
    """Strict standard base64, as .NET's Convert.FromBase64String reads it."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValueError("must be base64") from exc


def _public_key(value: str) -> str:
    if len(value) > 128:
        raise ValueError("must be a base64 uncompressed P-256 point (65 bytes)")
    raw = decode_b64(value)
    if len(raw) != POINT_LEN or raw[0] != 0x04:
        raise ValueError("must be an uncompressed P-256 point: 65 bytes starting with 0x04")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise ValueError("is not a point on the P-256 curve") from exc
    return value


def _exact_bytes(length: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > 4 * (length + 2) // 3 + 4:
            raise ValueError(f"must be base64 of {length} bytes")
        if len(decode_b64(value)) != length:
            raise ValueError(f"must be base64 of {length} bytes")
        return value

    return AfterValidator(check)


def _salt(value: str) -> str:
    if len(value) > 100:
        raise ValueError(f"must be base64 of 1 to {MAX_SALT_LEN} bytes")
    if not 1 <= len(decode_b64(value)) <= MAX_SALT_LEN:
        raise ValueError(f"must be base64 of 1 to {MAX_SALT_LEN} bytes")
    return value


def _b64_any(value: str) -> str:
    if len(value) > 100:
        raise ValueError("is too long")
    decode_b64(value)
    return value


DeviceId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_DEVICE_ID, strip_whitespace=False)
]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
SessionId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
PublicKey = Annotated[str, AfterValidator(_public_key)]
WrappedUmk = Annotated[str, _exact_bytes(WRAPPED_UMK_LEN)]
Signature = Annotated[str, _exact_bytes(SIGNATURE_LEN)]
ProofKey = Annotated[str, _exact_bytes(PROOF_KEY_LEN)]
Salt = Annotated[str, AfterValidator(_salt)]
Base64 = Annotated[str, AfterValidator(_b64_any)]


def fingerprint(agreement_public_key: str) -> str:
    """SHA-256 of the 65-byte point, first 8 bytes, as ``XXXX-XXXX-XXXX-XXXX`` (the client's)."""
    digest = hashlib.sha256(decode_b64(agreement_public_key)).digest()[:8].hex().upper()
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


class DeviceRegistrationRequest(WireModel):
    device_id: DeviceId
    device_name: Name
    agreement_public_key: PublicKey
    signing_public_key: PublicKey
    os_version: Name | None = None
    app_version: Name | None = None


class DeviceApprovalRequest(WireModel):
    onboarding_session_id: SessionId
    target_device_id: DeviceId
    wrapped_umk: WrappedUmk
    hkdf_salt: Salt
    approver_signature: Signature
    approver_device_id: DeviceId
    # Absent or null means 1 (clients up to 1.4.278).
    signature_version: int | None = None

    @field_validator("signature_version")
    @classmethod
    def _known_version(cls, value: int | None) -> int | None:
        if value is not None and value not in (1, 2):
            raise ValueError("must be 1 or 2")
        return value

    @property
    def version(self) -> int:
        return self.signature_version or 1


class DeviceRevokeRequest(WireModel):
    device_id: DeviceId


class WrappedUmkUpload(WireModel):
    """A ``WrappedUmkBlob`` as uploaded by an active device for itself."""

    device_id: DeviceId | None = None
    ciphertext: WrappedUmk
    hkdf_salt: Salt
    wrap_version: int = Field(1, ge=1, le=1000)
    created_by_device_id: DeviceId | None = None
    # The client sends its own clock; the server records its own.
    created_at: WireTime | None = None


class RecoveryWrappedUmkBlob(WireModel):
    ciphertext: WrappedUmk
    kdf_salt: Salt
    # Client defaults (Argon2id, 64 MiB, 3 passes, 4 lanes); whatever is sent is kept verbatim.
    kdf_memory_cost_kb: int = Field(65536, ge=8, le=4 * 1024 * 1024)
    kdf_time_cost: int = Field(3, ge=1, le=1000)
    kdf_parallelism: int = Field(4, ge=1, le=255)
    wrap_version: int = Field(1, ge=1, le=1000)
    umk_version: int = Field(1, ge=1, le=1_000_000)
    created_at: WireTime | None = None

    def to_blob(self, now: int) -> RecoveryBlob:
        return RecoveryBlob(
            ciphertext=self.ciphertext,
            kdf_salt=self.kdf_salt,
            kdf_memory_cost_kb=self.kdf_memory_cost_kb,
            kdf_time_cost=self.kdf_time_cost,
            kdf_parallelism=self.kdf_parallelism,
            wrap_version=self.wrap_version,
            umk_version=self.umk_version,
            created_at=self.created_at if self.created_at is not None else now,
        )

    @classmethod
    def from_blob(cls, blob: RecoveryBlob) -> RecoveryWrappedUmkBlob:
        return cls.model_construct(
            ciphertext=blob.ciphertext,
            kdf_salt=blob.kdf_salt,
            kdf_memory_cost_kb=blob.kdf_memory_cost_kb,
            kdf_time_cost=blob.kdf_time_cost,
            kdf_parallelism=blob.kdf_parallelism,
            wrap_version=blob.wrap_version,
            umk_version=blob.umk_version,
            created_at=blob.created_at,
        )


class ProofKeyRequest(WireModel):
    proof_key: ProofKey
    version: int = Field(1, ge=1, le=1000)


class RecoveryActivationRequest(WireModel):
    device_id: DeviceId
    self_wrapped_umk: WrappedUmk
    hkdf_salt: Salt
    proof_of_possession: Base64 | None = None
    onboarding_session_id: SessionId


# --------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------


class DeviceRegistrationResponse(WireModel):
    onboarding_session_id: str
    server_challenge: str
    is_first_device: bool
    device_id: str
    status: int


class DeviceInfo(WireModel):
    device_id: str
    device_name: str
    status: int
    agreement_public_key: str
    signing_public_key: str
    fingerprint: str
    onboarding_session_id: str | None
    os_version: str | None
    app_version: str | None
    created_at: WireTime
    activated_at: WireTime | None
    revoked_at: WireTime | None
    last_seen_at: WireTime | None

    @classmethod
    def from_row(cls, row: DeviceRow, session: SessionRow | None = None) -> DeviceInfo:
        pending = row.status == int(DeviceStatus.PENDING)
        return cls(
            device_id=row.device_id,
            device_name=row.device_name,
            status=row.status,
            agreement_public_key=row.agreement_public_key,
            signing_public_key=row.signing_public_key,
            fingerprint=fingerprint(row.agreement_public_key),
            onboarding_session_id=session.id if pending and session is not None else None,
            os_version=row.os_version,
            app_version=row.app_version,
            created_at=row.created_at,
            activated_at=row.activated_at,
            revoked_at=row.revoked_at,
            last_seen_at=row.last_seen_at,
        )


class DeviceListResponse(WireModel):
    devices: list[DeviceInfo] = []
    has_recovery_key: bool
    umk_version: int


class DeviceStatusResponse(WireModel):
    device_id: str
    status: int
    is_approved: bool

    @classmethod
    def from_row(cls, row: DeviceRow) -> DeviceStatusResponse:
        return cls(
            device_id=row.device_id,
            status=row.status,
            is_approved=row.status == int(DeviceStatus.ACTIVE),
        )


class WrappedUmkBlob(WireModel):
    device_id: str
    ciphertext: str
    hkdf_salt: str
    wrap_version: int
    created_by_device_id: str
    created_at: WireTime
    approver_signature: str | None
    # An int, never null: later clients declare it as a non-nullable int (1 for self-wraps).
    signature_version: int
    onboarding_session_id: str | None

    @classmethod
    def from_row(cls, row: WrappedUmkRow) -> WrappedUmkBlob:
        return cls(
            device_id=row.device_id,
            ciphertext=row.ciphertext,
            hkdf_salt=row.hkdf_salt,
            wrap_version=row.wrap_version,
            created_by_device_id=row.created_by_device_id,
            created_at=row.created_at,
            approver_signature=row.approver_signature,
            signature_version=row.signature_version or 1,
            onboarding_session_id=row.onboarding_session_id,
        )


class E2eeStatusResponse(WireModel):
    is_enabled: bool
    umk_version: int
    has_recovery_key: bool
    has_recovery_proof_key: bool

    @classmethod
    def from_account(cls, account: AccountRow | None) -> E2eeStatusResponse:
        if account is None:
            return cls(
                is_enabled=False,
                umk_version=0,
                has_recovery_key=False,
                has_recovery_proof_key=False,
            )
        return cls(
            is_enabled=account.is_enabled,
            umk_version=account.umk_version if account.is_enabled else 0,
            has_recovery_key=account.has_recovery,
            has_recovery_proof_key=account.proof_key is not None,
        )
