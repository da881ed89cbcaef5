"""Settings: TOML file, PIA_* environment on top, and clear messages for wrong values."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pia_server.core.config import ConfigError, load_settings
from pia_server.core.secrets import load_or_create_secret


def test_defaults_serve_sqlite_under_data_dir() -> None:
    settings = load_settings(environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.is_sqlite
    assert settings.database_url.endswith("/data/pia.db")


def test_toml_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "pia.toml"
    config.write_text(
        '[server]\nport = 9000\nhost = "0.0.0.0"\n'
        '[rate_limits]\nsync = "60/minute"\n'
        '[ai.providers.local]\ntype = "ollama"\nbase_url = "http://127.0.0.1:11434"\n'
    )
    settings = load_settings(
        environ={
            "PIA_CONFIG": str(config),
            "PIA_PORT": "9100",
            "PIA_DATA_DIR": str(tmp_path / "d"),
            "PIA_REDIS_URL": "redis://127.0.0.1:6379/0",
            "PIA_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
            "PIA_SYNC__CONFLICT_STRATEGY": "server-wins",
            "PIA_SERVER__TRUSTED_PROXIES": '["10.0.0.0/8"]',
        }
    )
    assert settings.server.port == 9100  # the environment wins over the file
    assert settings.server.host == "0.0.0.0"
    assert settings.rate_limits.policy("sync") == "60/minute"
    assert settings.server.data_dir == tmp_path / "d"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert not settings.is_sqlite
    assert settings.sync.conflict_strategy == "server-wins"
    assert settings.server.trusted_proxies == ["10.0.0.0/8"]
    assert settings.ai.providers["local"].type == "ollama"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PIA_PORT": "eighty"}, "server.port"),
        ({"PIA_PORT": "70000"}, "server.port"),
        ({"PIA_DATABASE_URL": "mysql://x"}, "database.url"),
        ({"PIA_RATE_LIMITS__SYNC": "lots"}, "rate_limits.sync"),
        ({"PIA_SYNC__CONFLICT_STRATEGY": "coin-flip"}, "sync.conflict_strategy"),
        ({"PIA_REDIS_URL": "http://redis"}, "redis.url"),
        ({"PIA_SERVER__NO_SUCH_THING": "1"}, "server.no_such_thing"),
    ],
)
def test_wrong_setting_names_itself(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert f"`{named}`" in str(info.value)


def test_missing_and_broken_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"PIA_CONFIG": str(tmp_path / "missing.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(environ={"PIA_CONFIG": str(broken)})


def test_cli_reports_a_wrong_setting_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PIA_PORT": "not-a-port", "PIA_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pia_server", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "server.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path, "jwt-secret")
    second = load_or_create_secret(tmp_path, "jwt-secret")
    assert first == second
    assert len(first) >= 40
    mode = stat.S_IMODE((tmp_path / "jwt-secret").stat().st_mode)
    assert mode == 0o600
