"""A real browser (Debian's Chromium via Playwright) through the HTML pages and an OIDC login.

The app runs under uvicorn on 127.0.0.1, the provider on localhost (cookies are per host), and a
tiny listener on localhost plays the desktop client's loopback redirect target.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import uvicorn

from conftest import SettingsFactory
from pia_server.app import create_app
from pia_server.auth import cli as auth_cli
from pia_server.core.config import Settings

from .conftest import FAST_ARGON2, OidcServer, Tamper, provider_settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI", "") == "",
    reason="Chromium is not installed (CI installs it)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(settings: Settings, port: int) -> Iterator[None]:
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def loopback_listener() -> Iterator[tuple[int, list[dict[str, str]]]]:
    """The desktop client's HttpListener: takes the redirect and keeps its query."""
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
            if self.path.startswith("/favicon"):
                self.send_response(404)
                self.end_headers()
                return
            received.append({k: v[0] for k, v in query.items()})
            body = b"<html><body><p id='done'>You can close this window.</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = HTTPServer(("localhost", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()


def test_browser_register_login_forgot_and_reset(
    make_settings: SettingsFactory,
    oidc_server: OidcServer,
    tamper: Tamper,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(
        server={"public_url": base},
        auth={**FAST_ARGON2, "providers": provider_settings(oidc_server, "google")},
        rate_limits={"enabled": False},
    )
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    sub = f"google-{uuid.uuid4().hex[:8]}"
    oidc_server.set_user(sub, email=email, email_verified=True, name="Browser User")

    with serve(settings, port), loopback_listener() as (lport, received), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()

            # Register through the HTML form.
            page.goto(f"{base}/auth/register.html")
            page.fill("#email", email)
            page.fill("#displayName", "Browser User")
            page.fill("#password", "first password 1")
            page.fill("#confirm", "first password 2")
            page.click("#submit")
            page.wait_for_selector("#result.error")
            assert "not the same" in page.inner_text("#result")
            page.fill("#confirm", "first password 1")
            page.click("#submit")
            page.wait_for_selector("#result.ok:has-text('ready')")

            # Sign in with the provider: its consent page, then back to the loopback listener.
            redirect_uri = f"http://localhost:{lport}/"
            page.goto(
                f"{base}/auth/login?provider=google&redirect_uri={quote(redirect_uri, safe='')}"
            )
            page.fill("input[name=sub]", sub)
            page.get_by_role("button", name="Authorize").click()
            page.wait_for_selector("#done")
            assert len(received) == 1
            back = received[0]
            assert back["access_token"]
            assert back["refresh_token"]
            assert back["email"] == email
            assert back["display_name"] == "Browser User"
            oauth_user_id = back["user_id"]

            # Forgot password: the page shows the server's answer.
            page.goto(f"{base}/auth/forgot-password.html")
            page.fill("#email", email)
            page.click("#submit")
            page.wait_for_selector("#result.ok:has-text('administrator')")

            # The admin prints a reset link; the browser opens it and sets a new password.
            capsys.readouterr()
            # (In a thread: Playwright's sync API owns this thread's event loop.)
            with ThreadPoolExecutor(1) as pool:
                args = argparse.Namespace(email=email)
                assert pool.submit(auth_cli.cmd_reset_link, settings, args).result() == 0
            link = re.search(r"http://\S+", capsys.readouterr().out)
            assert link is not None
            page.goto(link.group(0))
            assert page.input_value("#email") == email  # filled from the fragment
            assert "#" not in page.url  # the token left the address bar
            page.fill("#newPassword", "second password 1")
            page.fill("#confirm", "second password 1")
            page.click("#submit")
            page.wait_for_selector("#result.ok:has-text('changed')")
        finally:
            browser.close()

        # The new password works, and local login names the same user as the OAuth redirect.
        r = httpx.post(
            f"{base}/auth/login/local", json={"email": email, "password": "second password 1"}
        )
        assert r.status_code == 200
        assert r.json()["user"]["id"] == oauth_user_id
        # The reset revoked the refresh token from the OAuth sign-in.
        r = httpx.post(f"{base}/auth/refresh", json={"refreshToken": back["refresh_token"]})
        assert r.status_code == 401
