"""The README as a user follows it: the quick start runs as written, the configuration
table agrees with --help and SETTINGS, and every link stays inside the repository."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from service.config import SETTINGS
from tests.support import IN_CI, ROOT, base_env, run_cli

README = ROOT / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _table() -> dict[str, tuple[str | None, str]]:
    """README configuration rows: variable (or flag alone) -> (flag or None, default)."""
    rows: dict[str, tuple[str | None, str]] = {}
    for line in _section("Configuration").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("variable", "---"):
            continue
        variable, flag, default = _code(cells[0]), _code(cells[1]), _code(cells[2])
        key = variable[0] if variable else flag[0]
        rows[key] = (flag[0] if flag else None, default[0] if default else cells[2])
    return rows


def _help_defaults() -> dict[str, str]:
    """Setting name (variable, or flag when it has none) -> default, as `run --help` says."""
    out = run_cli("run", "--help", env=base_env(Path("/nonexistent")))
    text = re.sub(r"\s+", " ", out.stdout)
    found = {
        var: default for var, default in re.findall(r"\(env ([A-Z_]+), default (\S+?)\)", text)
    }
    found |= dict(re.findall(r"(?m)^  ([A-Z_]+)=(\S+)$", out.stdout))
    found |= {
        flag: default
        for flag, default in re.findall(r"(--[a-z-]+) [A-Z]+ [^()]*\(default (\S+?)\)", text)
    }
    return found


def test_configuration_table_matches_settings_and_help() -> None:
    """Each setting has one README row whose flag is SETTINGS' and whose default is
    the one `run --help` shows; the README lists nothing SETTINGS lacks."""
    table, shown = _table(), _help_defaults()
    names = {var or str(flag): (flag, var) for var, flag, _parser in SETTINGS.values()}
    assert set(table) == set(names)
    for name, (flag, _var) in names.items():
        assert table[name][0] == flag, name
        assert table[name][1] == shown[name], (name, table[name][1], shown.get(name))


def test_readme_and_docs_stay_inside_the_repository() -> None:
    """No document points at ../shared or the SPEC; every relative link exists."""
    for doc in (README, *sorted((ROOT / "docs").glob("*.md"))):
        text = doc.read_text()
        assert "../shared" not in text and "SPEC.md" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+:", target):
                assert (doc.parent / target).exists(), (doc, target)


def test_contract_is_linked_from_the_readme() -> None:
    """The README links docs/contract.md and docs/status-schema.md."""
    text = README.read_text()
    assert "(docs/contract.md)" in text and "(docs/status-schema.md)" in text


# -- the quick start, run as written --------------------------------------------------------


def _quick_start() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", _section("Quick start"), re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def _fresh_env() -> dict[str, str]:
    """A user's shell in the clone: none of the sidecar's variables, uv finds the project."""
    variables = {var for var, _flag, _parser in SETTINGS.values() if var}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in variables and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["UV_PROJECT"] = str(ROOT)  # as `cd` into the clone would; the commands run in tmp
    return env


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    """Every quick-start line exits 0 in order (a line ending in & runs in the background
    until the end), and the volume ends as the README says: current is v1."""
    if _port_in_use(9177) and not IN_CI:
        pytest.skip("127.0.0.1:9177 is in use by another process; the quick start needs it")
    env, background = _fresh_env(), []
    try:
        for line in _quick_start():
            if line.endswith("&"):
                background.append(
                    subprocess.Popen(
                        ["bash", "-c", line[:-1]],
                        cwd=tmp_path,
                        env=env,
                        start_new_session=True,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )
                continue
            out = subprocess.run(
                ["bash", "-c", line],
                cwd=tmp_path,
                env=env,
                text=True,
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"
            for proc in background:
                assert proc.poll() is None, f"the background command exited: {proc.stderr}"
        assert os.readlink(tmp_path / "models" / "current") == "versions/v1"
        assert "\ncurrent:   v1 (previous v2)\n" in out.stdout, out.stdout
    finally:
        for proc in background:  # stop what this test started, by its process group
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_code_layout_names_every_module() -> None:
    """Every module under service/ has its line in "Layout of the code", and no line
    names a module that does not exist."""
    section = _section("Layout of the code")
    named = set(re.findall(r"`(service/[\w/]+\.py)`", section))
    modules = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "service").rglob("*.py")
        if p.name != "__init__.py"
    }  # package markers
    assert named == modules
