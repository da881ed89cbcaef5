"""Auth test fixtures: cheap Argon2 settings, and a real OpenID provider on a loopback port."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import werkzeug.serving
from oidc_provider_mock import app as oidc_app

from conftest import SettingsFactory
from pia_server.core.config import Settings

# Argon2id with the smallest cost: the suite tests behaviour, not hashing strength.
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 64, "argon2_parallelism": 1}
PUBLIC_URL = "http://testserver"
LOOPBACK = "http://localhost:53682/"


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(
        server={"public_url": PUBLIC_URL},
        auth=FAST_ARGON2,
        rate_limits={"enabled": False},
    )


@dataclass
class Tamper:
    """Switches the tests flip to make the provider misbehave (a WSGI layer in front of it)."""

    token_client_id: str | None = None
    calls: list[str] = field(default_factory=list)


class OidcServer:
    def __init__(self, port: int, tamper: Tamper) -> None:
        self.port = port
        self.issuer = f"http://localhost:{port}"
        self.tamper = tamper

    def set_user(self, sub: str, **claims: Any) -> None:
        response = httpx.put(f"{self.issuer}/users/{sub}", json=claims)
        assert response.status_code == 204, response.text


def _tampering(app: Any, tamper: Tamper) -> Callable[..., Any]:
    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        tamper.calls.append(environ.get("PATH_INFO", ""))
        if environ.get("PATH_INFO") == "/oauth2/token" and tamper.token_client_id:
            # Present the token request as another application's (its code, its audience).
            header = environ.get("HTTP_AUTHORIZATION", "")
            if header.startswith("Basic "):
                _user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
                raw = f"{tamper.token_client_id}:{secret}".encode()
                environ["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(raw).decode()
        return app(environ, start_response)

    return middleware


@pytest.fixture(scope="session")
def oidc_server() -> Iterator[OidcServer]:
    tamper = Tamper()
    wsgi = _tampering(oidc_app(require_nonce=True), tamper)
    server = werkzeug.serving.make_server("localhost", 0, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield OidcServer(server.server_port, tamper)
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@pytest.fixture
def tamper(oidc_server: OidcServer) -> Iterator[Tamper]:
    oidc_server.tamper.token_client_id = None
    yield oidc_server.tamper
    oidc_server.tamper.token_client_id = None


def provider_settings(oidc_server: OidcServer, *names: str) -> dict[str, Any]:
    return {
        name: {
            "client_id": f"pia-{name}",
            "client_secret": f"secret-{name}",
            "issuer": oidc_server.issuer,
            **({"tenant_id": "contoso"} if name == "entraid" else {}),
        }
        for name in names
    }
