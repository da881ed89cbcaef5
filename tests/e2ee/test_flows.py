"""The client's E2EE flows end to end, with the reference client, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from pia_server.core.audit import audit_events
from support.e2ee_client import (
    CLIENT_KDF,
    DEVICE_ACTIVE,
    DEVICE_PENDING,
    DEVICE_REVOKED,
    E2eeClient,
    PathStyle,
)
from support.e2ee_crypto import DeviceKeys, fingerprint_of, unwrap_recovery_blob

from .conftest import E2eeFactory

TIMESTAMP_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z$")
DEVICE_INFO_KEYS = {
    "deviceId",
    "deviceName",
    "status",
    "agreementPublicKey",
    "signingPublicKey",
    "fingerprint",
    "onboardingSessionId",
    "osVersion",
    "appVersion",
    "createdAt",
    "activatedAt",
    "revokedAt",
    "lastSeenAt",
}


async def audit_names(app: FastAPI, user_id: str) -> list[str]:
    async with app.state.ctx.db.read() as conn:
        rows = await conn.execute(
            select(audit_events.c.event)
            .where(audit_events.c.user_id == user_id)
            .order_by(audit_events.c.id)
        )
        return [str(r) for r in rows.scalars()]


async def approved_pair(
    new_device: E2eeFactory, style: PathStyle = "client", version: int = 2
) -> tuple[E2eeClient, E2eeClient]:
    first = await new_device(style=style)
    await first.bootstrap_first_device()
    second = first.for_device()
    await second.register()
    await first.approve(second.device_id, signature_version=version)
    await second.fetch_umk()
    return first, second


@pytest.mark.parametrize("style", ["client", "reference"])
async def test_first_device_bootstrap(
    new_device: E2eeFactory, app: FastAPI, style: PathStyle
) -> None:
    first = await new_device(style=style)
    before = await first.status()
    assert before == {
        "isEnabled": False,
        "umkVersion": 0,
        "hasRecoveryKey": False,
        "hasRecoveryProofKey": False,
    }

    boot = await first.bootstrap_first_device()

    assert await first.status() == {
        "isEnabled": True,
        "umkVersion": 1,
        "hasRecoveryKey": True,
        "hasRecoveryProofKey": True,
    }
    assert await first.device_status() == DEVICE_ACTIVE
    # The device gets back exactly the UMK it wrapped for itself.
    first.umk = None
    assert await first.fetch_umk() == boot.umk
    # The recovery copy opens with the code.
    assert unwrap_recovery_blob(boot.recovery_code, await first.recovery_blob()) == boot.umk

    listing = await first.list_devices()
    assert listing["hasRecoveryKey"] is True
    assert listing["umkVersion"] == 1
    [info] = listing["devices"]
    assert set(info) == DEVICE_INFO_KEYS
    assert info["status"] == DEVICE_ACTIVE
    assert info["fingerprint"] == fingerprint_of(first.keys.agreement_public_b64)
    assert info["onboardingSessionId"] is None
    assert info["revokedAt"] is None
    for key in ("createdAt", "activatedAt", "lastSeenAt"):
        assert TIMESTAMP_Z.match(info[key]), info[key]

    events = await audit_names(app, first.user_id)
    assert "e2ee_device_registered" in events
    assert "e2ee_recovery_uploaded" in events


async def test_bootstrap_register_response_shape(new_device: E2eeFactory) -> None:
    first = await new_device()
    response = await first.request(
        "POST", "/api/e2ee/devices/register", json=first.keys.registration_body()
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    # Required keys of DeviceRegistrationResponse are present and non-null.
    assert isinstance(body["onboardingSessionId"], str)
    assert body["onboardingSessionId"]
    assert isinstance(body["serverChallenge"], str)
    assert body["serverChallenge"]
    assert body["isFirstDevice"] is True


@pytest.mark.parametrize(("style", "version"), [("client", 1), ("client", 2), ("reference", 2)])
async def test_second_device_approved_unwraps_same_umk(
    new_device: E2eeFactory, app: FastAPI, style: PathStyle, version: int
) -> None:
    first = await new_device(style=style)
    boot = await first.bootstrap_first_device()
    second = first.for_device()
    registration = await second.register()
    assert registration.is_first_device is False
    assert await second.device_status() == DEVICE_PENDING

    # The approver sees the pending device with its open session.
    [pending] = await first.pending_devices()
    assert pending["deviceId"] == second.device_id
    assert pending["onboardingSessionId"] == registration.onboarding_session_id
    assert pending["fingerprint"] == second.keys.fingerprint
    # Nothing to fetch before approval.
    assert (await second.wrapped_umk()).status_code == 404

    await first.approve(second.device_id, signature_version=version)

    assert await second.device_status() == DEVICE_ACTIVE
    assert await second.fetch_umk() == boot.umk
    blob = (await second.wrapped_umk()).json()
    assert blob["createdByDeviceId"] == first.device_id
    assert blob["signatureVersion"] == version
    assert blob["onboardingSessionId"] == registration.onboarding_session_id
    info = await first.device_info(second.device_id)
    assert info is not None
    assert info["onboardingSessionId"] is None
    assert TIMESTAMP_Z.match(info["activatedAt"])
    assert "e2ee_device_approved" in await audit_names(app, first.user_id)

    # Records encrypted by one device open on the other.
    record = {"Name": "T", "Prompt": "P", "Description": "D", "StyleDescription": "S"}
    payload, dek = first.encrypt("template", "6f9619ff-8b86-d011-b42d-00c04fc964ff", record)
    assert second.decrypt("template", "6f9619ff-8b86-d011-b42d-00c04fc964ff", payload, dek) == (
        record
    )


async def test_third_device_activated_by_recovery_code(
    new_device: E2eeFactory, app: FastAPI
) -> None:
    first = await new_device()
    boot = await first.bootstrap_first_device()
    second = first.for_device()
    await second.register()
    await first.approve(second.device_id)
    await second.fetch_umk()

    third = first.for_device()
    assert await third.recover(boot.recovery_code) == boot.umk
    assert await third.device_status() == DEVICE_ACTIVE
    third.umk = None
    assert await third.fetch_umk() == second.umk == boot.umk
    listing = await first.list_devices()
    assert [d["status"] for d in listing["devices"]] == [DEVICE_ACTIVE] * 3
    assert "e2ee_recovery_activated" in await audit_names(app, first.user_id)


async def test_recovery_with_proof_key_and_client_argon2(
    new_device: E2eeFactory, app: FastAPI
) -> None:
    """The one test with the client's real Argon2id parameters (64 MiB, 3 passes, 4 lanes)."""
    first = await new_device()
    boot = await first.bootstrap_first_device(kdf=CLIENT_KDF)
    blob = await first.recovery_blob()
    assert (blob["kdfMemoryCostKb"], blob["kdfTimeCost"], blob["kdfParallelism"]) == (65536, 3, 4)

    third = first.for_device()
    umk = await third.recover(boot.recovery_code)

    assert umk == boot.umk
    assert await third.device_status() == DEVICE_ACTIVE
    third.umk = None
    assert await third.fetch_umk() == boot.umk
    events = await audit_names(app, first.user_id)
    assert "e2ee_recovery_activated" in events


async def test_recovery_without_proof_key_on_file(new_device: E2eeFactory) -> None:
    """Early clients never upload a proof key; activation then rests on the session alone."""
    first = await new_device()
    boot = await first.bootstrap_first_device(with_proof_key=False)
    assert (await first.status())["hasRecoveryProofKey"] is False
    other = first.for_device(style="reference")
    assert await other.recover(boot.recovery_code) == boot.umk
    assert await other.device_status() == DEVICE_ACTIVE


@pytest.mark.parametrize("style", ["client", "reference"])
async def test_revoked_device_refused_its_wrapped_umk(
    new_device: E2eeFactory, app: FastAPI, style: PathStyle
) -> None:
    first, second = await approved_pair(new_device, style=style)
    assert (await second.wrapped_umk()).status_code == 200

    await first.revoke(second.device_id)

    assert await second.device_status() == DEVICE_REVOKED
    info = await first.device_info(second.device_id)
    assert info is not None
    assert info["status"] == DEVICE_REVOKED
    assert TIMESTAMP_Z.match(info["revokedAt"])
    for path in (
        f"/api/e2ee/devices/{second.device_id}/wrapped-umk",
        f"/api/e2ee/devices/wrapped-umk/{second.device_id}",
    ):
        response = await second.request("GET", path)
        assert response.status_code == 404
        assert response.json()["error"] == "wrapped_umk_not_found"
    # A revoked device cannot store a key for itself either.
    refused = await second.request(
        "POST",
        f"/api/e2ee/devices/{second.device_id}/wrapped-umk",
        json={"deviceId": second.device_id, "ciphertext": "A" * 80, "hkdfSalt": "A" * 44},
    )
    assert refused.status_code == 403
    assert "e2ee_device_revoked" in await audit_names(app, first.user_id)


async def test_revoke_with_empty_body_no_content_type(new_device: E2eeFactory) -> None:
    first, second = await approved_pair(new_device)
    response = await first.http.post(
        f"/api/e2ee/devices/{second.device_id}/revoke",
        headers={**first.headers, "Content-Length": "0"},
        content=b"",
    )
    assert response.status_code == 200, response.text
    assert "content-type" not in response.request.headers
    assert response.json()["status"] == DEVICE_REVOKED
    # Revoking again is harmless and keeps the first revocation time.
    again = await first.http.post(
        f"/api/e2ee/devices/{second.device_id}/revoke", headers=first.headers
    )
    assert again.status_code == 200
    assert again.json()["revokedAt"] == response.json()["revokedAt"]


async def test_revoked_device_registering_again_needs_new_approval(new_device: E2eeFactory) -> None:
    first, second = await approved_pair(new_device)
    await first.revoke(second.device_id)

    # Same id, new keys (the client regenerates them): Pending again, never Active by itself.
    reborn = first.for_device(keys=DeviceKeys.generate(second.device_id))
    registration = await reborn.register()
    assert registration.is_first_device is False
    assert await reborn.device_status() == DEVICE_PENDING
    info = await first.device_info(reborn.device_id)
    assert info is not None
    assert info["agreementPublicKey"] == reborn.keys.agreement_public_b64
    assert info["revokedAt"] is None
    assert (await reborn.wrapped_umk()).status_code == 404

    await first.approve(reborn.device_id)
    assert await reborn.fetch_umk() == first.umk


async def test_reregistering_active_device_never_demotes(new_device: E2eeFactory) -> None:
    first, second = await approved_pair(new_device)
    for device in (first, second):
        again = await device.register()
        assert again.is_first_device is False
        assert await device.device_status() == DEVICE_ACTIVE
        # Its key is still there.
        assert (await device.wrapped_umk()).status_code == 200
    # An onboarding id handed to an active device opens nothing.
    again = await second.register()
    body = second.activation_body(second.umk or b"", again.onboarding_session_id)
    refused = await second.request("POST", "/api/e2ee/recovery/activate", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_onboarding_session"


async def test_active_device_with_other_keys_is_refused(new_device: E2eeFactory) -> None:
    first, second = await approved_pair(new_device)
    impostor = first.for_device(keys=DeviceKeys.generate(second.device_id))
    response = await impostor.request(
        "POST", "/api/e2ee/devices/register", json=impostor.keys.registration_body()
    )
    assert response.status_code == 409
    assert response.json()["error"] == "device_keys_changed"
    info = await first.device_info(second.device_id)
    assert info is not None
    assert info["status"] == DEVICE_ACTIVE
    assert info["signingPublicKey"] == second.keys.signing_public_b64


async def test_bootstrap_retried_before_self_wrap_is_still_first(new_device: E2eeFactory) -> None:
    first = await new_device()
    assert (await first.register()).is_first_device is True
    # The client crashed before its self-wrap: the retried bootstrap must still succeed.
    boot = await first.bootstrap_first_device()
    assert await first.fetch_umk() == boot.umk
    # Once the account has a UMK, a new device is never "first", even with no active device.
    await first.revoke(first.device_id)
    late = first.for_device()
    assert (await late.register()).is_first_device is False
    assert await late.device_status() == DEVICE_PENDING


async def test_pending_reregistration_gets_fresh_session(new_device: E2eeFactory) -> None:
    first = await new_device()
    await first.bootstrap_first_device()
    second = first.for_device()
    old = await second.register()
    new = await second.register()
    assert new.onboarding_session_id != old.onboarding_session_id
    [pending] = await first.pending_devices()
    assert pending["onboardingSessionId"] == new.onboarding_session_id
    # The superseded session no longer approves anything.
    stale = first.build_approval(
        session_id=old.onboarding_session_id,
        target_device_id=second.device_id,
        target_agreement_key=second.keys.agreement_public_b64,
    )
    response = await first.send_approval(stale)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_onboarding_session"


async def test_two_devices_registering_at_once_only_one_is_first(
    new_device: E2eeFactory,
) -> None:
    import asyncio

    first = await new_device()
    second = first.for_device()
    results = await asyncio.gather(first.register(), second.register())
    assert sorted(r.is_first_device for r in results) == [False, True]
    statuses = [await first.device_status(), await second.device_status()]
    assert None not in statuses
    assert sorted(s for s in statuses if s is not None) == [DEVICE_PENDING, DEVICE_ACTIVE]


async def test_device_routes_require_a_token(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/e2ee/devices"),
        ("GET", "/api/e2ee/status"),
        ("POST", "/api/e2ee/devices/register"),
        ("POST", "/api/e2ee/recovery/activate"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 401, path
