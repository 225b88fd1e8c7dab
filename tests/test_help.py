"""--help and `help` as a user reads them: options before or after the command, each
command's own options, the variable and default of every setting, the exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import SETTINGS
from tests.support import base_env, run_cli, write_bundle

COMMANDS = ("run", "stage", "status", "rollback")
DAEMON_ONLY = (
    "--poll-interval",
    "--metrics-addr",
    "--metrics-port",
    "--watch",
    "--no-watch",
    "--once",
)


def _help(*args: str) -> str:
    out = run_cli(*args, env=base_env(Path("/nonexistent")))
    assert out.returncode == 0, out.stderr
    return out.stdout


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?m)^\s+(--[a-z-]+)", help_text))


def test_options_before_the_command_work(models: Path) -> None:
    """`--models-root X status` acts on X, exactly as `status --models-root X` does."""
    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    env = base_env(Path("/nonexistent"))
    before = run_cli("--models-root", str(models), "status", env=env)
    after = run_cli("status", "--models-root", str(models), env=env)
    assert before.returncode == 0, before.stderr
    assert f"root:      {models}" in before.stdout
    assert re.sub(r"\(\d+ s ago\)", "", before.stdout) == re.sub(r"\(\d+ s ago\)", "", after.stdout)


def test_default_command_is_run_with_options_first(models: Path) -> None:
    """`--models-root X --once` runs one pass of the daemon on X (exit 0)."""
    out = run_cli(
        "--models-root", str(models), "--once", "--no-reload", env=base_env(Path("/nonexistent"))
    )
    assert out.returncode == 0, out.stderr
    assert (models / "staging").is_dir()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_command_equals_command_help(command: str) -> None:
    """`help COMMAND` prints what `COMMAND --help` prints."""
    assert _help("help", command) == _help(command, "--help")


def test_help_without_a_command_lists_every_command() -> None:
    """`help` prints the main help: every command, how to get a command's help."""
    text = _help("help")
    assert text == _help("--help")
    for command in COMMANDS:
        assert re.search(rf"(?m)^\s+{command}\s+\S", text), command
    assert "help COMMAND" in text


def test_help_of_an_unknown_command_is_a_usage_error() -> None:
    """`help nonsense` exits 2 naming the bad word."""
    out = run_cli("help", "nonsense", env=base_env(Path("/nonexistent")))
    assert out.returncode == 2 and "nonsense" in out.stderr


@pytest.mark.parametrize("command", ("stage", "status", "rollback"))
def test_commands_list_only_their_own_options(command: str) -> None:
    """stage, status and rollback do not offer the daemon's options."""
    assert not _options(_help(command, "--help")) & set(DAEMON_ONLY)


def test_run_lists_every_daemon_option() -> None:
    """run --help lists every flag of SETTINGS and --once, --no-reload, --no-watch."""
    flags = {flag for _var, flag, _parser in SETTINGS.values() if flag}
    assert flags | {"--once", "--no-reload", "--no-watch"} <= _options(_help("run", "--help"))


def test_an_option_of_another_command_is_refused(models: Path) -> None:
    """A daemon option given to status (before or after it) exits 2 naming the option."""
    for args in (("--poll-interval", "5", "status"), ("status", "--poll-interval", "5")):
        out = run_cli(*args, "--models-root", str(models), env=base_env(models))
        assert out.returncode == 2 and "--poll-interval" in out.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_shows_its_variable_and_default(command: str) -> None:
    """Each setting's flag in a command's help names its variable and default."""
    from service.cli import default_text

    text = _flat(_help(command, "--help"))
    for key, (var, flag, _parser) in SETTINGS.items():
        if flag is None or flag not in _options(_help(command, "--help")):
            continue
        source = (
            f"env {var}, default {default_text(key)}" if var else f"default {default_text(key)}"
        )
        assert f"({source})" in text, flag


def test_run_help_lists_every_environment_only_setting_with_its_default() -> None:
    """run --help's epilog names each variable that has no flag, with its default."""
    from service.cli import default_text

    text = _help("run", "--help")
    for key, (var, flag, _parser) in SETTINGS.items():
        if var and flag is None:
            assert f"  {var}={default_text(key)}\n" in text, var


@pytest.mark.parametrize("args", [("--help",), *((c, "--help") for c in COMMANDS)])
def test_exit_codes_are_listed(args: tuple[str, ...]) -> None:
    """The main help and every command's help list exit codes 0, 1, 2 and 130."""
    text = _help(*args)
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"(?m)^\s+{code}\s+\S", text), code


def test_every_setting_has_a_description() -> None:
    """Each setting of SETTINGS has a description for --help (a new one needs its line)."""
    from service.cli import DESCRIPTIONS

    assert set(SETTINGS) <= set(DESCRIPTIONS)
