"""Configuration: precedence, parsing, and a clear exit 2 for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from service.config import Config, load_config
from service.errors import ConfigError

BAD_ENV = [
    ("POLL_DEFAULT", "abc"),
    ("POLL_DEFAULT", "0"),
    ("POLL_DEFAULT", "86401"),
    ("POLL_DEFAULT", "nan"),
    ("POLL_DEFAULT", ""),
    ("POLL_DEFAULT", "true"),
    ("REQUIRE_MANIFEST", "maybe"),
    ("ROLLBACK_ON_RELOAD_FAILURE", "2"),
    ("WATCH", "on"),
    ("MANIFEST_NAME", "a/b"),
    ("MANIFEST_NAME", "READY"),
    ("MANIFEST_NAME", ""),
    ("RELOAD_URL", "ftp://x/reload"),
    ("RELOAD_URL", "not a url"),
    ("RELOAD_METHOD", "DELETE"),
    ("RELOAD_TIMEOUT", "0"),
    ("RELOAD_TIMEOUT", "-1"),
    ("RELOAD_TIMEOUT", "soon"),
    ("RELOAD_RETRIES", "-1"),
    ("RELOAD_RETRIES", "1.5"),
    ("RELOAD_RETRIES", "101"),
    ("RELOAD_VERIFY_URL", "/ready"),
    ("RELOAD_TOKEN_FILE", "/"),
    ("KEEP_VERSIONS", "0"),
    ("KEEP_VERSIONS", "three"),
    ("KEEP_REJECTED", "-1"),
    ("METRICS_PORT", "65536"),
    ("METRICS_PORT", "http"),
    ("METRICS_ADDR", "not an address!"),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_FORMAT", "xml"),
    ("MODELS_ROOT", ""),
    ("STAGING_DIR", ""),
    ("CURRENT_LINK", ""),
    ("SOURCE", "registry/repo:tag"),
    ("SOURCE", "oci://registry"),
    ("SOURCE", "oci://user:pw@registry/repo:tag"),
    ("SOURCE_POLL_SECONDS", "4"),
    ("SOURCE_POLL_SECONDS", "86401"),
    ("SOURCE_INSECURE", "a b"),
]
BAD_FLAGS = [
    ("--poll-interval", "0.5"),
    ("--poll-interval", "x"),
    ("--poll-interval", "inf"),
    ("--reload-url", "localhost:8000"),
    ("--metrics-port", "-1"),
    ("--metrics-addr", "@"),
    ("--log-level", "verbose"),
    ("--log-format", "yaml"),
    ("--models-root", ""),
]


@pytest.mark.parametrize(("var", "value"), BAD_ENV)
def test_bad_environment_value_exits_2_naming_the_variable(
    var: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every bad variable value is a configuration error (exit 2) naming the variable."""
    env = {"MODELS_ROOT": str(tmp_path), var: value}
    assert main(["--once", "--no-reload"], env=env) == 2
    err = capsys.readouterr().err
    assert var in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("flag", "value"), BAD_FLAGS)
def test_bad_flag_value_exits_2_naming_the_flag(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every bad flag value is a configuration error (exit 2) naming the flag."""
    args = ["--once", "--no-reload", "--models-root", str(tmp_path), f"{flag}={value}"]
    assert main(args, env={}) == 2
    assert flag in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option exits 2 with argparse's usage message."""
    assert main(["--frobnicate"], env={}) == 2
    assert "--frobnicate" in capsys.readouterr().err


def test_token_and_token_file_together_is_an_error(tmp_path: Path) -> None:
    """RELOAD_TOKEN and RELOAD_TOKEN_FILE together are rejected, naming both."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret")
    env = {"RELOAD_TOKEN": "s3cret", "RELOAD_TOKEN_FILE": str(token_file)}
    with pytest.raises(ConfigError, match="RELOAD_TOKEN and RELOAD_TOKEN_FILE"):
        load_config({}, env)


def test_defaults_follow_the_contract() -> None:
    """With nothing set, every setting has the default of SPEC section 8."""
    config = load_config({}, {})
    assert config == Config()
    assert (config.models_root, config.staging_dir, config.current_link) == (
        Path("/models"),
        Path("/models/staging"),
        Path("/models/current"),
    )
    assert config.reload_url == "http://127.0.0.1:8000/reload"
    assert (config.reload_method, config.reload_timeout, config.reload_retries) == ("POST", 10, 3)
    assert (config.keep_versions, config.keep_rejected) == (3, 5)
    assert (config.metrics_addr, config.metrics_port) == ("0.0.0.0", 9177)
    assert (config.log_level, config.log_format, config.watch) == ("INFO", "auto", True)
    assert config.poll_override is None and config.poll_default == 30


def test_staging_and_current_follow_models_root() -> None:
    """STAGING_DIR and CURRENT_LINK default to paths under MODELS_ROOT."""
    config = load_config({}, {"MODELS_ROOT": "/data/m"})
    assert config.staging_dir == Path("/data/m/staging")
    assert config.current_link == Path("/data/m/current")


def test_command_line_beats_environment() -> None:
    """A flag wins over its variable, and the variable over the default."""
    env = {"MODELS_ROOT": "/env", "METRICS_PORT": "1234", "LOG_LEVEL": "debug"}
    config = load_config({"models_root": "/cli", "metrics_port": "4321"}, env)
    assert config.models_root == Path("/cli")
    assert config.metrics_port == 4321
    assert config.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("YES", True), ("1", True), ("False", False), ("no", False), ("0", False)],
)
def test_booleans_accept_the_documented_spellings(raw: str, value: bool) -> None:
    """Booleans accept true/false/1/0/yes/no in any case."""
    assert load_config({}, {"REQUIRE_MANIFEST": raw}).require_manifest is value


def test_empty_reload_url_or_no_reload_disables_reloading() -> None:
    """RELOAD_URL="" and --no-reload both disable reloading."""
    assert load_config({}, {"RELOAD_URL": ""}).reload_url is None
    assert load_config({"no_reload": True}, {"RELOAD_URL": "http://h/r"}).reload_url is None


def test_token_is_redacted_in_the_logged_configuration() -> None:
    """The effective configuration for the log never holds the token."""
    config = load_config({}, {"RELOAD_TOKEN": "hunter2-secret"})
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in str(config.redacted())


def test_fleet_settings_are_parsed() -> None:
    """SOURCE, SOURCE_POLL_SECONDS, SOURCE_INSECURE and the key/auth files are read."""
    config = load_config(
        {},
        {
            "SOURCE": "oci://127.0.0.1:5000/models/f:stable",
            "SOURCE_POLL_SECONDS": "5",
            "SOURCE_INSECURE": "127.0.0.1:5000, x",
            "TRUSTED_KEYS_FILE": "/keys.pem",
            "REGISTRY_AUTH_FILE": "",
        },
    )
    assert config.source == "oci://127.0.0.1:5000/models/f:stable"
    assert config.source_poll_seconds == 5.0
    assert config.source_insecure == ("127.0.0.1:5000", "x")
    assert config.trusted_keys_file == Path("/keys.pem")
    assert config.registry_auth_file is None
