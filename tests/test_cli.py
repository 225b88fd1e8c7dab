"""The command line as a user runs it: stage, status, rollback, --once and exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.support import ROOT, ReloadServer, base_env, run_cli, sha256, tree_digest, write_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    src = tmp_path / "bundle"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"onnx-bytes")
    (src / "sub" / "vocab.txt").write_bytes(b"a\nb\n")
    (src / "manifest.json").write_text(json.dumps({"sidecar": {"poll_interval_seconds": 9}}))
    return src


def test_stage_writes_files_manifest_with_checksums_and_ready(bundle: Path, models: Path) -> None:
    """stage copies the bundle, lists every file's sha256 and size, and writes READY."""
    out = run_cli("stage", str(bundle), "--version", "2026.11.30-1", env=base_env(models))
    assert out.returncode == 0, out.stderr
    staging = models / "staging"
    manifest = json.loads((staging / "manifest.json").read_text())
    assert manifest["version"] == "2026.11.30-1"
    assert manifest["sidecar"] == {"poll_interval_seconds": 9}
    assert manifest["files"] == {
        "model.onnx": {"sha256": sha256(b"onnx-bytes"), "size": 10},
        "sub/vocab.txt": {"sha256": sha256(b"a\nb\n"), "size": 4},
    }
    assert (staging / "READY").exists()


def test_stage_refuses_when_a_bundle_is_staged(bundle: Path, models: Path) -> None:
    """A second stage while READY exists exits 1 and changes nothing."""
    env = base_env(models)
    assert run_cli("stage", str(bundle), env=env).returncode == 0
    before = tree_digest(models / "staging")
    out = run_cli("stage", str(bundle), env=env)
    assert out.returncode == 1 and "already staged" in out.stderr
    assert tree_digest(models / "staging") == before


def test_stage_refuses_a_non_empty_staging(bundle: Path, models: Path) -> None:
    """Files in staging without READY (a producer at work) make stage exit 1."""
    write_bundle(models / "staging", {"partial": b"x"}, ready=False)
    out = run_cli("stage", str(bundle), env=base_env(models))
    assert out.returncode == 1 and "not empty" in out.stderr


def test_stage_of_a_missing_directory_is_a_usage_error(models: Path, tmp_path: Path) -> None:
    """stage with a BUNDLE_DIR that does not exist exits 2 naming it."""
    out = run_cli("stage", str(tmp_path / "nope"), env=base_env(models))
    assert out.returncode == 2 and "nope" in out.stderr


def test_stage_then_once_promotes(bundle: Path, models: Path) -> None:
    """stage followed by run --once publishes the bundle as current (exit 0)."""
    env = base_env(models)
    run_cli("stage", str(bundle), "--version", "v1", env=env)
    out = run_cli("--once", env=env)
    assert out.returncode == 0, out.stderr
    assert os.readlink(models / "current") == "versions/v1"
    assert (models / "current" / "sub" / "vocab.txt").read_bytes() == b"a\nb\n"


# -- stage on a terminal ----------------------------------------------------------------------


def run_in_pty(
    args: list[str], env: dict[str, str], interrupt_at: bytes | None = None, deadline: float = 120
) -> tuple[int, str]:
    """Run the CLI on a real pseudo-terminal (100x24, its controlling terminal); type
    Ctrl-C once the output matches ``interrupt_at``. The exit code and all output."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of a real size, then the CLI
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "service", *args], env)
        finally:
            os._exit(127)
    out, sent, end = b"", False, time.monotonic() + deadline
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 1)
        try:
            data = os.read(fd, 65536) if ready else b"-"
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        out += data if ready else b""
        if interrupt_at is not None and not sent and re.search(interrupt_at, out):
            os.write(fd, b"\x03")  # the terminal turns it into SIGINT, as a user's Ctrl-C
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def _big_bundle(path: Path, files: int, each: int) -> Path:
    path.mkdir()
    for i in range(files):
        with (path / f"part-{i:02d}.bin").open("wb") as fh:
            fh.truncate(each)  # sparse: cheap to make, read as zeros
    return path


def test_stage_on_a_terminal_shows_progress_and_a_final_line(models: Path, tmp_path: Path) -> None:
    """On a terminal stage shows bytes, rate and time left, then files, size, version, paths."""
    src = _big_bundle(tmp_path / "big", 2, 8 * 1024 * 1024)
    code, out = run_in_pty(["stage", str(src), "--version", "v1"], base_env(models))
    assert code == 0, out
    assert re.search(r"staging: 100%\|.*\| 16\.0M/16\.0M \[\d\d:\d\d<\d\d:\d\d, .*B/s\]", out), out
    final = out.replace("\r", "").strip().splitlines()[-1]
    assert final == (
        f"staged 2 files, 16.0 MiB, version v1, into {models / 'staging'} (root {models})"
    ), out


def test_stage_without_a_terminal_prints_no_progress(bundle: Path, models: Path) -> None:
    """Piped, stage writes nothing to stderr and one line to stdout."""
    out = run_cli("stage", str(bundle), "--version", "v1", env=base_env(models))
    assert out.returncode == 0
    assert out.stderr == ""
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("staged 2 files, ")


def test_ctrl_c_during_stage_cleans_up_and_exits_130(models: Path, tmp_path: Path) -> None:
    """Ctrl-C while stage copies: exit 130, one line and no traceback, staging left empty."""
    src = _big_bundle(tmp_path / "big", 16, 64 * 1024 * 1024)
    code, out = run_in_pty(
        ["stage", str(src), "--version", "v1"],
        base_env(models),
        interrupt_at=rb"staging:\s+[1-9]\d*%",
    )
    assert code == 130, out
    assert "Traceback" not in out
    assert f"stage: interrupted; what it had copied into {models / 'staging'} was removed" in out
    assert list((models / "staging").iterdir()) == []


@pytest.mark.parametrize("args", [["run", "--once", "--no-reload"], ["stage", "BUNDLE"]])
def test_the_progress_library_is_not_imported_without_a_terminal(
    args: list[str], bundle: Path, models: Path
) -> None:
    """Neither the daemon nor a piped stage imports tqdm (measured by -X importtime)."""
    import subprocess

    argv = [str(bundle) if a == "BUNDLE" else a for a in args]
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "service", *argv],
        env=base_env(models),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "| service.cli" in out.stderr
    assert "tqdm" not in out.stderr


def test_once_with_nothing_to_do_exits_0(models: Path) -> None:
    """run --once on an empty volume exits 0 and creates the layout."""
    out = run_cli("run", "--once", env=base_env(models))
    assert out.returncode == 0, out.stderr
    assert (models / "staging").is_dir() and (models / ".sidecar").is_dir()


def test_once_with_a_rejected_bundle_exits_1(models: Path) -> None:
    """run --once that rejects the staged bundle exits 1."""
    write_bundle(models / "staging", {"m": b"x"}, manifest=b"not json")
    assert run_cli("--once", env=base_env(models)).returncode == 1


def test_once_with_a_failed_reload_exits_1(models: Path, reload_server: ReloadServer) -> None:
    """run --once whose reload fails after its retries exits 1; the bundle is promoted."""
    reload_server.default = 500
    write_bundle(models / "staging", {"m": b"x"}, version="v1")
    env = base_env(models, RELOAD_URL=reload_server.url, RELOAD_RETRIES="0")
    assert run_cli("--once", env=env).returncode == 1
    assert os.readlink(models / "current") == "versions/v1"


def _two_versions(models: Path) -> dict[str, str]:
    env = base_env(models)
    for version in ("v1", "v2"):
        write_bundle(models / "staging", {"m": version.encode()}, version=version)
        run_cli("--once", env=env)
    return env


def test_rollback_defaults_to_the_previous_version(models: Path) -> None:
    """rollback with no VERSION switches current to the previous one and records it."""
    env = _two_versions(models)
    out = run_cli("rollback", env=env)
    assert out.returncode == 0, out.stderr
    assert os.readlink(models / "current") == "versions/v1"
    last = json.loads((models / ".sidecar" / "history.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["version"], last["previous"], last["trigger"]) == (
        "rolled_back",
        "v1",
        "v2",
        "manual",
    )


def test_rollback_twice_toggles(models: Path) -> None:
    """A second rollback returns to the version before the first (like rollout undo)."""
    env = _two_versions(models)
    run_cli("rollback", env=env)
    run_cli("rollback", env=env)
    assert os.readlink(models / "current") == "versions/v2"


def test_rollback_to_a_named_version_requests_a_reload(
    models: Path, reload_server: ReloadServer
) -> None:
    """rollback VERSION switches to it and asks the server to reload it."""
    env = _two_versions(models)
    env.update(RELOAD_URL=reload_server.url)
    out = run_cli("rollback", "v1", env=env)
    assert out.returncode == 0, out.stderr
    assert [r.json()["version"] for r in reload_server.requests] == ["v1"]


def test_rollback_with_failed_reload_exits_1(models: Path, reload_server: ReloadServer) -> None:
    """rollback whose reload fails exits 1 and leaves the reload pending for the daemon."""
    env = _two_versions(models)
    reload_server.default = 500
    env.update(RELOAD_URL=reload_server.url, RELOAD_RETRIES="0")
    out = run_cli("rollback", "v1", env=env)
    assert out.returncode == 1 and "reload failed" in out.stderr
    assert (models / ".sidecar" / "reload-pending.json").exists()


def test_rollback_to_an_unknown_version_exits_1(models: Path) -> None:
    """rollback to a version that does not exist exits 1 naming it; current unchanged."""
    env = _two_versions(models)
    out = run_cli("rollback", "v9", env=env)
    assert out.returncode == 1 and "v9" in out.stderr
    assert os.readlink(models / "current") == "versions/v2"


def test_rollback_without_a_previous_version_exits_1(models: Path) -> None:
    """rollback with only one version promoted exits 1."""
    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    run_cli("--once", env=base_env(models))
    out = run_cli("rollback", env=base_env(models))
    assert out.returncode == 1 and "no previous version" in out.stderr


def test_sidecar_sh_passes_arguments_through(models: Path) -> None:
    """sidecar/sidecar.sh runs the sidecar with the arguments it was given."""
    import subprocess

    from tests.support import ROOT

    write_bundle(models / "staging", {"m": b"1"}, version="v1")
    out = subprocess.run(
        [str(ROOT / "sidecar" / "sidecar.sh"), "--once", "--no-reload"],
        env=base_env(models),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert os.readlink(models / "current") == "versions/v1"
