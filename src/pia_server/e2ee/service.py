"""E2EE logic: the device state machine, approvals, self-wraps and recovery (no HTTP here).

State machine (the client's): ``(none) -register-> Pending -approve | recovery/activate->
Active -revoke-> Revoked``; a Revoked device that registers again starts over as Pending. The
account's first device (no Active device, no UMK yet) is Active at once so that it can approve
the others. Every write runs in one transaction under a per-user lock, so a refused request
changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pia_server.core.audit import RequestOrigin, record_event
from pia_server.core.database import Database
from pia_server.core.errors import ApiError
from pia_server.core.wire import TICKS_PER_SECOND, now_ticks
from pia_server.e2ee import errors
from pia_server.e2ee import storage as st
from pia_server.e2ee.schemas import (
    DeviceApprovalRequest,
    DeviceInfo,
    DeviceListResponse,
    DeviceRegistrationRequest,
    DeviceRegistrationResponse,
    DeviceStatusResponse,
    E2eeStatusResponse,
    ProofKeyRequest,
    RecoveryActivationRequest,
    RecoveryWrappedUmkBlob,
    WrappedUmkBlob,
    WrappedUmkUpload,
    decode_b64,
)
from pia_server.e2ee.storage import DeviceStatus

ACTIVE = int(DeviceStatus.ACTIVE)
PENDING = int(DeviceStatus.PENDING)
REVOKED = int(DeviceStatus.REVOKED)


@dataclass
class E2eePolicy:
    """Lifetimes and limits (kept in ``ctx.domains["e2ee"]``)."""

    session_ttl_seconds: int = 15 * 60
    activation_attempts: int = 5
    activation_window_seconds: int = 3600


def _token(n: int) -> str:
    return base64.b64encode(secrets.token_bytes(n)).decode("ascii")


def approval_payload(request: DeviceApprovalRequest, target_agreement_key: str) -> bytes:
    """The bytes the approver signed (client contract F.5, v1 or v2)."""
    sid, target = request.onboarding_session_id, request.target_device_id
    if request.version == 2:
        return (
            f"pia-approval-v2:{sid}:{target}:{target_agreement_key}:"
            f"{request.wrapped_umk}:{request.hkdf_salt}"
        ).encode()
    return f"{sid}:{target}:{target_agreement_key}".encode()


def verify_p1363(signing_public_key: str, payload: bytes, signature_b64: str) -> bool:
    """ECDSA P-256/SHA-256 with the .NET signature format: raw ``r||s``, 64 bytes."""
    raw = decode_b64(signature_b64)
    if len(raw) != 64:
        return False
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), decode_b64(signing_public_key)
    )
    try:
        key.verify(encode_dss_signature(r, s), payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_activation_proof(proof_key_b64: str, session_id: str, proof_b64: str | None) -> bool:
    """HMAC-SHA256(proofKey, sessionId text), compared in constant time."""
    if not proof_b64:
        return False
    expected = hmac.new(decode_b64(proof_key_b64), session_id.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(expected, decode_b64(proof_b64))


def _session_usable(session: st.SessionRow | None, user_id: str, device_id: str, now: int) -> bool:
    return (
        session is not None
        and session.user_id == user_id
        and session.device_id == device_id
        and session.closed_at is None
        and session.expires_at > now
    )


class E2eeService:
    def __init__(self, db: Database, policy: E2eePolicy | None = None) -> None:
        self.db = db
        self.policy = policy or E2eePolicy()

    # ---- devices ---------------------------------------------------------

    async def register(
        self, user_id: str, req: DeviceRegistrationRequest, origin: RequestOrigin
    ) -> DeviceRegistrationResponse:
        now = now_ticks()
        async with self.db.write() as conn:
            await st.lock_user(conn, user_id)
            account = await st.get_account(conn, user_id)
            existing = await st.get_device(conn, user_id, req.device_id)
            active_count = await st.count_active_devices(conn, user_id)
            enabled = account is not None and account.is_enabled
            details = {"reregistered": existing is not None}

            if existing is not None and existing.status == ACTIVE:
                # Idempotent, and never a demotion. New keys would let a token alone replace
                # an approved device's keys, so those are refused instead.
                if (
                    existing.agreement_public_key != req.agreement_public_key
                    or existing.signing_public_key != req.signing_public_key
                ):
                    raise errors.device_keys_changed()
                await st.update_device(
                    conn,
                    user_id,
                    req.device_id,
                    device_name=req.device_name,
                    os_version=req.os_version,
                    app_version=req.app_version,
                    last_seen_at=now,
                )
                # A bootstrap retried before its self-wrap landed is still the first device.
                first = not enabled and active_count == 1
                await record_event(
                    conn,
                    "e2ee_device_registered",
                    user_id=user_id,
                    origin=origin,
                    device_id=req.device_id,
                    details={**details, "status": ACTIVE, "isFirstDevice": first},
                )
                # There is nothing to onboard: an opaque id that no session matches.
                return DeviceRegistrationResponse(
                    onboarding_session_id=_token(24),
                    server_challenge=_token(32),
                    is_first_device=first,
                    device_id=req.device_id,
                    status=ACTIVE,
                )

            first = active_count == 0 and not enabled
            status = ACTIVE if first else PENDING
            values: dict[str, object] = {
                "device_name": req.device_name,
                "agreement_public_key": req.agreement_public_key,
                "signing_public_key": req.signing_public_key,
                "status": status,
                "os_version": req.os_version,
                "app_version": req.app_version,
                "activated_at": now if first else None,
                "revoked_at": None,
                "last_seen_at": now,
            }
            if existing is None:
                await st.insert_device(
                    conn,
                    st.DeviceRow(
                        user_id=user_id,
                        device_id=req.device_id,
                        device_name=req.device_name,
                        agreement_public_key=req.agreement_public_key,
                        signing_public_key=req.signing_public_key,
                        status=status,
                        os_version=req.os_version,
                        app_version=req.app_version,
                        created_at=now,
                        activated_at=now if first else None,
                        revoked_at=None,
                        last_seen_at=now,
                    ),
                )
            else:
                await st.update_device(conn, user_id, req.device_id, **values)
                # A revoked device starts over: no key of its earlier life survives.
                await st.delete_wrapped_umk(conn, user_id, req.device_id)
            await st.close_sessions(conn, user_id, req.device_id, now)

            if first:
                session_id, challenge = _token(24), _token(32)
            else:
                session = st.SessionRow(
                    id=_token(24),
                    user_id=user_id,
                    device_id=req.device_id,
                    server_challenge=_token(32),
                    created_at=now,
                    expires_at=now + self.policy.session_ttl_seconds * TICKS_PER_SECOND,
                    closed_at=None,
                )
                await st.insert_session(conn, session)
                session_id, challenge = session.id, session.server_challenge
            await record_event(
                conn,
                "e2ee_device_registered",
                user_id=user_id,
                origin=origin,
                device_id=req.device_id,
                details={**details, "status": status, "isFirstDevice": first},
            )
        return DeviceRegistrationResponse(
            onboarding_session_id=session_id,
            server_challenge=challenge,
            is_first_device=first,
            device_id=req.device_id,
            status=status,
        )

    async def list_devices(self, user_id: str) -> DeviceListResponse:
        async with self.db.read() as conn:
            devices = await st.list_devices(conn, user_id)
            sessions = await st.open_sessions(conn, user_id)
            account = await st.get_account(conn, user_id)
        status = E2eeStatusResponse.from_account(account)
        return DeviceListResponse(
            devices=[DeviceInfo.from_row(d, sessions.get(d.device_id)) for d in devices],
            has_recovery_key=status.has_recovery_key,
            umk_version=status.umk_version,
        )

    async def device_status(self, user_id: str, device_id: str) -> DeviceStatusResponse:
        async with self.db.read() as conn:
            device = await st.get_device(conn, user_id, device_id)
        if device is None:
            raise errors.device_not_found()
        return DeviceStatusResponse.from_row(device)

    async def approve(
        self, user_id: str, req: DeviceApprovalRequest, origin: RequestOrigin
    ) -> DeviceStatusResponse:
        now = now_ticks()
        async with self.db.write() as conn:
            await st.lock_user(conn, user_id)
            approver = await st.get_device(conn, user_id, req.approver_device_id)
            target = await st.get_device(conn, user_id, req.target_device_id)
            if approver is None or target is None:
                raise errors.device_not_found()
            if approver.status != ACTIVE:
                raise errors.approver_not_active()
            session = await st.get_session(conn, req.onboarding_session_id)
            # A spent session is how a replayed approval shows up.
            if not _session_usable(session, user_id, target.device_id, now):
                raise errors.invalid_onboarding_session()
            if target.status != PENDING:
                raise errors.device_not_pending()
            payload = approval_payload(req, target.agreement_public_key)
            if not verify_p1363(approver.signing_public_key, payload, req.approver_signature):
                raise errors.invalid_signature()

            await st.put_wrapped_umk(
                conn,
                st.WrappedUmkRow(
                    user_id=user_id,
                    device_id=target.device_id,
                    ciphertext=req.wrapped_umk,
                    hkdf_salt=req.hkdf_salt,
                    wrap_version=1,
                    created_by_device_id=approver.device_id,
                    approver_signature=req.approver_signature,
                    signature_version=req.version,
                    onboarding_session_id=req.onboarding_session_id,
                    created_at=now,
                ),
            )
            await st.update_device(
                conn, user_id, target.device_id, status=ACTIVE, activated_at=now, revoked_at=None
            )
            await st.close_sessions(conn, user_id, target.device_id, now)
            await st.touch_device(conn, user_id, approver.device_id)
            await record_event(
                conn,
                "e2ee_device_approved",
                user_id=user_id,
                origin=origin,
                device_id=target.device_id,
                details={"approverDeviceId": approver.device_id, "signatureVersion": req.version},
            )
            updated = await st.get_device(conn, user_id, target.device_id)
        assert updated is not None
        return DeviceStatusResponse.from_row(updated)

    async def revoke(self, user_id: str, device_id: str, origin: RequestOrigin) -> DeviceInfo:
        now = now_ticks()
        async with self.db.write() as conn:
            await st.lock_user(conn, user_id)
            device = await st.get_device(conn, user_id, device_id)
            if device is None:
                raise errors.device_not_found()
            if device.status != REVOKED:
                await st.update_device(conn, user_id, device_id, status=REVOKED, revoked_at=now)
                await record_event(
                    conn,
                    "e2ee_device_revoked",
                    user_id=user_id,
                    origin=origin,
                    device_id=device_id,
                    details={"previousStatus": device.status},
                )
            await st.delete_wrapped_umk(conn, user_id, device_id)
            await st.close_sessions(conn, user_id, device_id, now)
            updated = await st.get_device(conn, user_id, device_id)
        assert updated is not None
        return DeviceInfo.from_row(updated)

    # ---- wrapped UMKs ----------------------------------------------------

    async def get_wrapped_umk(self, user_id: str, device_id: str) -> WrappedUmkBlob:
        async with self.db.read() as conn:
            device = await st.get_device(conn, user_id, device_id)
            if device is None:
                raise errors.device_not_found()
            blob = await st.get_wrapped_umk(conn, user_id, device_id)
        # Only an Active device gets a key; revocation deletes it anyway.
        if blob is None or device.status != ACTIVE:
            raise errors.wrapped_umk_not_found()
        return WrappedUmkBlob.from_row(blob)

    async def store_self_wrap(
        self, user_id: str, device_id: str, req: WrappedUmkUpload, origin: RequestOrigin
    ) -> WrappedUmkBlob:
        if req.created_by_device_id not in (None, device_id):
            raise errors.field_error(
                "createdByDeviceId", "must be the device itself (a device stores its own self-wrap)"
            )
        now = now_ticks()
        async with self.db.write() as conn:
            await st.lock_user(conn, user_id)
            device = await st.get_device(conn, user_id, device_id)
            if device is None:
                raise errors.device_not_found()
            if device.status != ACTIVE:
                raise errors.device_not_active()
            row = st.WrappedUmkRow(
                user_id=user_id,
                device_id=device_id,
                ciphertext=req.ciphertext,
                hkdf_salt=req.hkdf_salt,
                wrap_version=req.wrap_version,
                created_by_device_id=device_id,
                approver_signature=None,
                signature_version=None,
                onboarding_session_id=None,
                created_at=now,
            )
            await st.put_wrapped_umk(conn, row)
            turned_on = await st.enable_account(conn, user_id, now)
            await st.touch_device(conn, user_id, device_id)
            await record_event(
                conn,
                "e2ee_wrapped_umk_stored",
                user_id=user_id,
                origin=origin,
                device_id=device_id,
                details={"selfWrap": True, "e2eeEnabled": turned_on},
            )
        return WrappedUmkBlob.from_row(row)

    # ---- recovery --------------------------------------------------------

    async def status(self, user_id: str) -> E2eeStatusResponse:
        async with self.db.read() as conn:
            account = await st.get_account(conn, user_id)
        return E2eeStatusResponse.from_account(account)

    async def store_recovery(
        self, user_id: str, req: RecoveryWrappedUmkBlob, origin: RequestOrigin
    ) -> RecoveryWrappedUmkBlob:
        now = now_ticks()
        blob = req.to_blob(now)
        async with self.db.write() as conn:
            await st.lock_user(conn, user_id)
            account = await st.get_account(conn, user_id)
            # With a proof key on file, the recovery copy it belongs to cannot be swapped.
            if account is not None and account.proof_key is not None:
                raise errors.recovery_key_locked()
            await st.store_recovery(conn, user_id, blob, now)
            await record_event(
                conn,
                "e2ee_recovery_uploaded",
                user_id=user_id,
                origin=origin,
                details={"replaced": account is not None and account.has_recovery},
            )
        return RecoveryWrappedUmkBlob.from_blob(blob)

    async def get_recovery(self, user_id: str) -> RecoveryWrappedUmkBlob:
        async with self.db.read() as conn:
            account = await st.get_account(conn, user_id)
        blob = st.recovery_of(account) if account is not None else None
        if blob is None:
            raise errors.recovery_not_found()
        return RecoveryWrappedUmkBlob.from_blob(blob)

    async def store_proof_key(
        self, user_id: str, req: ProofKeyRequest, origin: RequestOrigin
    ) -> None:
        now = now_ticks()
        async with self.db.write() as conn:
            await st.lock_user(conn, user_id)
            account = await st.get_account(conn, user_id)
            if account is None or not account.has_recovery:
                raise errors.recovery_not_set_up()
            if account.proof_key is not None:
                if hmac.compare_digest(decode_b64(account.proof_key), decode_b64(req.proof_key)):
                    return  # the same key again: settled
                raise errors.proof_key_conflict()
            await st.store_proof_key(conn, user_id, req.proof_key, req.version, now)
            await record_event(
                conn,
                "e2ee_recovery_proof_key_stored",
                user_id=user_id,
                origin=origin,
                details={"version": req.version},
            )

    async def _charge_activation_attempt(self, user_id: str) -> None:
        """At most N attempts per user per window, counted in the database (all instances)."""
        now = now_ticks()
        window = self.policy.activation_window_seconds * TICKS_PER_SECOND
        async with self.db.write() as conn:
            await st.lock_user(conn, user_id)
            attempts = await st.activation_attempts_since(conn, user_id, now - window + 1)
            if len(attempts) >= self.policy.activation_attempts:
                oldest = attempts[len(attempts) - self.policy.activation_attempts]
                retry = max(1, math.ceil((oldest + window - now) / TICKS_PER_SECOND))
                raise errors.activation_rate_limited(retry)
            await st.record_activation_attempt(conn, user_id, now, now - window)

    async def activate_by_recovery(
        self, user_id: str, req: RecoveryActivationRequest, origin: RequestOrigin
    ) -> DeviceStatusResponse:
        await self._charge_activation_attempt(user_id)
        try:
            return await self._activate(user_id, req, origin)
        except ApiError as exc:
            async with self.db.write() as conn:
                await record_event(
                    conn,
                    "e2ee_recovery_activation_failed",
                    user_id=user_id,
                    origin=origin,
                    device_id=req.device_id,
                    details={"reason": exc.code},
                )
            raise

    async def _activate(
        self, user_id: str, req: RecoveryActivationRequest, origin: RequestOrigin
    ) -> DeviceStatusResponse:
        now = now_ticks()
        async with self.db.write() as conn:
            await st.lock_user(conn, user_id)
            device = await st.get_device(conn, user_id, req.device_id)
            if device is None:
                raise errors.device_not_found()
            session = await st.get_session(conn, req.onboarding_session_id)
            if not _session_usable(session, user_id, device.device_id, now) or (
                device.status != PENDING
            ):
                raise errors.invalid_onboarding_session()
            account = await st.get_account(conn, user_id)
            if account is None or not account.has_recovery:
                raise errors.recovery_not_set_up()
            if account.proof_key is not None and not verify_activation_proof(
                account.proof_key, req.onboarding_session_id, req.proof_of_possession
            ):
                raise errors.invalid_proof()

            await st.put_wrapped_umk(
                conn,
                st.WrappedUmkRow(
                    user_id=user_id,
                    device_id=device.device_id,
                    ciphertext=req.self_wrapped_umk,
                    hkdf_salt=req.hkdf_salt,
                    wrap_version=1,
                    created_by_device_id=device.device_id,
                    approver_signature=None,
                    signature_version=None,
                    onboarding_session_id=req.onboarding_session_id,
                    created_at=now,
                ),
            )
            await st.update_device(
                conn,
                user_id,
                device.device_id,
                status=ACTIVE,
                activated_at=now,
                revoked_at=None,
                last_seen_at=now,
            )
            await st.close_sessions(conn, user_id, device.device_id, now)
            await st.enable_account(conn, user_id, now)
            await record_event(
                conn,
                "e2ee_recovery_activated",
                user_id=user_id,
                origin=origin,
                device_id=device.device_id,
                details={"proofChecked": account.proof_key is not None},
            )
            updated = await st.get_device(conn, user_id, device.device_id)
        assert updated is not None
        return DeviceStatusResponse.from_row(updated)
