"""The producer as attacker: whatever it puts into staging, the sidecar promotes it
intact (``current/<path>`` serves the bytes that were validated) or rejects it with a
fixed reason; nothing outside the volume is touched, nothing crashes, staging is freed
(READY last), and ``stage`` refuses what the sidecar would reject.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from verify import check_current

from service.errors import REJECTION_REASONS
from service.layout import Layout
from service.stage import stage_bundle

from .support import (
    Volume,
    control_characters,
    count_case,
    digest,
    hostile,
    make_volume,
    rejection,
    scratch,
    sha,
    write_files,
)

# -- generated trees of files, directories and symlinks ------------------------------------

# Few names, so that links meet the files, directories and other links of the tree.
# "incoming" is the name of the sidecar's work dir: a link through ../incoming/ resolves
# inside the bundle while it is checked there, and elsewhere once published.
POOL = ["a", "b", "s", "u", "f", "incoming", "work"]
component = st.sampled_from([*POOL, "..", ".", "", "sentinel", "secret.txt", "models"])
relative_target = st.lists(component, min_size=1, max_size=6).map("/".join)
link_target = relative_target | st.sampled_from(
    [
        "/etc/passwd",
        "@SENTINEL",
        "@SENTINEL/secret.txt",
        "/",
        "..",
        ".",
        "../../..",
        "../incoming/f",
        "../../sentinel/secret.txt",
        "../../../sentinel/secret.txt",
    ]
)
entry = st.tuples(
    st.lists(st.sampled_from(POOL), min_size=1, max_size=3).map(tuple),
    st.sampled_from(["file", "dir", "link", "link"]),
    link_target,
    st.binary(max_size=12),
)
trees = st.lists(entry, max_size=10)
# A listed path, and the file of the tree whose bytes the manifest claims it has (an
# index into the regular files written; None: a wrong sha256), and whether size is given.
listing = st.lists(
    st.tuples(
        st.lists(st.sampled_from(POOL), min_size=1, max_size=4).map("/".join),
        st.none() | st.integers(0, 9),
        st.booleans(),
    ),
    max_size=5,
)

ATTACK = [(("f",), "file", "", b"validated"), (("x",), "link", "../incoming/f", b"")]
CROSSING = [
    (("b", "f"), "file", "", b"inner"),
    (("a", "s"), "link", "../b", b""),
    (("u",), "link", "a/s/../..", b""),
    (("g",), "file", "", b"content"),
]
CHAIN = [
    (("f",), "file", "", b"end"),
    (("a",), "link", "b", b""),
    (("b",), "link", "s", b""),
    (("s",), "link", "f", b""),
    (("u",), "link", "u", b""),
]


def build_tree(
    staging: Path, tree: list[tuple[tuple[str, ...], str, str, bytes]], sentinel: Path
) -> list[bytes]:
    """Write the generated tree into staging; the bytes of the regular files written."""
    staging.mkdir(parents=True, exist_ok=True)
    contents = []
    for parts, kind, target, data in tree:
        path = staging.joinpath(*parts)
        through_link = any(staging.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts)))
        try:
            if os.path.lexists(path) or through_link:
                continue  # never write through a link of the tree: only the sidecar is tested
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir()
            elif kind == "link":
                os.symlink(target.replace("@SENTINEL", str(sentinel)), path)
            else:
                path.write_bytes(data)
                contents.append(data)
        except OSError:
            continue  # the tree contradicts itself (a file or a link used as a directory)
    return contents


def write_manifest(
    staging: Path, listed: list[tuple[str, int | None, bool]], contents: list[bytes]
) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for path, choice, with_size in listed:
        data = contents[choice % len(contents)] if contents and choice is not None else None
        spec: dict[str, Any] = {"sha256": sha(data) if data is not None else "0" * 64}
        if with_size and data is not None:
            spec["size"] = len(data)
        files[path] = spec
    if not os.path.lexists(staging / "manifest.json"):
        (staging / "manifest.json").write_text(json.dumps({"files": files}))
    if not os.path.lexists(staging / "READY"):
        (staging / "READY").write_bytes(b"")
    return files


def links_stay_inside(version: Path) -> list[str]:
    """Symlinks of a published version that resolve outside it."""
    top = os.path.realpath(version)
    bad = []
    for dirpath, dirs, files in os.walk(version):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            if os.path.islink(path) and real != top and not real.startswith(top + os.sep):
                bad.append(f"{os.path.relpath(path, version)} -> {real}")
    return bad


def verdict_of(volume: Volume, tree: list[Any], listed: list[Any]) -> tuple[str, str | None]:
    """Stage the tree, run one pass; check everything the attacker must not achieve."""
    decoy = volume.models / "versions" / "incoming"  # a version a producer named "incoming"
    decoy.mkdir(parents=True)
    for name in POOL:
        (decoy / name).write_bytes(b"decoy: not what was validated")
    before = digest(volume.sentinel), digest(decoy)
    contents = build_tree(volume.config.staging_dir, tree, volume.sentinel)
    files = write_manifest(volume.config.staging_dir, listed, contents)
    result = volume.promoter.run_pass(wait=True)
    assert result.outcome in ("promoted", "rejected"), result
    assert (digest(volume.sentinel), digest(decoy)) == before, "something outside was touched"
    assert os.listdir(volume.config.staging_dir) == [], "staging was not freed"
    if result.outcome == "rejected":
        reason = rejection(volume.models, result.version)["reason"]
        assert reason in REJECTION_REASONS
        return "rejected", reason
    assert check_current(volume.models) == result.version
    for path, spec in files.items():
        served = (volume.models / "current" / path).read_bytes()
        assert sha(served) == spec["sha256"], f"current/{path} is not what was validated"
    assert links_stay_inside(volume.models / "versions" / str(result.version)) == []
    return "promoted", None


@hostile()
@given(tree=trees, listed=listing)
@example(tree=ATTACK, listed=[("x", 0, True)])
@example(tree=ATTACK, listed=[("f", 0, False)])
@example(tree=CROSSING, listed=[("u/b/f", 0, True), ("g", 1, True)])
@example(tree=CHAIN, listed=[("a", 0, True)])
def test_linked_trees_are_rejected_or_serve_the_validated_bytes(
    tree: list[Any], listed: list[Any]
) -> None:
    """Generated link trees: rejected, or current/<path> serves the validated bytes."""
    count_case("producer")
    verdicts = []
    with scratch() as base:
        for staging in (None, base / "deep" / "x" / "y" / "z" / "staging"):
            sub = base / f"v{len(verdicts)}"
            verdicts.append(
                verdict_of(
                    make_volume(sub, staging and sub / staging.relative_to(base)), tree, listed
                )
            )
    assert verdicts[0] == verdicts[1], f"the verdict depends on where staging is: {verdicts}"


def test_a_link_through_the_work_dir_name_is_unsafe_path(tmp_path: Path) -> None:
    """`x -> ../incoming/f` (inside the bundle only while it sits in work/incoming) is
    unsafe_path, so current/x can never serve another version's bytes."""
    verdict = verdict_of(make_volume(tmp_path), ATTACK, [("x", 0, True)])
    assert verdict == ("rejected", "unsafe_path")


# -- hostile names ----------------------------------------------------------------------------

name_bytes = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b"..")
) | st.sampled_from(
    [
        b"\n",
        b"a\nb",
        b"-rf",
        b"--help",
        b"-",
        b"READY",
        b"manifest.json",
        b"REJECTION.json",
        b"\xff\xfe",
        b"\x1b[31mred\x1b[0m",
        b"a" * 255,
        b"\xc3" * 255,
        b"\r",
        b" ",
        b"\t\x7f",
    ]
)
named_files = st.lists(
    st.tuples(st.lists(name_bytes, max_size=2), name_bytes, st.binary(max_size=8), st.booleans()),
    min_size=1,
    max_size=6,
)


def build_named(staging: Path, files: list[Any]) -> tuple[dict[bytes, bytes], dict[str, Any]]:
    """Write files with byte names; the files written and the manifest's files map."""
    staging.mkdir(parents=True, exist_ok=True)
    top = os.fsencode(staging)
    written: dict[bytes, bytes] = {}
    listed: dict[str, Any] = {}
    for dirs, name, data, listed_too in files:
        rel = os.path.join(*dirs, name) if dirs else name
        path = os.path.join(top, rel)
        if (dirs or [name])[0] in (b"READY", b"manifest.json"):
            continue  # the bundle's own READY and manifest are written by the test
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.lexists(path):
                continue
            with open(path, "wb") as fh:
                fh.write(data)
        except OSError:
            continue  # a name used both as a file and as a directory
        written[rel] = data
        if listed_too:
            listed[os.fsdecode(rel)] = {"sha256": sha(data), "size": len(data)}
    return written, listed


@hostile(0.6)
@given(files=named_files)
@example(
    files=[
        ([b"sub"], b"READY", b"r", True),
        ([b"sub"], b"manifest.json", b"{", True),
        ([], b"a\nb", b"x", True),
        ([], b"\xff\xfe", b"y", True),
        ([], b"-rf", b"z", True),
        ([], b"\xc3" * 255, b"w", True),
    ]
)
def test_hostile_names_are_promoted_intact_or_rejected_without_a_traceback(
    files: list[Any],
) -> None:
    """Hostile names: `--once` promotes them byte for byte or rejects them, never a traceback."""
    count_case("producer")
    with scratch() as base:
        volume = make_volume(base)
        staging = volume.config.staging_dir
        written, listed = build_named(staging, files)
        (staging / "manifest.json").write_text(json.dumps({"files": listed}))
        (staging / "READY").write_bytes(b"")
        out = volume.cli("--once")
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        assert out.returncode in (0, 1), out.stderr[-2000:]
        assert os.listdir(staging) == []
        current = check_current(volume.models)
        if current is None:
            rejected = os.listdir(volume.models / "rejected")
            assert rejection(volume.models, rejected[0])["reason"] in REJECTION_REASONS
            return
        served = volume.models / "versions" / current
        for rel, data in written.items():
            with open(os.path.join(os.fsencode(served), rel), "rb") as fh:
                assert fh.read() == data, rel


@hostile(0.3)
@given(files=named_files)
@example(files=[([], b"\x1b[2J", b"x", True), ([b"\x07"], b"\xff\n", b"y", True)])
def test_status_text_shows_no_raw_control_characters(files: list[Any]) -> None:
    """Whatever a bundle's names, `status` prints no raw control character."""
    count_case("producer")
    with scratch() as base:
        volume = make_volume(base)
        staging = volume.config.staging_dir
        _written, listed = build_named(staging, files)
        listed = {k: {"sha256": "0" * 64} for k in listed}  # rejected: its detail is shown
        (staging / "manifest.json").write_text(json.dumps({"files": listed}))
        (staging / "READY").write_bytes(b"")
        volume.promoter.run_pass(wait=True)
        out = volume.cli("status")
        assert out.returncode == 0, out.stderr
        assert control_characters(out.stdout) == [], out.stdout


# -- stage and the sidecar agree ------------------------------------------------------------

bundle_files = st.dictionaries(
    st.sampled_from(["model.onnx", "weights/w.bin", "config.json", "d/e/f.txt", "-x"]),
    st.binary(min_size=1, max_size=64),
    min_size=1,
    max_size=4,
)
MUTATIONS = {
    "none": None,
    "sha256": "checksum_mismatch",
    "size": "size_mismatch",
    "missing": "file_missing",
    "empty": "empty_bundle",
    "manifest only": "empty_bundle",
}


def producer_bundle(src: Path, files: dict[str, bytes], mutation: str, victim: int) -> str:
    """A producer's bundle with its own manifest, damaged by mutation; the victim's name."""
    src.mkdir(parents=True)
    if mutation == "empty":
        return str(src)
    manifest = write_files(src, {} if mutation == "manifest only" else files, ready=False)
    manifest["version"] = "v1"
    name = sorted(files)[victim % len(files)]
    spec = manifest["files"].get(name)
    if mutation == "sha256":
        spec["sha256"] = sha(files[name] + b"!")
    elif mutation == "size":
        spec["size"] += 1
    elif mutation == "missing":
        (src / name).unlink()
        (src / "unlisted.bin").write_bytes(b"so that the bundle is not empty")
    elif mutation == "manifest only":
        manifest["files"] = {}
        name = str(src)
    (src / "manifest.json").write_text(json.dumps(manifest))
    return name


@hostile(0.6)
@given(files=bundle_files, mutation=st.sampled_from(sorted(MUTATIONS)), victim=st.integers(0, 3))
def test_stage_and_the_sidecar_agree_on_a_producers_manifest(
    files: dict[str, bytes], mutation: str, victim: int
) -> None:
    """stage exits 1 naming the fault exactly when the sidecar rejects the same bundle."""
    count_case("producer")
    with scratch() as base:
        src = base / "bundle"
        named = producer_bundle(src, files, mutation, victim)
        volume = make_volume(base / "a")
        volume.models.mkdir(parents=True)
        out = volume.cli("stage", str(src))
        staging = volume.config.staging_dir
        if MUTATIONS[mutation] is None:
            assert out.returncode == 0, out.stderr
            assert volume.promoter.run_pass(wait=True).outcome == "promoted"
        else:
            assert out.returncode == 1, (out.returncode, out.stderr)
            assert "Traceback" not in out.stderr
            assert named in out.stderr, out.stderr
            assert not staging.exists() or os.listdir(staging) == []
        by_hand = make_volume(base / "b")
        shutil.copytree(src, by_hand.config.staging_dir, symlinks=True)
        (by_hand.config.staging_dir / "READY").write_bytes(b"")
        result = by_hand.promoter.run_pass(wait=True)
        if MUTATIONS[mutation] is None:
            assert result.outcome == "promoted"
        else:
            assert result.outcome == "rejected"
            assert rejection(by_hand.models, result.version)["reason"] == MUTATIONS[mutation]


version_name = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")


@hostile(0.2)
@given(listed=version_name, asked=version_name)
def test_stage_refuses_a_version_that_contradicts_the_manifest(listed: str, asked: str) -> None:
    """`stage --version A` of a manifest saying B exits 1 naming both; staging stays empty."""
    count_case("producer")
    with scratch() as base:
        src = base / "bundle"
        manifest = write_files(src, {"m.bin": b"model"}, ready=False)
        (src / "manifest.json").write_text(json.dumps({**manifest, "version": listed}))
        volume = make_volume(base)
        volume.models.mkdir()
        out = volume.cli("stage", str(src), "--version", asked)
        if listed == asked:
            assert out.returncode == 0, out.stderr
            return
        assert out.returncode == 1, (out.returncode, out.stderr)
        assert listed in out.stderr and asked in out.stderr, out.stderr
        staging = volume.config.staging_dir
        assert not staging.exists() or os.listdir(staging) == []


# -- READY of any kind ------------------------------------------------------------------------

READY_KINDS = [
    "directory",
    "directory with files",
    "dangling symlink",
    "symlink to a file outside",
    "symlink to a directory outside",
    "symlink to a staged file",
    "fifo",
]


def make_ready(ready: Path, kind: str, sentinel: Path) -> None:
    if kind == "directory":
        ready.mkdir()
    elif kind == "directory with files":
        (ready / "inner").mkdir(parents=True)
        (ready / "inner" / "x").write_bytes(b"x")
    elif kind == "dangling symlink":
        ready.symlink_to("nowhere")
    elif kind == "symlink to a file outside":
        ready.symlink_to(sentinel / "secret.txt")
    elif kind == "symlink to a directory outside":
        ready.symlink_to(sentinel)
    elif kind == "symlink to a staged file":
        ready.symlink_to("m0.bin")
    else:
        os.mkfifo(ready)


@hostile(0.6)
@given(kind=st.sampled_from(READY_KINDS), count=st.integers(1, 60))
def test_ready_of_any_kind_is_taken_last_and_never_wedges(kind: str, count: int) -> None:
    """READY of any kind is taken, removed last, and the producer's next stage works."""
    count_case("producer")
    with scratch() as base:
        volume = make_volume(base)
        staging = volume.config.staging_dir
        write_files(staging, {f"m{i}.bin": b"%d" % i for i in range(count)}, ready=False)
        make_ready(staging / "READY", kind, volume.sentinel)
        outside = digest(volume.sentinel)
        early: list[list[str]] = []
        done = threading.Event()

        def watch() -> None:  # READY gone must mean staging empty (SPEC 3)
            while not done.is_set():
                if not os.path.lexists(staging / "READY") and (left := os.listdir(staging)):
                    early.append(left)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            result = volume.promoter.run_pass(wait=True)
        finally:
            done.set()
            watcher.join()
        assert result.outcome == "promoted", result
        assert early == [], f"READY was removed before {early[0]}"
        assert os.listdir(staging) == [] and digest(volume.sentinel) == outside
        src = base / "next"
        write_files(src, {"next.bin": b"next"}, ready=False)
        stage_bundle(src, Layout.from_config(volume.config), "next")  # in-process: fast
        assert volume.promoter.run_pass(wait=True).version == "next"


def test_a_manifest_version_with_a_trailing_newline_is_manifest_invalid(tmp_path: Path) -> None:
    """`{"version": "v1\\n"}` does not match the version rule: manifest_invalid."""
    volume = make_volume(tmp_path)
    write_files(volume.config.staging_dir, {"m.bin": b"m"}, manifest={"version": "v1\n"})
    result = volume.promoter.run_pass(wait=True)
    assert result.outcome == "rejected", os.listdir(volume.models / "versions")
    assert rejection(volume.models, result.version)["reason"] == "manifest_invalid"
