"""service.manifest_reader: the streaming manifest reader agrees with json.loads, in bounds."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import BundleRejected
from service.manifest_reader import (
    ABSENT,
    DEFAULT_LIMITS,
    Absent,
    FileEntry,
    ManifestDoc,
    ManifestError,
    ManifestRefused,
    ManifestSyntaxError,
    Nested,
    RawValue,
    read_manifest,
    read_manifest_file,
)

LIMITS = DEFAULT_LIMITS
SHA = "ab" * 32
MIB = 1024 * 1024
# The most parsing may add to the daemon's peak RSS: SPEC section 3 allows 64 MiB in all,
# and the daemon's baseline is about 30 MiB.
MEMORY_BUDGET = 24 * MIB


def read(data: bytes, chunk_size: int = 64 * 1024) -> ManifestDoc:
    return read_manifest(io.BytesIO(data), chunk_size=chunk_size)


# -- the reference: json.loads, then what the sidecar uses -----------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def reference_load(data: bytes) -> object:
    """json.loads as this reader's contract states it: UTF-8 (BOM allowed), no NaN."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)


def _raw(value: object) -> RawValue:
    if isinstance(value, list):
        return Nested("array")
    if isinstance(value, dict):
        return Nested("object")
    assert value is None or isinstance(value, str | int | float | bool)
    return value


def _entry(value: object) -> FileEntry | RawValue:
    if not isinstance(value, dict):
        return _raw(value)
    return FileEntry(
        _raw(value["sha256"]) if "sha256" in value else ABSENT,
        _raw(value["size"]) if "size" in value else ABSENT,
    )


def reference_extract(doc: dict[str, object]) -> ManifestDoc:
    files: object = ABSENT
    if "files" in doc:
        raw = doc["files"]
        files = {k: _entry(v) for k, v in raw.items()} if isinstance(raw, dict) else _raw(raw)
    sidecar = doc.get("sidecar")
    interval: RawValue | Absent = ABSENT
    if isinstance(sidecar, dict) and "poll_interval_seconds" in sidecar:
        interval = _raw(sidecar["poll_interval_seconds"])
    version = _raw(doc["version"]) if "version" in doc else ABSENT
    return ManifestDoc(version, files, interval)  # type: ignore[arg-type]


def canon(value: object) -> object:
    """A comparable form that tells 0, 0.0, -0.0 and False apart."""
    if isinstance(value, ManifestDoc):
        return tuple(canon(v) for v in (value.version, value.files, value.poll_interval_seconds))
    if isinstance(value, dict):
        return {canon(k): canon(v) for k, v in value.items()}
    if isinstance(value, FileEntry):
        return ("entry", canon(value.sha256), canon(value.size))
    return (type(value).__name__, repr(value))


# -- generated documents: objects as lists of pairs, so keys can repeat ----------------------

texts = st.text(max_size=12) | st.text(st.characters(codec="utf-8"), max_size=6)
surrogate_texts = st.text(st.characters(categories=["Cs", "Ll"]), max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)


def _objects(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    keys = texts | st.sampled_from(
        ["version", "files", "sidecar", "sha256", "size", "poll_interval_seconds"]
    )
    return st.builds(
        lambda pairs: ("object", pairs), st.lists(st.tuples(keys, children), max_size=5)
    )


values = st.recursive(
    scalars | surrogate_texts,
    lambda children: st.lists(children, max_size=5) | _objects(children),
    max_leaves=20,
)
entries = _objects(scalars | values)
paths = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@st.composite
def manifests(draw: st.DrawFn) -> object:
    pairs: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(["version", "files", "sidecar", "other"]))
        if key == "files":
            files = draw(st.lists(st.tuples(paths, entries | scalars), max_size=5))
            pairs.append((key, ("object", files) if draw(st.booleans()) else draw(values)))
        elif key == "sidecar":
            inner = draw(
                st.lists(st.tuples(st.just("poll_interval_seconds") | texts, values), max_size=3)
            )
            pairs.append((key, ("object", inner)))
        else:
            pairs.append((draw(texts) if key == "other" else key, draw(values)))
    return ("object", pairs)


@st.composite
def serialized(draw: st.DrawFn, tree: object) -> bytes:
    """tree as JSON text with random whitespace and random escaping."""
    ws = st.sampled_from(["", "", " ", "\n", "\t", "\r\n  "])

    def dump(node: object) -> str:
        if isinstance(node, tuple):
            members = [dump_str(k) + draw(ws) + ":" + draw(ws) + dump(v) for k, v in node[1]]
            return "{" + draw(ws) + ("," + draw(ws)).join(members) + draw(ws) + "}"
        if isinstance(node, list):
            return "[" + draw(ws) + ("," + draw(ws)).join(map(dump, node)) + draw(ws) + "]"
        if isinstance(node, str):
            return dump_str(node)
        if isinstance(node, float) and draw(st.booleans()):
            return f"{node:e}"
        return json.dumps(node)

    def dump_str(text: str) -> str:
        ascii_only = draw(st.booleans()) or any("\ud800" <= c <= "\udfff" for c in text)
        return json.dumps(text, ensure_ascii=ascii_only)

    return (draw(ws) + dump(tree) + draw(ws)).encode("utf-8")


def expected_outcome(data: bytes) -> ManifestDoc | type[ManifestError]:
    try:
        doc = reference_load(data)
    except (ValueError, RecursionError):
        return ManifestSyntaxError
    if not isinstance(doc, dict):
        return ManifestRefused
    files = doc.get("files")
    if isinstance(files, dict):
        for path in files:
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                return ManifestRefused
    return reference_extract(doc)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_generated_manifests_read_as_json_loads_reads_them(data: st.DataObject) -> None:
    """Any generated manifest reads as json.loads plus extraction reads it, at any chunking."""
    raw = data.draw(serialized(data.draw(manifests())))
    expected = expected_outcome(raw)
    for chunk_size in (data.draw(st.integers(1, 7)), 64 * 1024):
        if isinstance(expected, ManifestDoc):
            assert canon(read(raw, chunk_size)) == canon(expected)
        else:
            with pytest.raises(expected):
                read(raw, chunk_size)


def _mutated(data: st.DataObject) -> bytes:
    raw = bytearray(data.draw(serialized(data.draw(manifests()))))
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(raw)))
        junk = data.draw(
            st.sampled_from(
                [
                    b"",
                    b",",
                    b"]",
                    b"}",
                    b'"',
                    b"\\",
                    b"\x00",
                    b"\xff",
                    b"\xc3",
                    b"-",
                    b"0",
                    b".",
                    b"e",
                    b"NaN",
                    b"\xef\xbb\xbf",
                    b"\\u",
                    b"\\ud800",
                    b"[",
                    b"{",
                    b":",
                    b"tru",
                ]
            )
        )
        cut = data.draw(st.integers(0, 2))
        raw[index : index + cut] = junk
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_bytes_agree_with_json_loads_or_raise_the_typed_error(data: st.DataObject) -> None:
    """Any bytes: valid for the reader exactly when valid for json.loads; only typed errors."""
    raw = data.draw(st.binary(max_size=40)) if data.draw(st.booleans()) else _mutated(data)
    expected = expected_outcome(raw)
    for chunk_size in (data.draw(st.integers(1, 7)), 64 * 1024):
        try:
            got = read(raw, chunk_size)
        except ManifestSyntaxError:
            assert expected is ManifestSyntaxError, raw
            continue
        except ManifestRefused:
            # Small inputs are within every size limit: only what json.loads rejects,
            # a top level that is not an object or an unencodable path is refused.
            assert not isinstance(expected, ManifestDoc), raw
            continue
        assert isinstance(expected, ManifestDoc), raw
        assert canon(got) == canon(expected)


# -- fixed cases ---------------------------------------------------------------------------


def test_a_full_manifest_yields_what_the_sidecar_uses() -> None:
    """version, files (sha256 and size only) and sidecar.poll_interval_seconds are kept."""
    doc = read(
        json.dumps(
            {
                "version": "2026.11.30-1",
                "other": {"x": [1, 2]},
                "files": {"m/model.onnx": {"sha256": SHA, "size": 12, "note": "dropped"}},
                "sidecar": {"poll_interval_seconds": 30, "x": 1},
            }
        ).encode()
    )
    assert doc == ManifestDoc("2026.11.30-1", {"m/model.onnx": FileEntry(SHA, 12)}, 30)


def test_duplicate_keys_take_the_last_value_at_every_level() -> None:
    """Repeated version, files, sidecar, paths and entry keys: the last one wins."""
    raw = (
        b'{"version":"a","files":{"x":{"sha256":"1"}},"version":"b",'
        b'"files":{"y":{"sha256":"2","sha256":"3"},"y":{"size":4,"sha256":"5"}},'
        b'"sidecar":{"poll_interval_seconds":5},"sidecar":{"other":1}}'
    )
    assert read(raw) == ManifestDoc("b", {"y": FileEntry("5", 4)}, ABSENT)


def test_a_nested_value_where_a_scalar_is_used_is_reported_not_built() -> None:
    """An array or object as version, sha256 or interval comes back as Nested."""
    raw = b'{"version":[1],"files":{"a":{"sha256":{"x":1}}},"sidecar":{"poll_interval_seconds":[]}}'
    doc = read(raw)
    assert doc == ManifestDoc(Nested("array"), {"a": FileEntry(Nested("object"))}, Nested("array"))


def test_a_utf8_bom_is_skipped_as_json_loads_skips_it() -> None:
    """A leading UTF-8 byte order mark is accepted, as json.loads(bytes) accepts it."""
    raw = b'\xef\xbb\xbf{"version":"1"}'
    assert json.loads(raw) == {"version": "1"}
    assert read(raw, chunk_size=1).version == "1"


@pytest.mark.parametrize(
    "raw",
    [
        '{"version":"1"}'.encode("utf-16"),
        '{"version":"1"}'.encode("utf-32-le"),
        b'{"version":"1"}\xef\xbb\xbf',
        b" \xef\xbb\xbf{}",
    ],
)
def test_other_encodings_and_a_misplaced_bom_are_invalid(raw: bytes) -> None:
    """UTF-16, UTF-32 and a BOM that is not the first thing are manifest_invalid."""
    with pytest.raises(ManifestSyntaxError) as info:
        read(raw)
    assert info.value.reason == "manifest_invalid"


@pytest.mark.parametrize(
    ("raw", "offset"),
    [
        (b'{"a":"\xff"}', 6),
        (b'{"a":"\xc3"}', 6),
        (b'{"a":"\xed\xa0\x80"}', 6),
        (b'{"a":"x"}  \xe2\x82', 11),
    ],
)
def test_invalid_utf8_is_reported_with_its_byte_offset(raw: bytes, offset: int) -> None:
    """Invalid or truncated UTF-8 (and UTF-8-encoded surrogates) name the byte offset."""
    for chunk_size in (1, 2, 3, 64):
        with pytest.raises(ManifestSyntaxError) as info:
            read(raw, chunk_size)
        assert info.value.offset == offset
        assert f"byte {offset}" in info.value.detail


@pytest.mark.parametrize(
    ("raw", "offset"),
    [
        (b'{"a":NaN}', 5),
        (b'{"a":-Infinity}', 5),
        (b'{"a":1,}', 7),
        (b'{"a":01}', 5),
        (b"{}{}", 2),
        (b'{"a":"x\ty"}', 7),
        (b'{"a":"\\x"}', 6),
        (b"", 0),
        (b'{"a" 1}', 5),
    ],
)
def test_invalid_json_is_manifest_invalid_with_its_byte_offset(raw: bytes, offset: int) -> None:
    """Syntax errors name the byte offset where they are."""
    with pytest.raises(ManifestSyntaxError) as info:
        read(raw)
    assert info.value.reason == "manifest_invalid"
    assert info.value.offset == offset


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "manifest_invalid"),
        (b'{"x":' + b"[" * 99, "manifest_invalid"),
        (b'{"files":{"' + b"a/" * 40 + b'a":{}}}', "unsafe_path"),
    ],
)
def test_every_error_is_a_bundle_rejection_with_its_reason(raw: bytes, reason: str) -> None:
    """ManifestError is a BundleRejected: the promotion rejects with reason and detail as is."""
    with pytest.raises(BundleRejected) as info:
        read(raw)
    assert info.value.reason == reason and str(info.value) == info.value.detail


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"1", b"null"])
def test_a_top_level_value_that_is_not_an_object_is_refused(raw: bytes) -> None:
    """SPEC section 3: the manifest must be a JSON object."""
    with pytest.raises(ManifestRefused, match="not a JSON object"):
        read(raw)


def test_a_refusal_detail_is_one_short_line_without_the_content() -> None:
    """An over-long value is named by key; its content is not dumped."""
    raw = b'{"files":{"a":{"sha256":"' + b"\n".join([b"x" * 100] * 50).replace(b"\n", b"\\n")
    with pytest.raises(ManifestRefused) as info:
        read(raw + b'"}}}')
    detail = info.value.detail
    assert "files['a'].sha256" in detail
    assert "\n" not in detail and "xxxx" not in detail and len(detail) < 120


def test_step_runs_after_every_chunk_and_what_it_raises_stops_the_parse(tmp_path: Path) -> None:
    """step is called per chunk read; an exception from it (a stop) abandons the parse."""
    path = tmp_path / "manifest.json"
    path.write_bytes(b'{"version":"1"}' + b" " * 100)
    calls: list[int] = []
    read_manifest_file(path, chunk_size=10, step=lambda: calls.append(1))
    assert len(calls) == 13  # 12 chunks and the empty read at the end

    def stop() -> None:
        if len(calls) > 15:
            raise InterruptedError("stopping")
        calls.append(1)

    with pytest.raises(InterruptedError):
        read_manifest_file(path, chunk_size=10, step=stop)


# -- each limit, at and just beyond -----------------------------------------------------------


def _files(paths: list[str]) -> bytes:
    return json.dumps({"files": {p: {"sha256": SHA} for p in paths}}).encode()


def test_entries_at_the_limit_are_read() -> None:
    """max_entries entries are accepted."""
    doc = read(_files([f"f{i}" for i in range(LIMITS.max_entries)]))
    assert isinstance(doc.files, dict) and len(doc.files) == LIMITS.max_entries


def test_one_entry_beyond_the_limit_is_manifest_invalid_at_that_entry() -> None:
    """Entry max_entries + 1 is refused where it starts: reading stops there."""
    raw = _files([f"f{i}" for i in range(LIMITS.max_entries + 1000)])
    with pytest.raises(ManifestRefused) as info:
        read(raw)
    assert info.value.reason == "manifest_invalid"
    assert f"more than {LIMITS.max_entries} entries" in info.value.detail
    assert info.value.offset == raw.index(f'"f{LIMITS.max_entries}"'.encode()) + 9


def test_repeated_paths_count_as_entries_and_the_last_wins() -> None:
    """A path listed again is one more entry (each costs parsing time); its last value wins."""
    pairs = [f'"f{i % 10}":{{"size":{i}}}' for i in range(LIMITS.max_entries)]
    doc = read(('{"files":{' + ",".join(pairs) + "}}").encode())
    assert isinstance(doc.files, dict) and len(doc.files) == 10
    assert doc.files["f0"] == FileEntry(ABSENT, LIMITS.max_entries - 10)
    with pytest.raises(ManifestRefused, match="entries"):
        read(('{"files":{' + ",".join([*pairs, '"f0":{}']) + "}}").encode())


def test_containers_at_and_beyond_the_limit() -> None:
    """max_containers non-empty arrays and objects are read; one more is manifest_invalid."""
    count = LIMITS.max_containers - 1  # the top-level object is one
    read(b'{"x":[' + b",".join([b"[0]"] * (count - 1)) + b"]}")
    with pytest.raises(ManifestRefused, match="non-empty arrays and objects") as info:
        read(b'{"x":[' + b",".join([b"[0]"] * count) + b"]}")
    assert info.value.reason == "manifest_invalid"


@pytest.mark.parametrize("spelling", ['"k{}":0', '"\\u0061{}":null', '"version":"{}"'])
def test_keys_of_inspected_objects_at_and_beyond_the_limit(spelling: str) -> None:
    """max_keys keys in the top level, sidecar and entries, however spelled; one more is refused."""
    inspected = '"sidecar":{"a":1},"files":{"path":{"size":1}}'  # 4 keys; a path is an entry
    keys = [spelling.format(i) for i in range(LIMITS.max_keys - 4)]
    raw = "{" + ",".join([*keys, inspected])
    read((raw + "}").encode())
    with pytest.raises(ManifestRefused, match=f"more than {LIMITS.max_keys} keys") as info:
        read((raw + ',"x":1}').encode())
    assert info.value.reason == "manifest_invalid"


def test_empty_containers_are_not_counted() -> None:
    """Empty arrays and objects cost no more than scalars: they are not containers counted."""
    read(b'{"x":[' + b",".join([b"[]", b"{}"] * LIMITS.max_containers) + b"]}")


@pytest.mark.parametrize("unit", ["a", "\u00e9", "\u20ac", "\U0001f600"])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_path_length_is_counted_in_utf8_bytes(unit: str, ascii_only: bool) -> None:
    """A path of max_path_bytes UTF-8 bytes is read; one byte more is unsafe_path."""
    count = LIMITS.max_path_bytes // len(unit.encode())
    at_limit = unit * count + "a" * (LIMITS.max_path_bytes - count * len(unit.encode()))
    doc = read(json.dumps({"files": {at_limit: {}}}, ensure_ascii=ascii_only).encode())
    assert isinstance(doc.files, dict) and list(doc.files) == [at_limit]
    with pytest.raises(ManifestRefused) as info:
        read(json.dumps({"files": {at_limit + "a": {}}}, ensure_ascii=ascii_only).encode())
    assert info.value.reason == "unsafe_path"
    assert f"longer than {LIMITS.max_path_bytes} bytes" in info.value.detail


def test_a_huge_path_is_refused_before_it_is_held() -> None:
    """A path of a megabyte is unsafe_path once it passes 6 x max_path_bytes of text."""
    raw = b'{"files":{"' + b"a" * MIB + b'":{}}}'
    with pytest.raises(ManifestRefused) as info:
        read(raw)
    assert info.value.reason == "unsafe_path"
    assert info.value.offset <= 10 + 6 * LIMITS.max_path_bytes + 64 * 1024


def test_path_components_at_and_beyond_the_limit() -> None:
    """max_path_components components are read; one more is unsafe_path."""
    at_limit = "/".join(["d"] * LIMITS.max_path_components)
    assert isinstance(read(_files([at_limit])).files, dict)
    with pytest.raises(ManifestRefused, match="components") as info:
        read(_files([at_limit + "/f"]))
    assert info.value.reason == "unsafe_path"


def test_a_path_with_a_lone_surrogate_is_unsafe_path() -> None:
    """A path that is no valid Unicode cannot name a file: unsafe_path, not a crash later."""
    with pytest.raises(ManifestRefused) as info:
        read(b'{"files":{"a\\ud800":{}}}')
    assert info.value.reason == "unsafe_path"


def _nested(levels: int) -> bytes:
    """A manifest whose deepest value sits levels deep, the top-level object included."""
    return b'{"version":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


@pytest.mark.parametrize("key", ["version", "other"])
def test_nesting_at_and_beyond_the_limit(key: str) -> None:
    """max_nesting levels are read; one more is manifest_invalid."""
    at_limit = _nested(LIMITS.max_nesting).replace(b"version", key.encode())
    read(at_limit, chunk_size=3)
    beyond = _nested(LIMITS.max_nesting + 1).replace(b"version", key.encode())
    with pytest.raises(ManifestRefused, match="nested deeper") as info:
        read(beyond, chunk_size=3)
    assert info.value.reason == "manifest_invalid"


def test_nesting_counts_the_files_levels() -> None:
    """A sha256 value nested under files counts the files and entry objects."""
    inner = b"[" * (LIMITS.max_nesting - 3) + b"]" * (LIMITS.max_nesting - 3)
    assert read(b'{"files":{"a":{"sha256":' + inner + b"}}}").files == {
        "a": FileEntry(Nested("array"))
    }
    with pytest.raises(ManifestRefused):
        read(b'{"files":{"a":{"sha256":[' + inner + b"]}}}")


def test_deep_nesting_far_beyond_the_limit_is_refused_not_a_recursion_error() -> None:
    """A million opening brackets are manifest_invalid (json.loads would raise RecursionError)."""
    with pytest.raises(ManifestRefused):
        read(b'{"x":' + b"[" * 1_000_000)


@pytest.mark.parametrize("key", ["version", "sha256", "size", "poll"])
def test_held_scalars_at_and_beyond_the_limit(key: str) -> None:
    """A held string of max_scalar_bytes is read; one byte more is manifest_invalid."""

    def doc(value: bytes) -> bytes:
        return {
            "version": b'{"version":%s}',
            "sha256": b'{"files":{"a":{"sha256":%s}}}',
            "size": b'{"files":{"a":{"size":%s}}}',
            "poll": b'{"sidecar":{"poll_interval_seconds":%s}}',
        }[key] % value

    limit = LIMITS.max_scalar_bytes
    read(doc(b'"' + b"v" * limit + b'"'))
    read(doc(b"1" * limit))
    for beyond in (b'"' + b"v" * (limit + 1) + b'"', b"1" * (limit + 1)):
        with pytest.raises(ManifestRefused, match="longer than") as info:
            read(doc(beyond))
        assert info.value.reason == "manifest_invalid"


def test_ignored_numbers_at_and_beyond_the_limit() -> None:
    """An ignored number of max_number_bytes is read; one byte more is manifest_invalid."""
    read(b'{"x":[1' + b"0" * (LIMITS.max_number_bytes - 1) + b"]}", chunk_size=5)
    with pytest.raises(ManifestRefused, match="number"):
        read(b'{"x":[1' + b"0" * LIMITS.max_number_bytes + b"]}", chunk_size=5)


def test_an_integer_json_loads_refuses_is_refused() -> None:
    """Python's json refuses integers of more than 4,300 digits; so does the reader."""
    raw = b'{"x":' + b"1" * 5000 + b"}"
    with pytest.raises(ValueError, match="digits"):
        json.loads(raw)
    with pytest.raises(ManifestError):
        read(raw)


def test_bytes_at_and_beyond_the_limit(tmp_path: Path) -> None:
    """A file of max_bytes is read; one byte more is refused from its size, or while read."""
    body = b'{"version":"1"}'
    at_limit = body + b" " * (LIMITS.max_bytes - len(body))
    path = tmp_path / "manifest.json"
    path.write_bytes(at_limit)
    assert read_manifest_file(path).version == "1"
    path.write_bytes(at_limit + b" ")
    with pytest.raises(ManifestRefused, match="larger than") as info:
        read_manifest_file(path)
    assert info.value.reason == "manifest_invalid"
    with pytest.raises(ManifestRefused, match="larger than"):
        read(at_limit + b" ")  # no size known beforehand: counted as read


def test_wide_paths_stop_at_the_held_bytes_limit() -> None:
    """Paths of 4-byte-a-character strings in memory hit max_held_bytes before max_entries."""
    wide = "\U0001f600" + "a" * (LIMITS.max_path_bytes - 14)
    raw = _files([f"{i:08d}{wide}" for i in range(LIMITS.max_entries)])
    with pytest.raises(ManifestRefused, match="to hold") as info:
        read(raw)
    assert info.value.reason == "manifest_invalid"


# -- memory ----------------------------------------------------------------------------------

PROBE = """
import sys
from pathlib import Path
from service.manifest_reader import ManifestError, read_manifest_file

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

before = hwm()
try:
    doc = read_manifest_file(Path(sys.argv[1]))
    outcome = "accepted %d" % (len(doc.files) if isinstance(doc.files, dict) else 0)
except ManifestError as exc:
    outcome = exc.reason + " " + exc.detail
print(hwm() - before, outcome)
"""


def _spaces(path: Path, head: bytes, tail: bytes) -> None:
    path.write_bytes(head + b" " * (LIMITS.max_bytes - len(head) - len(tail)) + tail)


def _max_entries(path: Path) -> None:
    """max_entries paths of max_path_bytes, each entry padded to fill max_bytes."""
    pad = LIMITS.max_bytes // LIMITS.max_entries - LIMITS.max_path_bytes - 140
    with path.open("w") as out:
        out.write('{"files":{')
        for i in range(LIMITS.max_entries):
            name = f"{i:08d}" + "d/" * (LIMITS.max_path_components - 1)
            name += "f" * (LIMITS.max_path_bytes - len(name))
            sep = "," if i else ""
            out.write(f'{sep}"{name}":{{"sha256":"{SHA}","size":{i},"pad":"{"p" * pad}"}}')
        out.write("}}")


def _wide(path: Path) -> None:
    """As many wide paths as max_held_bytes allows (the in-memory worst case)."""
    wide = "\U0001f600" + "a" * (LIMITS.max_path_bytes - 14)
    path.write_bytes(_files([f"{i:08d}{wide}" for i in range(3_600)]))


def _deep(path: Path) -> None:
    """Values nested to max_nesting levels (top and array included), up to max_containers,
    each around a string that pads the file to max_bytes."""
    levels = LIMITS.max_nesting - 2
    count = LIMITS.max_containers // levels - 1
    pad = LIMITS.max_bytes // count - 2 * levels - 3
    value = b"[" * levels + b'"' + b"p" * pad + b'"' + b"]" * levels
    path.write_bytes(b'{"x":[' + b",".join([value] * count) + b"]}")


MEMORY_CASES = {
    "whitespace": (lambda p: _spaces(p, b'{"version":"1"', b"}"), "accepted 0"),
    "huge_string": (
        lambda p: p.write_bytes(b'{"x":"' + b"s" * (LIMITS.max_bytes - 8) + b'"}'),
        "accepted 0",
    ),
    "max_entries": (_max_entries, f"accepted {LIMITS.max_entries}"),
    "wide_paths": (_wide, "accepted 3600"),
    "deep": (_deep, "accepted 0"),
    "issue_10_200k_entries": (
        lambda p: p.write_bytes(_files([f"dir/model-{i:06d}.bin" for i in range(200_000)])),
        "manifest_invalid",
    ),
}


@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_parsing_at_the_limits_stays_within_the_memory_budget(tmp_path: Path, case: str) -> None:
    """Peak RSS grows by less than MEMORY_BUDGET while reading each limit case."""
    build, outcome = MEMORY_CASES[case]
    path = tmp_path / "manifest.json"
    build(path)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    assert out[1].startswith(outcome), out[1]
    assert int(out[0]) < MEMORY_BUDGET, f"{case}: peak RSS grew by {int(out[0]) / MIB:.1f} MiB"
