"""Bundle validation: links judged where they will live, tree limits, empty bundles."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.bundle import (
    MAX_TREE_DEPTH,
    check_links,
    check_tree,
    lexical_target,
    resolves_inside,
)
from service.errors import BundleRejected


@pytest.mark.parametrize(
    ("link", "target", "expected"),
    [
        ("a", "b", ("b",)),
        ("d/a", "../b", ("b",)),
        ("d/a", "./x/../y", ("d", "y")),
        ("a", "../x", None),
        ("d/a", "../../x", None),
        ("a", "/etc/passwd", None),
        ("a", "", None),
    ],
)
def test_lexical_target(link: str, target: str, expected: tuple[str, ...] | None) -> None:
    """A target is resolved from its link's own directory; climbing above the root is None."""
    assert lexical_target(PurePosixPath(link), target) == expected


def test_link_through_a_link_then_up_is_caught() -> None:
    """``a/s -> ../b`` then ``u -> a/s/../..``: lexically inside, really outside."""
    links = {"a/s": "../b", "u": "a/s/../.."}
    assert lexical_target(PurePosixPath("u"), links["u"]) == ()
    assert not resolves_inside(PurePosixPath("u"), links)
    with pytest.raises(BundleRejected) as info:
        check_links(links)
    assert info.value.reason == "unsafe_path"


def test_link_loop_is_unsafe() -> None:
    """Links that point at each other forever are unsafe, not a hang."""
    with pytest.raises(BundleRejected):
        check_links({"a": "b", "b": "a/x"})


COMPONENTS = st.sampled_from(["..", ".", "a", "b", "c", "l1", "l2", "f"])
LINK_PLACES = st.sampled_from(["l1", "l2", "a/l1", "a/c/l2", "b/l1"])
# Targets made of components, and targets that go through another link and climb back,
# the shape that fools a lexical check.
TARGETS = st.one_of(
    st.lists(COMPONENTS, min_size=1, max_size=5).map("/".join),
    st.tuples(LINK_PLACES, st.integers(1, 4)).map(lambda t: t[0] + "/.." * t[1]),
    st.tuples(st.integers(0, 2), st.sampled_from(["a", "b", "a/c", "f"])).map(
        lambda t: "../" * t[0] + t[1]
    ),
)


def build(root: Path, links: dict[str, str]) -> None:
    for directory in ("a/c", "b"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "f").write_bytes(b"file")
    for place, target in links.items():
        if not os.path.lexists(root / place):
            (root / place).symlink_to(target)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(LINK_PLACES, TARGETS, min_size=1, max_size=5))
def test_accepted_links_resolve_inside_wherever_the_bundle_sits(links: dict[str, str]) -> None:
    """If the links are accepted, the kernel resolves each inside the bundle, at any depth."""
    try:
        check_links(links)
    except BundleRejected:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for where in ("bundle", "x/y/z/bundle"):
            root = Path(tmp, where)
            build(root, links)
            real_root = os.path.realpath(root)
            for place in links:
                resolved = os.path.realpath(root / place)
                assert os.path.commonpath([real_root, resolved]) == real_root, (place, links)


def test_tree_deeper_than_the_limit_is_unsafe(tmp_path: Path) -> None:
    """Directories nested beyond the documented depth are rejected before the walk goes on."""
    deep = tmp_path.joinpath(*["d"] * (MAX_TREE_DEPTH + 1))
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    with pytest.raises(BundleRejected) as info:
        check_tree(tmp_path)
    assert info.value.reason == "unsafe_path"


def test_manifest_and_signature_alone_are_empty(tmp_path: Path) -> None:
    """A bundle with only its manifest and signature is empty_bundle."""
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "manifest.json.sig").write_text("AAAA")
    (tmp_path / "sub").mkdir()
    with pytest.raises(BundleRejected) as info:
        check_tree(tmp_path)
    assert info.value.reason == "empty_bundle"


def test_fifo_is_unsafe(tmp_path: Path) -> None:
    """A fifo in a bundle is rejected as unsafe_path (opening it would block a pass)."""
    (tmp_path / "m").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(BundleRejected) as info:
        check_tree(tmp_path)
    assert info.value.reason == "unsafe_path"
