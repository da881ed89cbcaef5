"""``pia-server doctor``: one line per check, a failing check fails the run, warnings do not."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import SettingsFactory
from pia_server.app import create_app
from pia_server.core.config import Settings, load_settings
from pia_server.ops.cli import cmd_doctor
from pia_server.ops.doctor import config_checks
from support.fake_upstreams import Scenario, start_fake_upstream

from .servers import bind_loopback, json_app, serving, url_of

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


def doctor(settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    status = cmd_doctor(settings, argparse.Namespace(timeout=3.0))
    lines = capsys.readouterr().out.splitlines()
    return status, lines


def line_of(lines: list[str], name: str) -> str:
    found = [line for line in lines if line.split(maxsplit=1)[1].startswith(f"{name}:")]
    assert found, f"no line for {name!r} in:\n" + "\n".join(lines)
    return found[0]


def assert_fails(lines: list[str], name: str) -> str:
    line = line_of(lines, name)
    assert line.startswith("FAIL"), line
    assert " -> " in line, f"a failure says what to do: {line}"
    return line


def test_a_healthy_deployment_passes(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = bind_loopback()
    settings = make_settings(server={"public_url": url_of(sock)})
    with serving(create_app(settings), sock):
        status, lines = doctor(settings, capsys)
    assert status == 0, "\n".join(lines)
    assert not [line for line in lines if line.startswith("FAIL")]
    for name in ("config", "database", "migrations", "clock", "public_url"):
        assert line_of(lines, name).startswith("ok"), line_of(lines, name)
    # Unconfigured things are skipped, not failed.
    assert line_of(lines, "redis").startswith("skip")
    # Registration is open by default: a warning, which alone does not fail the run.
    assert line_of(lines, "config auth.allow_registration").startswith("warn")
    assert lines[-1].endswith("0 failed, 1 skipped")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_database_that_cannot_be_reached_fails(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        database={"url": f"postgresql+asyncpg://pia:hunter2hunter2@{CLOSED}/pia"}
    )
    status, lines = doctor(settings, capsys)
    assert status != 0
    line = assert_fails(lines, "database")
    assert "PIA_DATABASE_URL" in line
    assert line_of(lines, "migrations").startswith("skip")
    assert "hunter2hunter2" not in "\n".join(lines)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_damaged_sqlite_file_fails(
    make_settings: SettingsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database" * 100)
    settings = make_settings(database={"url": f"sqlite+aiosqlite:///{damaged}"})
    status, lines = doctor(settings, capsys)
    assert status != 0
    assert "backup" in assert_fails(lines, "database")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unmigrated_database_warns(
    make_settings: SettingsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    settings = make_settings(database={"url": f"sqlite+aiosqlite:///{empty}"})
    _, lines = doctor(settings, capsys)
    line = line_of(lines, "migrations")
    assert line.startswith("warn")
    assert "pia-server migrate" in line


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unreachable_redis_fails(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(redis={"url": f"redis://{CLOSED}/0"})
    status, lines = doctor(settings, capsys)
    assert status != 0
    assert "PIA_REDIS_URL" in assert_fails(lines, "redis")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_reachable_redis_is_ok(
    make_settings: SettingsFactory, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(redis={"url": redis_url})
    _, lines = doctor(settings, capsys)
    assert line_of(lines, "redis").startswith("ok")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_oauth_issuer_that_cannot_be_reached_fails(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        auth={"providers": {"google": {"client_id": "id", "issuer": f"http://{CLOSED}"}}}
    )
    status, lines = doctor(settings, capsys)
    assert status != 0
    line = assert_fails(lines, "oauth google")
    assert ".well-known/openid-configuration" in line


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_oauth_issuer_with_a_discovery_document_is_ok(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = bind_loopback()
    issuer = url_of(sock)
    document = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
    }
    broken = {k: v for k, v in document.items() if k != "jwks_uri"}
    app = json_app(
        {
            "/good/.well-known/openid-configuration": document,
            "/bad/.well-known/openid-configuration": broken,
        }
    )
    settings = make_settings(
        auth={
            "providers": {
                "google": {"client_id": "id", "issuer": f"{issuer}/good"},
                "microsoft": {"client_id": "id", "issuer": f"{issuer}/bad"},
            }
        }
    )
    with serving(app, sock):
        status, lines = doctor(settings, capsys)
    assert line_of(lines, "oauth google").startswith("ok")
    assert "jwks_uri" in assert_fails(lines, "oauth microsoft")
    assert status != 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_ai_upstream_that_cannot_be_reached_fails(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        ai={
            "providers": {
                "local": {
                    "type": "openai",
                    "base_url": f"http://{CLOSED}/v1",
                    "api_key": "sk-test-closed-port",
                }
            }
        }
    )
    status, lines = doctor(settings, capsys)
    assert status != 0
    assert "base_url" in assert_fails(lines, "ai local")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_working_ai_upstream_passes_and_a_wrong_key_fails(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        start_fake_upstream() as upstream,
        start_fake_upstream(Scenario(models_status=401)) as rejecting,
    ):
        providers: dict[str, Any] = {
            "good": {
                "type": "openai-compatible",
                "base_url": upstream.openai_base_url,
                "api_key": "sk-right-key-123",
            },
            "claude": {
                "type": "anthropic",
                "base_url": upstream.base_url,
                "api_key": "sk-right-key-123",
            },
            "wrongkey": {
                "type": "openai",
                "base_url": rejecting.openai_base_url,
                "api_key": "sk-wrong-key-456",
            },
        }
        settings = make_settings(ai={"providers": providers})
        status, lines = doctor(settings, capsys)
        seen = [(r.path, r.api_key) for r in upstream.upstream.requests]
    assert line_of(lines, "ai good").startswith("ok")
    assert line_of(lines, "ai claude").startswith("ok")
    assert "rejected the API key" in assert_fails(lines, "ai wrongkey")
    assert status != 0
    # One cheap request each, with the key in the header of each wire shape.
    assert sorted(seen) == [("/v1/models", "sk-right-key-123")] * 2
    output = "\n".join(lines)
    assert "sk-right-key-123" not in output
    assert "sk-wrong-key-456" not in output


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_missing_api_key_fails_without_a_request(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        ai={"providers": {"main": {"type": "openai", "api_key_env": "PIA_TEST_UNSET_KEY_VAR"}}}
    )
    status, lines = doctor(settings, capsys)
    assert status != 0
    assert "PIA_TEST_UNSET_KEY_VAR" in assert_fails(lines, "ai main")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_public_url_that_does_not_answer_fails(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(server={"public_url": f"http://{CLOSED}"})
    status, lines = doctor(settings, capsys)
    assert status != 0
    assert "/healthz" in assert_fails(lines, "public_url")


def test_insecure_settings_show_as_warnings() -> None:
    settings = load_settings(
        environ={},
        overrides={
            "server": {
                "host": "0.0.0.0",
                "public_url": "http://pia.example.com",
                "metrics_allow": ["0.0.0.0/0"],
                "trusted_proxies": ["0.0.0.0/0"],
            },
            "database": {"url": "postgresql+asyncpg://pia@db.example/pia"},
            "auth": {"allow_registration": True},
            "rate_limits": {"enabled": False},
            "ai": {"allow_anonymous": True},
        },
    )
    warned = {c.name for c in config_checks(settings) if c.status == "warn"}
    assert warned == {
        "config auth.jwt_secret",
        "config server.public_url",
        "config auth.allow_registration",
        "config server.metrics_allow",
        "config server.trusted_proxies",
        "config rate_limits.enabled",
        "config ai.allow_anonymous",
    }


def test_secure_settings_do_not_warn() -> None:
    settings = load_settings(
        environ={},
        overrides={
            "server": {"host": "0.0.0.0", "public_url": "https://pia.example.com"},
            "database": {"url": "postgresql+asyncpg://pia@db.example/pia"},
            "auth": {"jwt_secret": "s" * 48, "allow_registration": False},
        },
    )
    assert [c.status for c in config_checks(settings)] == ["ok"]


def test_an_ai_mode_naming_an_unknown_provider_fails() -> None:
    settings = load_settings(
        environ={},
        overrides={
            "ai": {"default_provider": "missing", "providers": {"real": {"type": "openai"}}}
        },
    )
    failed = [c for c in config_checks(settings) if c.status == "FAIL"]
    assert len(failed) == 1
    assert "'missing'" in failed[0].message
    assert "real" in failed[0].advice
