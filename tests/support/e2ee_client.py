"""A reference E2EE client over HTTP: what the Pia desktop client does, step by step.

It wraps an ``httpx.AsyncClient``, a user's access token and one device's keys, and performs
the client's flows against the server: register, bootstrap the first device (self-wrap, recovery
copy, proof key), approve another device (v1 or v2 signatures), fetch and unwrap its own UMK
(verifying the approval like later clients do), recover with the recovery code, and encrypt or
decrypt sync records. The crypto itself lives in :mod:`support.e2ee_crypto`.

Paths: ``style="client"`` uses the desktop client's routes (``/devices/{id}/wrapped-umk``...),
``style="reference"`` the API reference's (``/devices/wrapped-umk/{id}``...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from support.e2ee_crypto import (
    ARGON2_MEMORY_KB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    DeviceKeys,
    activation_proof,
    activation_proof_key,
    approval_payload_v1,
    approval_payload_v2,
    b64e,
    decrypt_record,
    encrypt_record,
    generate_recovery_code,
    random_umk,
    self_wrap_umk,
    unwrap_recovery_blob,
    unwrap_umk,
    verify_p1363,
    wrap_umk_for_device,
    wrap_umk_for_recovery,
)

PathStyle = Literal["client", "reference"]

DEVICE_PENDING = 0
DEVICE_ACTIVE = 1
DEVICE_REVOKED = 2


@dataclass(frozen=True)
class KdfParams:
    memory_kb: int = ARGON2_MEMORY_KB
    time_cost: int = ARGON2_TIME_COST
    parallelism: int = ARGON2_PARALLELISM


# Small Argon2 parameters so that tests stay fast; they travel in the blob like real ones.
FAST_KDF = KdfParams(memory_kb=256, time_cost=1, parallelism=4)
CLIENT_KDF = KdfParams()


class E2eeClientError(Exception):
    """The server refused a step; carries the response for the test to inspect."""

    def __init__(self, step: str, response: httpx.Response) -> None:
        self.step = step
        self.response = response
        self.status_code = response.status_code
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        self.body = body
        self.code = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"{step}: HTTP {response.status_code} {body!r}")


class UnverifiedApprovalError(Exception):
    """Like the later client's UnverifiedApprovalException: the approval does not check out."""


@dataclass(frozen=True)
class Registration:
    onboarding_session_id: str
    server_challenge: str
    is_first_device: bool


@dataclass(frozen=True)
class Bootstrap:
    umk: bytes
    recovery_code: str


@dataclass
class E2eeClient:
    http: httpx.AsyncClient
    token: str
    user_id: str
    keys: DeviceKeys = field(default_factory=DeviceKeys.generate)
    device_name: str = "Test Device"
    style: PathStyle = "client"
    umk: bytes | None = None
    registration: Registration | None = None

    # ---- plumbing ----------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self.keys.device_id

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def for_device(self, keys: DeviceKeys | None = None, **kwargs: Any) -> E2eeClient:
        """Another device of the same user, on the same HTTP client."""
        return E2eeClient(
            http=self.http,
            token=self.token,
            user_id=self.user_id,
            keys=keys or DeviceKeys.generate(),
            style=kwargs.pop("style", self.style),
            **kwargs,
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def _ok(self, step: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.request(method, path, **kwargs)
        if not response.is_success:
            raise E2eeClientError(step, response)
        return response

    def _wrapped_umk_path(self, device_id: str) -> str:
        if self.style == "client":
            return f"/api/e2ee/devices/{device_id}/wrapped-umk"
        return f"/api/e2ee/devices/wrapped-umk/{device_id}"

    # ---- reads ---------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        response = await self._ok("status", "GET", "/api/e2ee/status")
        result: dict[str, Any] = response.json()
        return result

    async def list_devices(self) -> dict[str, Any]:
        response = await self._ok("list devices", "GET", "/api/e2ee/devices")
        result: dict[str, Any] = response.json()
        return result

    async def device_info(self, device_id: str | None = None) -> dict[str, Any] | None:
        wanted = device_id or self.device_id
        for device in (await self.list_devices())["devices"]:
            if device["deviceId"] == wanted:
                return dict(device)
        return None

    async def device_status(self, device_id: str | None = None) -> int | None:
        """Like the client: any non-2xx means "not found" (None)."""
        response = await self.request(
            "GET", f"/api/e2ee/devices/{device_id or self.device_id}/status"
        )
        if not response.is_success:
            return None
        return int(response.json()["status"])

    async def wrapped_umk(self, device_id: str | None = None) -> httpx.Response:
        return await self.request("GET", self._wrapped_umk_path(device_id or self.device_id))

    # ---- registration and the first device -------------------------------------

    async def register(self) -> Registration:
        response = await self._ok(
            "register",
            "POST",
            "/api/e2ee/devices/register",
            json=self.keys.registration_body(self.device_name, "Windows 11", "1.4.300"),
        )
        body = response.json()
        self.registration = Registration(
            onboarding_session_id=body["onboardingSessionId"],
            server_challenge=body["serverChallenge"],
            is_first_device=bool(body["isFirstDevice"]),
        )
        return self.registration

    async def upload_self_wrap(self, umk: bytes | None = None) -> httpx.Response:
        umk = umk if umk is not None else self.umk
        assert umk is not None, "no UMK to wrap"
        ciphertext, salt = self_wrap_umk(self.keys, umk)
        blob = {
            "deviceId": self.device_id,
            "ciphertext": ciphertext,
            "hkdfSalt": salt,
            "wrapVersion": 1,
            "createdByDeviceId": self.device_id,
            "createdAt": "2026-03-27T12:34:56.1234567Z",
        }
        if self.style == "client":
            return await self._ok(
                "self-wrap", "POST", f"/api/e2ee/devices/{self.device_id}/wrapped-umk", json=blob
            )
        return await self._ok("self-wrap", "PUT", "/api/e2ee/devices/wrapped-umk", json=blob)

    async def upload_recovery(
        self, recovery_code: str, kdf: KdfParams = FAST_KDF
    ) -> dict[str, Any]:
        assert self.umk is not None
        blob = wrap_umk_for_recovery(
            recovery_code, self.umk, kdf.memory_kb, kdf.time_cost, kdf.parallelism
        )
        await self._ok("recovery upload", "POST", "/api/e2ee/recovery/wrapped-umk", json=blob)
        return blob

    async def upload_proof_key(self) -> httpx.Response:
        assert self.umk is not None
        body = {"proofKey": b64e(activation_proof_key(self.umk)), "version": 1}
        return await self._ok("proof key", "PUT", "/api/e2ee/recovery/proof-key", json=body)

    async def bootstrap_first_device(
        self, kdf: KdfParams = FAST_KDF, with_proof_key: bool = True
    ) -> Bootstrap:
        """BootstrapFirstDeviceAsync: status, register, UMK, self-wrap, recovery, proof key."""
        if (await self.status())["isEnabled"]:
            raise RuntimeError("E2EE is already enabled for this account")
        registration = await self.register()
        if not registration.is_first_device:
            raise RuntimeError("the server did not treat this device as the first one")
        self.umk = random_umk()
        await self.upload_self_wrap()
        code = generate_recovery_code()
        await self.upload_recovery(code, kdf)
        if with_proof_key:
            await self.upload_proof_key()
        return Bootstrap(umk=self.umk, recovery_code=code)

    # ---- approving another device ------------------------------------------------

    def build_approval(
        self,
        *,
        session_id: str,
        target_device_id: str,
        target_agreement_key: str,
        signature_version: int = 2,
    ) -> dict[str, Any]:
        """A signed DeviceApprovalRequest carrying the UMK wrapped for the target."""
        assert self.umk is not None
        wrapped, salt = wrap_umk_for_device(
            self.keys, target_device_id, target_agreement_key, self.umk
        )
        if signature_version == 2:
            payload = approval_payload_v2(
                session_id, target_device_id, target_agreement_key, wrapped, salt
            )
        else:
            payload = approval_payload_v1(session_id, target_device_id, target_agreement_key)
        body: dict[str, Any] = {
            "onboardingSessionId": session_id,
            "targetDeviceId": target_device_id,
            "wrappedUmk": wrapped,
            "hkdfSalt": salt,
            "approverSignature": self.keys.sign(payload),
            "approverDeviceId": self.device_id,
        }
        # Early clients (v1) do not send the field at all.
        if signature_version != 1:
            body["signatureVersion"] = signature_version
        return body

    async def send_approval(self, body: dict[str, Any]) -> httpx.Response:
        return await self.request("POST", "/api/e2ee/devices/approve", json=body)

    async def pending_devices(self) -> list[dict[str, Any]]:
        """What the client offers for approval: Pending with an onboarding session."""
        return [
            d
            for d in (await self.list_devices())["devices"]
            if d["status"] == DEVICE_PENDING and d.get("onboardingSessionId")
        ]

    async def approve(self, target_device_id: str, signature_version: int = 2) -> dict[str, Any]:
        for device in await self.pending_devices():
            if device["deviceId"] == target_device_id:
                body = self.build_approval(
                    session_id=device["onboardingSessionId"],
                    target_device_id=target_device_id,
                    target_agreement_key=device["agreementPublicKey"],
                    signature_version=signature_version,
                )
                response = await self.send_approval(body)
                if not response.is_success:
                    raise E2eeClientError("approve", response)
                return body
        raise LookupError(f"device {target_device_id} is not waiting for approval")

    # ---- receiving the UMK -----------------------------------------------------------

    async def fetch_umk(self) -> bytes:
        """GET the own wrapped UMK, verify who made it (later clients), unwrap it."""
        response = await self.wrapped_umk()
        if not response.is_success:
            raise E2eeClientError("fetch wrapped umk", response)
        blob = response.json()
        devices = {d["deviceId"]: d for d in (await self.list_devices())["devices"]}
        creator_id = blob["createdByDeviceId"]
        creator = devices.get(creator_id)
        if creator is None:
            raise UnverifiedApprovalError("the wrapping device is unknown")
        if creator_id != self.device_id:
            if creator["status"] != DEVICE_ACTIVE or not blob.get("approverSignature"):
                raise UnverifiedApprovalError("the approver is not an active device")
            own_key = self.keys.agreement_public_b64
            sid = blob.get("onboardingSessionId") or ""
            if int(blob.get("signatureVersion") or 1) == 2:
                payload = approval_payload_v2(
                    sid, self.device_id, own_key, blob["ciphertext"], blob["hkdfSalt"]
                )
            else:
                payload = approval_payload_v1(sid, self.device_id, own_key)
            if not verify_p1363(creator["signingPublicKey"], payload, blob["approverSignature"]):
                raise UnverifiedApprovalError("the approval signature does not verify")
        self.umk = unwrap_umk(
            self.keys, creator["agreementPublicKey"], blob["ciphertext"], blob["hkdfSalt"]
        )
        return self.umk

    # ---- recovery ------------------------------------------------------------------------

    async def recovery_blob(self) -> dict[str, Any]:
        response = await self._ok("recovery blob", "GET", "/api/e2ee/recovery/wrapped-umk")
        result: dict[str, Any] = response.json()
        return result

    def activation_body(self, umk: bytes, session_id: str) -> dict[str, Any]:
        ciphertext, salt = self_wrap_umk(self.keys, umk)
        return {
            "deviceId": self.device_id,
            "selfWrappedUmk": ciphertext,
            "hkdfSalt": salt,
            "proofOfPossession": activation_proof(umk, session_id),
            "onboardingSessionId": session_id,
        }

    async def recover(self, recovery_code: str) -> bytes:
        """Recovery route: register, unwrap the recovery copy, self-wrap, prove, activate."""
        registration = await self.register()
        umk = unwrap_recovery_blob(recovery_code, await self.recovery_blob())
        body = self.activation_body(umk, registration.onboarding_session_id)
        await self._ok("activate", "POST", "/api/e2ee/recovery/activate", json=body)
        self.umk = umk
        return umk

    async def revoke(self, device_id: str) -> httpx.Response:
        if self.style == "client":
            # PostAsync(url, null): no body, no Content-Type.
            return await self._ok("revoke", "POST", f"/api/e2ee/devices/{device_id}/revoke")
        return await self._ok(
            "revoke", "POST", "/api/e2ee/devices/revoke", json={"deviceId": device_id}
        )

    # ---- sync records --------------------------------------------------------------------

    def encrypt(
        self, entity_type: str, entity_id: str, payload: dict[str, Any], compress: bool = True
    ) -> tuple[str, str]:
        """(encryptedPayload, wrappedDek) for one record, as the client pushes it."""
        assert self.umk is not None
        return encrypt_record(self.umk, self.user_id, entity_type, entity_id, payload, compress)

    def decrypt(
        self, entity_type: str, entity_id: str, encrypted_payload: str, wrapped_dek: str
    ) -> dict[str, Any]:
        assert self.umk is not None
        return decrypt_record(
            self.umk, self.user_id, entity_type, entity_id, encrypted_payload, wrapped_dek
        )
