"""The two storage functions other domains call, and the ``global`` policy on E2EE routes."""

from __future__ import annotations

from fastapi import FastAPI

from conftest import SettingsFactory, client_for, create_test_user, running_app
from pia_server.e2ee.storage import get_device, is_e2ee_enabled, touch_device
from support.e2ee_client import E2eeClient

from .conftest import E2eeFactory


async def test_is_e2ee_enabled_turns_on_with_the_first_umk(
    new_device: E2eeFactory, app: FastAPI
) -> None:
    device = await new_device()
    db = app.state.ctx.db
    async with db.read() as conn:
        assert await is_e2ee_enabled(conn, device.user_id) is False
    await device.register()
    # A registered device alone does not turn E2EE on: only a stored UMK does.
    async with db.read() as conn:
        assert await is_e2ee_enabled(conn, device.user_id) is False
    await device.bootstrap_first_device()
    async with db.read() as conn:
        assert await is_e2ee_enabled(conn, device.user_id) is True


async def test_touch_device_only_touches_that_users_device(
    new_device: E2eeFactory, app: FastAPI
) -> None:
    alice = await new_device()
    await alice.register()
    bob = await new_device()
    await bob.register()
    db = app.state.ctx.db
    async with db.read() as conn:
        alice_before = await get_device(conn, alice.user_id, alice.device_id)
    assert alice_before is not None

    async with db.write() as conn:
        # Bob's id for Alice's device, and an unknown device: no-ops, no errors.
        await touch_device(conn, bob.user_id, alice.device_id)
        await touch_device(conn, alice.user_id, "no-such-device")
    async with db.read() as conn:
        assert await get_device(conn, alice.user_id, alice.device_id) == alice_before

    async with db.write() as conn:
        await touch_device(conn, alice.user_id, alice.device_id)
    async with db.read() as conn:
        after = await get_device(conn, alice.user_id, alice.device_id)
    assert after is not None
    assert after.last_seen_at is not None
    assert alice_before.last_seen_at is not None
    assert after.last_seen_at > alice_before.last_seen_at


async def test_e2ee_routes_use_the_global_policy(make_settings: SettingsFactory) -> None:
    settings = make_settings(rate_limits={"global": "3/minute"})
    async with running_app(settings) as app:
        user = await create_test_user(app)
        async with client_for(app) as http:
            device = E2eeClient(http=http, token=user.token, user_id=user.id)
            codes = [
                (await device.request("GET", "/api/e2ee/status")).status_code for _ in range(3)
            ]
            assert codes == [200, 200, 200]
            refused = await device.request("GET", f"/api/e2ee/devices/{device.device_id}/status")
            assert refused.status_code == 429
            assert refused.json()["error"] == "rate_limited"
            assert int(refused.headers["Retry-After"]) >= 1
