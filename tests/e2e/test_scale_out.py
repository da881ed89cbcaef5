"""Scale-out: two server processes on one PostgreSQL schema and one Redis, with the same
configuration (so the same secrets), as behind a load balancer. Whatever one instance starts,
the other can finish: tokens, refresh-token rotation, an OAuth login, the rate-limit budget and
sync."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import werkzeug.serving
from oidc_provider_mock import app as oidc_provider_app

from auth.conftest import OidcServer, Tamper
from conftest import PG_URL, REDIS_URL, require_service
from e2e.conftest import ServerPool
from e2e.desktop_client import (
    MIN_O,
    EarlyClient,
    bearer,
    login,
    new_account,
    o_format,
    register,
    sample_state,
)
from support.server_process import ServerProcess, free_port

pytestmark = pytest.mark.e2e

SYNC_LIMIT = 24
LOOPBACK = "http://localhost:53682/"


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[OidcServer]:
    """The real local OpenID provider the auth tests use (oidc-provider-mock)."""
    server = werkzeug.serving.make_server(
        "localhost", 0, oidc_provider_app(require_nonce=True), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield OidcServer(server.server_port, Tamper())
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, oidc_provider: OidcServer
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    require_service("PostgreSQL (PIA_TEST_DATABASE_URL)", bool(PG_URL))
    require_service("Redis (PIA_TEST_REDIS_URL)", bool(REDIS_URL))
    pool = ServerPool("postgresql", tmp_path_factory.mktemp("scale-out"))
    schema = pool.new_schema()
    port_a, port_b = free_port(), free_port()
    env = {
        "PIA_REDIS_URL": REDIS_URL,
        # One public address for both, as behind a load balancer (the OAuth redirect URI).
        "PIA_PUBLIC_URL": f"http://127.0.0.1:{port_a}",
        "PIA_RATE_LIMITS__SYNC": f"{SYNC_LIMIT}/minute",
        "PIA_RATE_LIMITS__AUTH": "1000/minute",
        # Reuse detection must hold across instances, so no grace window here.
        "PIA_AUTH__REFRESH_REUSE_GRACE_SECONDS": "0",
    }
    toml = f"""
[auth.providers.google]
client_id = "pia-google"
client_secret = "secret-google"
issuer = "{oidc_provider.issuer}"
"""
    try:
        # One after the other: the first applies the migrations.
        first = pool.start(env, schema=schema, config_toml=toml, port=port_a)
        second = pool.start(env, schema=schema, config_toml=toml, port=port_b)
        yield first, second
    finally:
        pool.close()


def client_to(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=30)


async def test_tokens_and_rotation_work_across_instances(
    cluster: tuple[ServerProcess, ServerProcess],
) -> None:
    a_server, b_server = cluster
    async with client_to(a_server) as a, client_to(b_server) as b:
        account = await new_account(a)
        me = await b.get("/auth/me", headers=account.headers)
        assert me.status_code == 200, "a token issued by one instance works on the other"
        assert me.json()["id"] == account.user_id

        # Refresh on A, then the new refresh token on B, then the result on A again.
        on_a = await a.post("/auth/refresh", json={"refreshToken": account.refresh_token})
        assert on_a.status_code == 200, on_a.text
        on_b = await b.post("/auth/refresh", json={"refreshToken": on_a.json()["refreshToken"]})
        assert on_b.status_code == 200, on_b.text
        latest = on_b.json()
        assert (await a.get("/auth/me", headers=bearer(latest["accessToken"]))).status_code == 200

        # The first token, replayed on B after it was rotated on A: reuse, the family dies on A.
        replay = await b.post("/auth/refresh", json={"refreshToken": account.refresh_token})
        assert replay.status_code == 401
        assert replay.json()["error"] == "refresh_token_reused"
        dead = await a.post("/auth/refresh", json={"refreshToken": latest["refreshToken"]})
        assert dead.status_code == 401

        # Logging out on one instance ends the session on the other.
        fresh = await login(b, account.email)
        assert (await a.post("/auth/logout", json={"refreshToken": fresh.refresh_token})).is_success
        gone = await b.post("/auth/refresh", json={"refreshToken": fresh.refresh_token})
        assert gone.status_code == 401


def test_oauth_login_started_on_one_instance_finishes_on_the_other(
    cluster: tuple[ServerProcess, ServerProcess], oidc_provider: OidcServer
) -> None:
    a_server, b_server = cluster
    sub = f"g-{uuid.uuid4().hex[:8]}"
    email = f"{sub}@example.com"
    oidc_provider.set_user(sub, email=email, email_verified=True, name="Grace Hopper")
    # The system browser: keeps the instances' cookie (cookies are per host, not per port).
    with httpx.Client(timeout=30) as browser:
        started = browser.get(
            f"{a_server.url}/auth/login", params={"provider": "google", "redirect_uri": LOOPBACK}
        )
        assert started.status_code == 302, started.text
        authorize_url = started.headers["location"]
        assert authorize_url.startswith(oidc_provider.issuer)
        # The user consents at the provider (the mock's form, without a browser).
        consented = browser.post(authorize_url, data={"sub": sub})
        assert consented.status_code == 302, consented.text
        callback = consented.headers["location"]
        assert callback.startswith(f"{a_server.url}/auth/callback?")
        # The load balancer sends the callback to the other instance.
        finished = browser.get(callback.replace(a_server.url, b_server.url, 1))
        assert finished.status_code == 302, finished.text
        location = finished.headers["location"]
        assert location.startswith(LOOPBACK + "?")
        back = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert "error" not in back, back
        assert back["email"] == email
        assert back["user_id"] == str(uuid.UUID(back["user_id"]))

        # The login state is single-use everywhere: replaying the callback on A gives no tokens.
        replayed = browser.get(callback)
        assert "access_token" not in replayed.headers.get("location", "")
        assert replayed.status_code in (302, 400)

    for server in cluster:
        me = httpx.get(f"{server.url}/auth/me", headers=bearer(back["access_token"]), timeout=30)
        assert me.status_code == 200
        assert me.json()["id"] == back["user_id"]
        assert me.json()["provider"] == "google"
    renewed = httpx.post(
        f"{b_server.url}/auth/refresh", json={"refreshToken": back["refresh_token"]}, timeout=30
    )
    assert renewed.status_code == 200


async def test_rate_limit_budget_is_shared(
    cluster: tuple[ServerProcess, ServerProcess],
) -> None:
    a_server, b_server = cluster
    async with client_to(a_server) as a, client_to(b_server) as b:
        account = await new_account(a)
        per_instance = SYNC_LIMIT + 6

        async def hammer(http: httpx.AsyncClient) -> list[httpx.Response]:
            return [
                await http.get(f"/api/sync/pull?since={MIN_O}", headers=account.headers)
                for _ in range(per_instance)
            ]

        on_a, on_b = await asyncio.gather(hammer(a), hammer(b))
        statuses = [r.status_code for r in on_a + on_b]
        assert set(statuses) <= {200, 429}, statuses
        admitted = statuses.count(200)
        assert admitted <= SYNC_LIMIT, f"both instances together admitted {admitted}"
        assert admitted == SYNC_LIMIT, "the shared budget is used, not undercounted"
        refused = next(r for r in on_a + on_b if r.status_code == 429)
        assert refused.json()["error"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        # Another user has a budget of its own, on either instance.
        other = await new_account(b)
        assert (await b.get("/api/sync/pull", headers=other.headers)).status_code == 200


async def test_two_devices_syncing_through_different_instances_converge(
    cluster: tuple[ServerProcess, ServerProcess],
) -> None:
    a_server, b_server = cluster
    async with client_to(a_server) as a, client_to(b_server) as b:
        email = await register(a)
        desk = EarlyClient(a, (await login(a, email)).access_token, state=sample_state("desk"))
        laptop = EarlyClient(b, (await login(b, email)).access_token, state=sample_state("laptop"))

        async def both_cycle() -> None:
            for pushed, _ in await asyncio.gather(desk.cycle(), laptop.cycle()):
                assert isinstance(pushed["conflicts"], list)

        # Two concurrent rounds: each instance serves one device's push and pull.
        await both_cycle()
        await both_cycle()
        assert desk.snapshot() == laptop.snapshot()
        assert len(desk.state["todos"]) == 2

        # Both edit the desk's todo; the laptop's edit is the later one and must win everywhere.
        todo_id = next(t for t, rec in desk.state["todos"].items() if "desk" in rec["title"])
        for device, title in ((desk, "desk edit"), (laptop, "laptop edit")):
            device.state["todos"][todo_id] = {
                **device.state["todos"][todo_id],
                "title": title,
                "updatedAt": o_format(),
            }
        await both_cycle()
        await both_cycle()
        assert desk.snapshot() == laptop.snapshot()
        assert desk.state["todos"][todo_id]["title"] == "laptop edit"

        # And the two instances serve the same data.
        views = [
            (await http.get("/api/sync/pull", params={"since": MIN_O}, headers=desk.headers)).json()
            for http in (a, b)
        ]
        for name in ("templates", "providers", "memories", "todos", "kanbanColumns"):
            ids = [sorted(r["id"] for r in view[name]["upserted"]) for view in views]
            assert ids[0] == ids[1] == sorted(desk.state[name]), name
