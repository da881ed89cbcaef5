"""What the server refuses: forged, replayed or misdirected approvals, expired sessions, wrong
proofs, other users' ids, the activation limit, and malformed keys and blobs. Every refusal
leaves the state as it was."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from conftest import SettingsFactory, client_for, create_test_user, running_app
from pia_server.core.wire import now_ticks
from pia_server.e2ee.storage import (
    e2ee_activation_attempts,
    e2ee_onboarding_sessions,
    e2ee_wrapped_umks,
)
from support.e2ee_client import DEVICE_ACTIVE, DEVICE_PENDING, E2eeClient
from support.e2ee_crypto import (
    DeviceKeys,
    activation_proof,
    approval_payload_v1,
    b64e,
    random_umk,
)

from .conftest import E2eeFactory


async def bootstrapped_with_pending(
    new_device: E2eeFactory,
) -> tuple[E2eeClient, E2eeClient, str]:
    first = await new_device()
    await first.bootstrap_first_device()
    pending = first.for_device()
    registration = await pending.register()
    return first, pending, registration.onboarding_session_id


async def snapshot(first: E2eeClient, target: E2eeClient) -> tuple[Any, ...]:
    """What an approval would change, to show a refusal changed nothing."""
    info = await first.device_info(target.device_id)
    return (
        info,
        await target.device_status(),
        (await target.wrapped_umk()).status_code,
        await first.status(),
    )


def approval(first: E2eeClient, target: E2eeClient, sid: str, version: int = 2) -> dict[str, Any]:
    return first.build_approval(
        session_id=sid,
        target_device_id=target.device_id,
        target_agreement_key=target.keys.agreement_public_b64,
        signature_version=version,
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


# ---- approvals ---------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
async def test_forged_signature_is_refused_and_changes_nothing(
    new_device: E2eeFactory, version: int
) -> None:
    first, target, sid = await bootstrapped_with_pending(new_device)
    before = await snapshot(first, target)
    body = approval(first, target, sid, version)
    # Signed by a key that is not the approver's.
    forger = DeviceKeys.generate(first.device_id)
    body["approverSignature"] = forger.sign(
        approval_payload_v1(sid, target.device_id, target.keys.agreement_public_b64)
    )
    assert_error(await first.send_approval(body), 400, "invalid_signature")
    assert await snapshot(first, target) == before

    # The genuine approval still works afterwards: the session was not spent.
    response = await first.send_approval(approval(first, target, sid, version))
    assert response.status_code == 200
    assert await target.device_status() == DEVICE_ACTIVE


async def test_v2_signature_covers_the_wrapped_key(new_device: E2eeFactory) -> None:
    first, target, sid = await bootstrapped_with_pending(new_device)
    before = await snapshot(first, target)
    body = approval(first, target, sid, 2)
    # A key for someone else (or garbage) under a genuine signature: refused.
    other = approval(first, target, sid, 2)
    body["wrappedUmk"] = other["wrappedUmk"]
    assert_error(await first.send_approval(body), 400, "invalid_signature")
    # A v1 signature presented as v2 does not verify either.
    v1 = approval(first, target, sid, 1)
    v1["signatureVersion"] = 2
    assert_error(await first.send_approval(v1), 400, "invalid_signature")
    # Nor one over another device's key (the approver was shown another fingerprint).
    wrong_key = first.build_approval(
        session_id=sid,
        target_device_id=target.device_id,
        target_agreement_key=DeviceKeys.generate().agreement_public_b64,
    )
    assert_error(await first.send_approval(wrong_key), 400, "invalid_signature")
    assert await snapshot(first, target) == before


async def test_replayed_approval_is_refused(new_device: E2eeFactory) -> None:
    first, target, sid = await bootstrapped_with_pending(new_device)
    body = approval(first, target, sid)
    assert (await first.send_approval(body)).status_code == 200
    await target.fetch_umk()
    before = await snapshot(first, target)
    stored = (await target.wrapped_umk()).json()

    body = assert_error(await first.send_approval(body), 400, "invalid_onboarding_session")
    assert body["message"] == "Invalid or expired onboarding session"
    # A fresh wrap under the spent session is no better.
    assert_error(
        await first.send_approval(approval(first, target, sid)), 400, "invalid_onboarding_session"
    )
    assert await snapshot(first, target) == before
    assert (await target.wrapped_umk()).json() == stored


async def test_expired_session_is_refused(new_device: E2eeFactory, app: FastAPI) -> None:
    first, target, sid = await bootstrapped_with_pending(new_device)
    async with app.state.ctx.db.write() as conn:
        await conn.execute(
            update(e2ee_onboarding_sessions)
            .where(e2ee_onboarding_sessions.c.id == sid)
            .values(expires_at=now_ticks() - 1)
        )
    before = await snapshot(first, target)
    body = assert_error(
        await first.send_approval(approval(first, target, sid)), 400, "invalid_onboarding_session"
    )
    # The early client re-registers when the message says "expired" or "Invalid".
    assert "expired" in body["message"]
    assert "Invalid" in body["message"]
    assert umk_of(first)
    activation = target.activation_body(umk_of(first), sid)
    assert_error(
        await target.request("POST", "/api/e2ee/recovery/activate", json=activation),
        400,
        "invalid_onboarding_session",
    )
    assert await snapshot(first, target) == before

    # Re-registering opens a new session that works.
    fresh = await target.register()
    await first.approve(target.device_id)
    assert fresh.onboarding_session_id != sid
    assert await target.device_status() == DEVICE_ACTIVE


def umk_of(device: E2eeClient) -> bytes:
    assert device.umk is not None
    return device.umk


async def test_only_an_active_device_can_approve(new_device: E2eeFactory) -> None:
    first, target, sid = await bootstrapped_with_pending(new_device)
    other = first.for_device()
    await other.register()
    other.umk = umk_of(first)
    before = await snapshot(first, target)
    assert_error(
        await other.send_approval(approval(other, target, sid)), 403, "approver_not_active"
    )
    assert await snapshot(first, target) == before


async def test_session_of_another_device_does_not_approve(new_device: E2eeFactory) -> None:
    first, target, _sid = await bootstrapped_with_pending(new_device)
    bystander = first.for_device()
    other_sid = (await bystander.register()).onboarding_session_id
    before = await snapshot(first, target)
    assert_error(
        await first.send_approval(approval(first, target, other_sid)),
        400,
        "invalid_onboarding_session",
    )
    assert await snapshot(first, target) == before


# ---- other users' ids --------------------------------------------------------------


async def test_other_users_devices_are_404(new_device: E2eeFactory) -> None:
    alice, alice_pending, alice_sid = await bootstrapped_with_pending(new_device)
    mallory = await new_device()
    await mallory.bootstrap_first_device()
    before = await snapshot(alice, alice_pending)

    for method, path in [
        ("GET", f"/api/e2ee/devices/{alice.device_id}/status"),
        ("GET", f"/api/e2ee/devices/{alice.device_id}/wrapped-umk"),
        ("GET", f"/api/e2ee/devices/wrapped-umk/{alice.device_id}"),
        ("POST", f"/api/e2ee/devices/{alice.device_id}/revoke"),
    ]:
        response = await mallory.request(method, path)
        assert_error(response, 404, "device_not_found")
    response = await mallory.request(
        "POST", "/api/e2ee/devices/revoke", json={"deviceId": alice.device_id}
    )
    assert_error(response, 404, "device_not_found")

    # Mallory approving Alice's pending device, with Alice's session, from her own device.
    forged = mallory.build_approval(
        session_id=alice_sid,
        target_device_id=alice_pending.device_id,
        target_agreement_key=alice_pending.keys.agreement_public_b64,
    )
    assert_error(await mallory.send_approval(forged), 404, "device_not_found")
    # ... or naming Alice's active device as the approver.
    forged["approverDeviceId"] = alice.device_id
    assert_error(await mallory.send_approval(forged), 404, "device_not_found")

    # Mallory storing a key for Alice's device.
    response = await mallory.request(
        "POST",
        f"/api/e2ee/devices/{alice.device_id}/wrapped-umk",
        json={
            "deviceId": alice.device_id,
            "ciphertext": b64e(bytes(60)),
            "hkdfSalt": b64e(bytes(32)),
        },
    )
    assert_error(response, 404, "device_not_found")

    # Mallory's list shows only her device, and Alice's state is untouched.
    listing = await mallory.list_devices()
    assert [d["deviceId"] for d in listing["devices"]] == [mallory.device_id]
    assert await snapshot(alice, alice_pending) == before
    assert await alice.device_status() == DEVICE_ACTIVE


async def test_same_device_id_in_two_accounts_is_two_devices(new_device: E2eeFactory) -> None:
    """One machine, two accounts: the device id is per user."""
    alice = await new_device()
    await alice.bootstrap_first_device()
    bob = await new_device(keys=DeviceKeys.generate(alice.device_id))
    registration = await bob.register()
    assert registration.is_first_device is True
    await bob.revoke(bob.device_id)
    assert await alice.device_status() == DEVICE_ACTIVE


async def test_activation_with_another_users_session_is_refused(new_device: E2eeFactory) -> None:
    _alice, alice_pending, alice_sid = await bootstrapped_with_pending(new_device)
    mallory = await new_device()
    boot = await mallory.bootstrap_first_device()
    mallory_new = mallory.for_device(keys=DeviceKeys.generate(alice_pending.device_id))
    await mallory_new.register()
    body = mallory_new.activation_body(boot.umk, alice_sid)
    response = await mallory_new.request("POST", "/api/e2ee/recovery/activate", json=body)
    assert_error(response, 400, "invalid_onboarding_session")
    assert await alice_pending.device_status() == DEVICE_PENDING


# ---- recovery activation -------------------------------------------------------------


async def test_wrong_proof_is_refused_and_changes_nothing(new_device: E2eeFactory) -> None:
    first = await new_device()
    await first.bootstrap_first_device()
    target = first.for_device()
    sid = (await target.register()).onboarding_session_id
    before = await snapshot(first, target)

    wrong_umk = random_umk()
    body = target.activation_body(wrong_umk, sid)
    response = await target.request("POST", "/api/e2ee/recovery/activate", json=body)
    assert_error(response, 400, "invalid_proof")
    # Right key, proof over another session id.
    body = target.activation_body(umk_of(first), sid)
    body["proofOfPossession"] = activation_proof(umk_of(first), sid + "x")
    assert_error(
        await target.request("POST", "/api/e2ee/recovery/activate", json=body), 400, "invalid_proof"
    )
    # No proof at all while a proof key is on file.
    body["proofOfPossession"] = None
    assert_error(
        await target.request("POST", "/api/e2ee/recovery/activate", json=body), 400, "invalid_proof"
    )
    assert await snapshot(first, target) == before

    # The session is still usable with the right proof.
    body = target.activation_body(umk_of(first), sid)
    ok = await target.request("POST", "/api/e2ee/recovery/activate", json=body)
    assert ok.status_code == 200, ok.text
    assert await target.device_status() == DEVICE_ACTIVE


async def test_activation_limit_is_shared_across_instances(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    async with running_app(settings) as app_a, running_app(settings) as app_b:
        user = await create_test_user(app_a)
        async with client_for(app_a) as http_a, client_for(app_b) as http_b:
            first = E2eeClient(http=http_a, token=user.token, user_id=user.id)
            await first.bootstrap_first_device()
            device_a = first.for_device()
            sid = (await device_a.register()).onboarding_session_id
            device_b = E2eeClient(
                http=http_b, token=user.token, user_id=user.id, keys=device_a.keys
            )
            body = device_a.activation_body(random_umk(), sid)

            codes = []
            for i in range(5):
                device = device_a if i % 2 == 0 else device_b
                response = await device.request("POST", "/api/e2ee/recovery/activate", json=body)
                codes.append(response.status_code)
            assert codes == [400] * 5
            # The sixth attempt, on either instance, is refused even with the right proof.
            good = device_b.activation_body(umk_of(first), sid)
            refused = await device_b.request("POST", "/api/e2ee/recovery/activate", json=good)
            assert_error(refused, 429, "rate_limited")
            retry_after = int(refused.headers["Retry-After"])
            assert 3500 <= retry_after <= 3600
            assert refused.json()["retryAfter"] == retry_after
            assert await device_a.device_status() == DEVICE_PENDING

            # An hour later the budget is back.
            async with app_a.state.ctx.db.write() as conn:
                await conn.execute(
                    update(e2ee_activation_attempts).values(
                        attempted_at=e2ee_activation_attempts.c.attempted_at - 3600 * 10**7
                    )
                )
            ok = await device_a.request("POST", "/api/e2ee/recovery/activate", json=good)
            assert ok.status_code == 200, ok.text
            async with app_a.state.ctx.db.read() as conn:
                count = await conn.scalar(
                    select(func.count()).select_from(e2ee_activation_attempts)
                )
            assert count == 1  # old attempts were pruned


async def test_activation_limit_is_per_user(new_device: E2eeFactory) -> None:
    first = await new_device()
    await first.bootstrap_first_device()
    target = first.for_device()
    sid = (await target.register()).onboarding_session_id
    body = target.activation_body(random_umk(), sid)
    for _ in range(5):
        await target.request("POST", "/api/e2ee/recovery/activate", json=body)
    limited = await target.request("POST", "/api/e2ee/recovery/activate", json=body)
    assert limited.status_code == 429

    other = await new_device()
    boot = await other.bootstrap_first_device()
    assert await other.for_device().recover(boot.recovery_code) == boot.umk


async def test_activation_needs_a_recovery_copy(new_device: E2eeFactory) -> None:
    first = await new_device()
    await first.register()
    first.umk = random_umk()
    await first.upload_self_wrap()
    target = first.for_device()
    sid = (await target.register()).onboarding_session_id
    body = target.activation_body(umk_of(first), sid)
    response = await target.request("POST", "/api/e2ee/recovery/activate", json=body)
    assert_error(response, 409, "recovery_not_set_up")
    assert await target.device_status() == DEVICE_PENDING


# ---- recovery blob and proof key ---------------------------------------------------


async def test_recovery_blob_kept_exactly_as_sent(new_device: E2eeFactory) -> None:
    first = await new_device()
    await first.register()
    first.umk = random_umk()
    await first.upload_self_wrap()
    missing = await first.request("GET", "/api/e2ee/recovery/wrapped-umk")
    assert_error(missing, 404, "recovery_not_found")
    blob = {
        "Ciphertext": b64e(bytes(range(60))),
        "KdfSalt": b64e(bytes(32)),
        "KdfMemoryCostKb": 19456,
        "KdfTimeCost": 2,
        "KdfParallelism": 1,
        "WrapVersion": 1,
        "UmkVersion": 1,
        "CreatedAt": "2026-03-27T12:34:56.1234567Z",
    }
    response = await first.request("POST", "/api/e2ee/recovery/wrapped-umk", json=blob)
    assert response.status_code == 200, response.text
    stored = await first.recovery_blob()
    assert stored == {
        "ciphertext": blob["Ciphertext"],
        "kdfSalt": blob["KdfSalt"],
        "kdfMemoryCostKb": 19456,
        "kdfTimeCost": 2,
        "kdfParallelism": 1,
        "wrapVersion": 1,
        "umkVersion": 1,
        "createdAt": "2026-03-27T12:34:56.1234567Z",
    }


async def test_proof_key_rules(new_device: E2eeFactory) -> None:
    first = await new_device()
    await first.register()
    first.umk = random_umk()
    await first.upload_self_wrap()
    body = {"proofKey": b64e(bytes(32)), "version": 1}

    early = await first.request("PUT", "/api/e2ee/recovery/proof-key", json=body)
    assert_error(early, 409, "recovery_not_set_up")

    await first.upload_recovery("AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GG")
    ok = await first.request("PUT", "/api/e2ee/recovery/proof-key", json=body)
    assert ok.status_code == 204
    assert ok.content == b""
    again = await first.request("PUT", "/api/e2ee/recovery/proof-key", json=body)
    assert again.status_code == 204
    other = await first.request(
        "PUT", "/api/e2ee/recovery/proof-key", json={"proofKey": b64e(bytes([1]) * 32)}
    )
    assert_error(other, 409, "proof_key_conflict")
    bad = await first.request("PUT", "/api/e2ee/recovery/proof-key", json={"proofKey": "AAAA"})
    assert bad.status_code == 400
    # With a proof key on file the recovery copy is locked.
    blob_before = await first.recovery_blob()
    locked = await first.request(
        "POST",
        "/api/e2ee/recovery/wrapped-umk",
        json={"ciphertext": b64e(bytes(60)), "kdfSalt": b64e(bytes(32))},
    )
    assert_error(locked, 409, "recovery_key_locked")
    assert await first.recovery_blob() == blob_before


# ---- self-wraps ------------------------------------------------------------------------


async def test_only_an_active_device_stores_its_own_key(
    new_device: E2eeFactory, app: FastAPI
) -> None:
    first = await new_device()
    await first.bootstrap_first_device()
    pending = first.for_device()
    await pending.register()
    pending.umk = umk_of(first)
    with pytest.raises(Exception) as refused:
        await pending.upload_self_wrap()
    assert getattr(refused.value, "status_code", None) == 403

    # An active device may not store a key "created by" another device.
    response = await first.request(
        "POST",
        f"/api/e2ee/devices/{first.device_id}/wrapped-umk",
        json={
            "deviceId": first.device_id,
            "ciphertext": b64e(bytes(60)),
            "hkdfSalt": b64e(bytes(32)),
            "createdByDeviceId": pending.device_id,
        },
    )
    body = assert_error(response, 400, "validation_failed")
    assert body["errors"][0]["field"] == "createdByDeviceId"
    # Path and body must name the same device.
    response = await first.request(
        "POST",
        f"/api/e2ee/devices/{first.device_id}/wrapped-umk",
        json={"deviceId": pending.device_id, "ciphertext": b64e(bytes(60)), "hkdfSalt": "AAAA"},
    )
    assert assert_error(response, 400, "validation_failed")["errors"][0]["field"] == "deviceId"
    async with app.state.ctx.db.read() as conn:
        rows = await conn.scalar(select(func.count()).select_from(e2ee_wrapped_umks))
    assert rows == 1


# ---- input validation ------------------------------------------------------------------


def _off_curve_point() -> str:
    return b64e(b"\x04" + bytes([1]) * 64)


def _compressed_point(keys: DeviceKeys) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = keys.agreement_key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    return b64e(raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agreementPublicKey", "not base64!"),
        ("agreementPublicKey", None),
        ("signingPublicKey", b64e(bytes(65))),
        ("signingPublicKey", "OFF_CURVE"),
        ("agreementPublicKey", "COMPRESSED"),
        ("signingPublicKey", b64e(bytes(64))),
        ("deviceId", "d" * 65),
        ("deviceId", ""),
        ("deviceName", "n" * 201),
        ("osVersion", "o" * 201),
    ],
)
async def test_registration_validation_names_the_field(
    new_device: E2eeFactory, field: str, value: Any
) -> None:
    device = await new_device()
    body = device.keys.registration_body()
    if value == "OFF_CURVE":
        value = _off_curve_point()
    elif value == "COMPRESSED":
        value = _compressed_point(device.keys)
    body[field] = value
    response = await device.request("POST", "/api/e2ee/devices/register", json=body)
    result = assert_error(response, 400, "validation_failed")
    assert [e["field"] for e in result["errors"]] == [field]
    assert (await device.list_devices())["devices"] == []


async def test_registration_accepts_pascal_case_and_limits(new_device: E2eeFactory) -> None:
    device = await new_device(keys=DeviceKeys.generate("d" * 64))
    body = device.keys.registration_body("n" * 200)
    pascal = {key[0].upper() + key[1:]: value for key, value in body.items()}
    response = await device.request("POST", "/api/e2ee/devices/register", json=pascal)
    assert response.status_code == 200, response.text
    info = await device.device_info()
    assert info is not None
    assert info["deviceName"] == "n" * 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wrappedUmk", b64e(bytes(59))),
        ("wrappedUmk", b64e(bytes(61))),
        ("wrappedUmk", "@@@"),
        ("hkdfSalt", "%%%"),
        ("approverSignature", b64e(bytes(70))),
        ("signatureVersion", 3),
        ("targetDeviceId", "t" * 65),
    ],
)
async def test_approval_validation_names_the_field(
    new_device: E2eeFactory, field: str, value: Any
) -> None:
    first, target, sid = await bootstrapped_with_pending(new_device)
    before = await snapshot(first, target)
    body = approval(first, target, sid)
    body[field] = value
    result = assert_error(await first.send_approval(body), 400, "validation_failed")
    assert [e["field"] for e in result["errors"]] == [field]
    assert await snapshot(first, target) == before


async def test_malformed_bodies(new_device: E2eeFactory) -> None:
    device = await new_device()
    response = await device.request(
        "POST",
        "/api/e2ee/devices/register",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "invalid_json")
    response = await device.request("POST", "/api/e2ee/devices/approve", json=[1, 2])
    assert_error(response, 400, "validation_failed")
    long_id = "x" * 65
    response = await device.request("GET", f"/api/e2ee/devices/{long_id}/status")
    assert assert_error(response, 400, "validation_failed")["errors"][0]["field"] == "deviceId"
    response = await device.request("GET", "/api/e2ee/devices/unknown-device/status")
    assert_error(response, 404, "device_not_found")
