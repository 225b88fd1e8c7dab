"""A streaming, bounded reader of the bundle manifest (SPEC section 3, issue 10).

The manifest may be 32 MiB, the container 128 MiB: the file is never held whole, as
bytes or as str. It is read in chunks through a strict RFC 8259 tokenizer, and only what
the sidecar uses is built: ``version``, ``files`` (path -> ``sha256`` and ``size``) and
``sidecar.poll_interval_seconds``. Everything else is validated as JSON and dropped as it
is read. Values are returned raw: the caller decides whether they are acceptable.

Limits (:data:`DEFAULT_LIMITS`; each is checked the moment it is crossed, so reading
stops before the excess costs memory). With them, parsing any accepted manifest raises
the process's peak RSS by well under 24 MiB (``benchmarks/manifest_memory.py``):

- the file: at most 32 MiB (SPEC);
- ``files``: at most 10,000 entries (a repeated path counts again: it costs the time of
  an entry, though the last one wins); each path at most 1,024 bytes of UTF-8 and at most
  32 ``/``-separated components (longer or deeper is ``unsafe_path``, as is a path that
  is not valid Unicode, a lone surrogate escape);
- everything held (paths, values, their containers) at most 16 MiB as Python objects:
  10,000 entries of 1,024-byte ASCII paths fit; paths mixing ASCII with characters
  beyond U+FFFF take four bytes a character in memory and reach this cap sooner;
- JSON nesting: at most 64 levels, the top-level object included;
- at most 100,000 non-empty arrays and objects in all (10,000 entries need 10,002), and
  at most 200,000 keys in the objects the reader looks into (the top level, ``sidecar``
  and every ``files`` entry; 10,000 entries of two keys need 20,000): each costs
  microseconds of Python, so these bound the time a hostile manifest can take;
- a held scalar (``version``, ``sha256``, ``size``, the poll interval): at most 256 bytes
  of JSON text; any number: at most 1,024 bytes (Python's json refuses integers of more
  than 4,300 digits; no manifest needs either).

Time: about a second for 10,000 entries in 32 MiB; the slowest shapes within the limits
(100,000 one-element arrays, a 32 MiB array of tiny scalars, 200,000 keys spelled with
escapes)
take seconds of CPU, never minutes (figures in ``benchmarks/manifest_memory.py``).

Errors: :class:`ManifestError`, a ``BundleRejected`` whose ``reason`` is ``manifest_invalid``
or ``unsafe_path``, with a one-line ``detail`` and the byte ``offset``:
:class:`ManifestSyntaxError` when the bytes are not JSON, :class:`ManifestRefused` when
they may be but break a limit above or are not an object. An OSError passes through.

Encoding: UTF-8 only (RFC 8259 section 8.1). A leading UTF-8 byte order mark is skipped,
as ``json.loads`` does for bytes; UTF-16 and UTF-32, which ``json.loads`` would detect,
are invalid. ``NaN`` and ``Infinity`` are invalid. Duplicate keys: the last one wins, as
with ``json.loads``; an earlier ``files`` is dropped before the next one is read.
"""

from __future__ import annotations

import codecs
import enum
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from service.errors import BundleRejected

MIB: Final = 1024 * 1024
Reason = Literal["manifest_invalid", "unsafe_path"]
CHUNK_SIZE: Final = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """The documented limits of a manifest (see the module docstring)."""

    max_bytes: int = 32 * MIB
    max_entries: int = 10_000
    max_path_bytes: int = 1_024
    max_path_components: int = 32
    max_held_bytes: int = 16 * MIB
    max_nesting: int = 64
    max_scalar_bytes: int = 256
    max_number_bytes: int = 1_024
    max_containers: int = 100_000
    max_keys: int = 200_000


DEFAULT_LIMITS: Final = Limits()


class ManifestError(BundleRejected):
    """The manifest cannot be accepted: a BundleRejected, so it may simply propagate.

    ``reason`` is ``manifest_invalid`` or ``unsafe_path`` (SPEC section 4); ``detail`` is one
    line naming the key or limit at fault; ``offset`` is the byte offset in the file where
    it was found.
    """

    def __init__(self, reason: Reason, detail: str, offset: int) -> None:
        super().__init__(reason, detail)
        self.offset = offset


class ManifestSyntaxError(ManifestError):
    """The file is not JSON (RFC 8259, UTF-8)."""


class ManifestRefused(ManifestError):
    """The file may be JSON, but it is beyond a documented limit or not a JSON object."""


class Readable(Protocol):
    """What the reader needs of a file: ``read(size)`` returning bytes (b"" at the end)."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Nested:
    """An array or object where a scalar was expected: validated and skipped, not built."""

    kind: Literal["array", "object"]


class Absent(enum.Enum):
    """The key is not in the manifest."""

    ABSENT = "absent"


ABSENT: Final = Absent.ABSENT
JsonScalar = str | int | float | bool | None
RawValue = JsonScalar | Nested


@dataclass(frozen=True, slots=True)
class FileEntry:
    """An object in ``files``: the raw values of its ``sha256`` and ``size``."""

    sha256: RawValue | Absent = ABSENT
    size: RawValue | Absent = ABSENT


FilesValue = dict[str, FileEntry | RawValue] | RawValue | Absent


@dataclass(frozen=True)
class ManifestDoc:
    """What the sidecar uses of a manifest, raw: the caller validates each value."""

    version: RawValue | Absent = ABSENT
    files: FilesValue = ABSENT
    poll_interval_seconds: RawValue | Absent = ABSENT


def _no_step() -> None:
    """Nothing to report after a chunk."""


def read_manifest_file(
    path: Path,
    limits: Limits = DEFAULT_LIMITS,
    chunk_size: int = CHUNK_SIZE,
    step: Callable[[], None] = _no_step,
) -> ManifestDoc:
    """Parse the manifest at path in bounded memory; OSError passes through.

    step is called after each chunk is read: it may report progress, or raise to abandon
    the parse (service.progress.Progress.step does both); what it raises propagates.
    """
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.max_bytes:
            raise _too_big(limits, size)
        return read_manifest(fh, limits, chunk_size, step)


def read_manifest(
    fh: Readable,
    limits: Limits = DEFAULT_LIMITS,
    chunk_size: int = CHUNK_SIZE,
    step: Callable[[], None] = _no_step,
) -> ManifestDoc:
    """Parse the manifest read from fh, chunk_size bytes at a time (see read_manifest_file)."""
    return _Parser(_Stream(fh, chunk_size, limits.max_bytes, step), limits).document()


def _too_big(limits: Limits, offset: int) -> ManifestRefused:
    return ManifestRefused(
        "manifest_invalid", f"manifest is larger than {limits.max_bytes} bytes", offset
    )


def _quote(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:76] + "..."


# -- tokens ---------------------------------------------------------------------------------

_WS = re.compile(rb"[ \t\n\r]*+")
_STR_BODY = rb'(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+'
_STR_RUN = re.compile(_STR_BODY)
_NUM_CHARS = re.compile(rb"[-+.eE0-9]*+")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+")
# Runs of complete scalar elements (each ending in a comma) are consumed by one match:
# an ignored array of a million numbers costs one regex call per chunk, not per number.
# Short numbers only: longer ones take the path that applies max_number_bytes. The
# variants with empty containers are used where one more level is within max_nesting.
_WSB = rb"[ \t\n\r]*+"
_SCALAR = (
    rb'"' + _STR_BODY + rb'"|true|false|null'
    rb"|-?+(?:0|[1-9][0-9]{0,30}+)(?:\.[0-9]{1,30}+)?+(?:[eE][+-]?+[0-9]{1,5}+)?+"
)
_EMPTY = rb"|\[" + _WSB + rb"\]|\{" + _WSB + rb"\}"


def _runs(scalar: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    value = _WSB + rb"(?:" + scalar + rb")" + _WSB + rb","
    key = _WSB + rb'"' + _STR_BODY + rb'"' + _WSB + rb":"
    return re.compile(rb"(?>" + value + rb")*+"), re.compile(rb"(?>" + key + value + rb")*+")


_FLAT_RUNS = _runs(_SCALAR)
_RUNS = _runs(_SCALAR + _EMPTY)


def _ignored_members(*wanted: str) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """One scalar member (and its comma) whose unescaped key is none of wanted.

    Matched one at a time, so that each is counted against max_keys; with and without
    empty containers as values.
    """
    names = b"|".join(re.escape(name.encode()) for name in wanted)
    key = _WSB + rb'"(?!(?:' + names + rb')")[^"\\\x00-\x1f]*+"' + _WSB + rb":"
    return tuple(  # type: ignore[return-value]
        re.compile(key + _WSB + rb"(?:" + scalar + rb")" + _WSB + rb",")
        for scalar in (_SCALAR + _EMPTY, _SCALAR)
    )


_TOP_RUNS = _ignored_members("version", "files", "sidecar")
_SIDECAR_RUNS = _ignored_members("poll_interval_seconds")
_ENTRY_RUNS = _ignored_members("sha256", "size")
# Single character classes: sre repeats them in a tight loop, unlike a repeated group.
_ARRAY_OPENS = re.compile(rb"\[[\[ \t\n\r]*+")
_CLOSERS = re.compile(rb"[\]}][\]} \t\n\r]*+")
_CLOSER = re.compile(_WSB + rb"[\]}]")
_OPENER_OF = bytes.maketrans(b"]}", b"[{")
_NOT_WS = b" \t\n\r"
_LITERALS: Final[dict[int, tuple[bytes, bool | None]]] = {
    ord("t"): (b"true", True),
    ord("f"): (b"false", False),
    ord("n"): (b"null", None),
}
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_NUMBER_START = frozenset(b"-0123456789")
_EOF = -1
_BOM = codecs.BOM_UTF8
# The longest key the reader looks for is "poll_interval_seconds": 21 characters, each at
# most 6 bytes escaped. A longer key is none of them and is skipped without being held.
_KEY_CAP = 6 * len("poll_interval_seconds")
_PLAIN_KEY = re.compile(rb'"([^"\\\x00-\x1f]{0,%d}+)"' % _KEY_CAP)
_DICT_SLOT_BYTES = 64


class _Stream:
    """The file as a sliding window: the unconsumed tail of a chunk plus the next chunk."""

    def __init__(
        self, fh: Readable, chunk_size: int, max_bytes: int, step: Callable[[], None]
    ) -> None:
        self._fh, self._chunk_size, self._max_bytes, self._step = fh, chunk_size, max_bytes, step
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._read = 0
        self.buf, self.pos, self.base, self.eof = b"", 0, 0, False

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def more(self) -> bool:
        """Append the next chunk to the unconsumed tail; False at the end of the file."""
        if self.eof:
            return False
        data = self._fh.read(self._chunk_size)
        self._step()
        self._check_utf8(data)
        if not data:
            self.eof = True
            return False
        self._read += len(data)
        if self._read > self._max_bytes:
            raise ManifestRefused(
                "manifest_invalid", f"manifest is larger than {self._max_bytes} bytes", self._read
            )
        self.base += self.pos
        self.buf, self.pos = self.buf[self.pos :] + data, 0
        return True

    def _check_utf8(self, data: bytes) -> None:
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            offset = self._read - pending + exc.start
            raise ManifestSyntaxError(
                "manifest_invalid", f"manifest is not valid UTF-8 at byte {offset}", offset
            ) from None

    def ensure(self, count: int) -> None:
        """At least count bytes from pos in buf, unless the file ends first."""
        while len(self.buf) - self.pos < count and self.more():
            pass

    def peek(self) -> int:
        """The next byte that is not whitespace (consumed up to it), or _EOF."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return _EOF

    def run(self, pattern: re.Pattern[bytes]) -> None:
        self.pos = pattern.match(self.buf, self.pos).end()  # type: ignore[union-attr]


# -- parser ---------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over _Stream; depth is the nesting level of the enclosing value."""

    def __init__(self, stream: _Stream, limits: Limits) -> None:
        self.s, self.limits = stream, limits
        self.held = 0
        self.containers = 0
        self.keys = 0

    def fail(self, what: str) -> ManifestSyntaxError:
        offset = self.s.offset
        return ManifestSyntaxError(
            "manifest_invalid", f"manifest is not valid JSON at byte {offset}: {what}", offset
        )

    def refuse(self, detail: str, reason: Reason = "manifest_invalid") -> ManifestRefused:
        offset = self.s.offset
        return ManifestRefused(reason, f"{detail} (at byte {offset})", offset)

    def expect(self, byte: bytes, what: str) -> None:
        if self.s.peek() != byte[0]:
            raise self.fail(f"expected {what}")
        self.s.pos += 1

    def document(self) -> ManifestDoc:
        self.s.ensure(len(_BOM))
        if self.s.buf.startswith(_BOM):
            self.s.pos = len(_BOM)
        first = self.s.peek()
        if first in _NUMBER_START or first in _LITERALS or first in (_QUOTE, ord("[")):
            raise self.refuse("manifest is not a JSON object")
        if first != ord("{"):
            raise self.fail("expected an object")
        doc = self.top_object()
        if self.s.peek() != _EOF:
            raise self.fail("extra data after the manifest object")
        return doc

    def members(
        self,
        depth: int,
        on_key: Callable[[str | None], None],
        ignored: tuple[re.Pattern[bytes], re.Pattern[bytes]],
    ) -> None:
        """The members of the object at pos, each key given to on_key (None: not held).

        Members that on_key would skip are matched by ignored (_ignored_members) first.
        Every key counts against max_keys, which bounds the time these objects take.
        """
        s = self.s
        self.open(depth)
        if s.peek() == ord("}"):
            s.pos += 1
            return
        ignored_member = ignored[0] if depth + 1 < self.limits.max_nesting else ignored[1]
        while True:
            while (match := ignored_member.match(s.buf, s.pos)) is not None:
                self.count_key()
                s.pos = match.end()
            if s.peek() != _QUOTE:
                raise self.fail("expected a key string")
            self.count_key()
            key = self.key()
            self.expect(b":", "':'")
            on_key(key)
            if self.close_or_next(ord("}"), "'}'"):
                return

    def open(self, depth: int) -> None:
        """Enter the object at pos (then at its '}' when it is empty)."""
        if depth >= self.limits.max_nesting:
            raise self.refuse(f"manifest is nested deeper than {self.limits.max_nesting} levels")
        self.s.pos += 1
        if self.s.peek() != ord("}"):
            self.count_containers(1)

    def count_key(self) -> None:
        self.keys += 1
        if self.keys > self.limits.max_keys:
            limit = self.limits.max_keys
            raise self.refuse(
                f"the top level, sidecar and files entries have more than {limit} keys"
            )

    def count_containers(self, count: int) -> None:
        """Non-empty arrays and objects each cost a pass of this parser's Python code."""
        self.containers += count
        if self.containers > self.limits.max_containers:
            limit = self.limits.max_containers
            raise self.refuse(f"manifest has more than {limit} non-empty arrays and objects")

    def close_or_next(self, closer: int, name: str) -> bool:
        byte = self.s.peek()
        self.s.pos += 1
        if byte == closer:
            return True
        if byte != ord(","):
            self.s.pos -= 1
            raise self.fail(f"expected ',' or {name}")
        return False

    def top_object(self) -> ManifestDoc:
        version: RawValue | Absent = ABSENT
        files: FilesValue = ABSENT
        interval: RawValue | Absent = ABSENT

        def on_key(key: str | None) -> None:
            nonlocal version, files, interval
            # Last wins: an earlier value is dropped before the next one is read.
            if key == "version":
                version = ABSENT
                version = self.scalar(1, "version")
            elif key == "files":
                files = ABSENT
                files = self.files(1)
            elif key == "sidecar":
                interval = ABSENT
                interval = self.sidecar(1)
            else:
                self.skip(1)

        self.members(0, on_key, _TOP_RUNS)
        return ManifestDoc(version, files, interval)

    def sidecar(self, depth: int) -> RawValue | Absent:
        """sidecar.poll_interval_seconds; ABSENT when sidecar is not an object."""
        if self.s.peek() != ord("{"):
            self.skip(depth)
            return ABSENT
        found: list[RawValue] = []

        def on_key(key: str | None) -> None:
            if key == "poll_interval_seconds":
                found[:] = [self.scalar(depth + 1, "sidecar.poll_interval_seconds")]
            else:
                self.skip(depth + 1)

        self.members(depth, on_key, _SIDECAR_RUNS)
        return found[0] if found else ABSENT

    def files(self, depth: int) -> FilesValue:
        if self.s.peek() != ord("{"):
            return self.scalar(depth, "files")
        files: dict[str, FileEntry | RawValue] = {}
        seen = [0]

        def on_path(path: str) -> None:
            # Repeated paths count too: they cost the time of an entry each.
            seen[0] += 1
            if seen[0] > self.limits.max_entries:
                raise self.refuse(f"files has more than {self.limits.max_entries} entries")
            entry = self.entry(depth + 1, path)
            old = files.get(path)
            self.hold(
                _entry_cost(entry)
                - (0 if old is None else _entry_cost(old))
                + (sys.getsizeof(path) + _DICT_SLOT_BYTES if old is None else 0)
            )
            files[path] = entry

        self.path_members(depth, on_path)
        return files

    def hold(self, size: int) -> None:
        self.held += size
        if self.held > self.limits.max_held_bytes:
            raise self.refuse(f"files take more than {self.limits.max_held_bytes} bytes to hold")

    def path_members(self, depth: int, on_path: Callable[[str], None]) -> None:
        """Like members, with each key read in full as a path within the path limits."""
        self.open(depth)
        if self.s.peek() == ord("}"):
            self.s.pos += 1
            return
        while True:
            if self.s.peek() != _QUOTE:
                raise self.fail("expected a key string")
            path = self.path()
            self.expect(b":", "':'")
            on_path(path)
            if self.close_or_next(ord("}"), "'}'"):
                return

    def entry(self, depth: int, path: str) -> FileEntry | RawValue:
        name = f"files[{_quote(path)}]"
        if self.s.peek() != ord("{"):
            return self.scalar(depth, name)
        found: dict[str, RawValue] = {}

        def on_key(key: str | None) -> None:
            if key in ("sha256", "size"):
                found.pop(key, None)
                found[key] = self.scalar(depth + 1, f"{name}.{key}")
            else:
                self.skip(depth + 1)

        self.members(depth, on_key, _ENTRY_RUNS)
        return FileEntry(found.get("sha256", ABSENT), found.get("size", ABSENT))

    # -- values -----------------------------------------------------------------------------

    def scalar(self, depth: int, name: str) -> RawValue:
        """A value held raw: a scalar within max_scalar_bytes, or a skipped Nested."""
        byte = self.s.peek()
        if byte in (ord("["), ord("{")):
            self.skip(depth)
            return Nested("array" if byte == ord("[") else "object")
        if byte == _QUOTE:
            limit = self.limits.max_scalar_bytes
            raw = self.held_string(
                limit, lambda: self.refuse(f"{name} is longer than {limit} bytes")
            )
            return _decode_string(raw)
        if byte in _NUMBER_START:
            token = self.number()
            if len(token) > self.limits.max_scalar_bytes:
                raise self.refuse(f"{name} is longer than {self.limits.max_scalar_bytes} bytes")
            value: int | float = json.loads(token)
            return value
        return self.literal()

    def skip(self, depth: int) -> None:
        """Validate the value at pos and drop it.

        Containers are walked without recursion, with a stack of their opening brackets,
        and runs of brackets and of scalar elements are consumed a regex match at a time:
        a 32 MiB ignored value of tiny elements costs seconds, not minutes.
        """
        stack = bytearray()
        while True:
            byte = self.s.peek()
            if byte == ord("["):
                at_value = self.open_arrays(depth, stack)
            elif byte == ord("{"):
                at_value = self.open_object(depth, stack)
            else:
                self.skip_scalar(byte)
                at_value = False
            if not at_value and not self.after_value(depth, stack):
                return

    def skip_scalar(self, byte: int) -> None:
        if byte == _QUOTE:
            self.string(0, None)
        elif byte in _NUMBER_START:
            self.number()
        else:
            self.literal()

    def push(self, depth: int, stack: bytearray, opener: bytes) -> None:
        if depth + len(stack) >= self.limits.max_nesting:
            raise self.refuse(f"manifest is nested deeper than {self.limits.max_nesting} levels")
        stack += opener
        self.s.pos += 1

    def runs(self, depth: int, stack: bytearray) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
        return _RUNS if depth + len(stack) < self.limits.max_nesting else _FLAT_RUNS

    def open_arrays(self, depth: int, stack: bytearray) -> bool:
        """Open the run of arrays at pos: True at a value, False at the ']' of an empty one."""
        s = self.s
        end = _ARRAY_OPENS.match(s.buf, s.pos).end()  # type: ignore[union-attr]
        if depth + len(stack) + s.buf.count(b"[", s.pos, end) > self.limits.max_nesting:
            while True:  # one at a time, to report the bracket beyond the limit
                self.push(depth, stack, b"[")
                s.peek()
        count = s.buf.count(b"[", s.pos, end)
        stack += b"[" * count
        s.pos = end
        if s.peek() == ord("]"):
            self.count_containers(count - 1)
            return False
        self.count_containers(count)
        s.run(self.runs(depth, stack)[0])
        return True

    def open_object(self, depth: int, stack: bytearray) -> bool:
        """Open the object at pos: True at its first value, False at the '}' of an empty one."""
        self.push(depth, stack, b"{")
        if self.s.peek() == ord("}"):
            return False
        self.count_containers(1)
        self.s.run(self.runs(depth, stack)[1])
        self.skip_key()
        return True

    def skip_key(self) -> None:
        if self.s.peek() != _QUOTE:
            raise self.fail("expected a key string")
        self.string(0, None)
        self.expect(b":", "':'")

    def after_value(self, depth: int, stack: bytearray) -> bool:
        """Past the closers and the comma after a value: True when another value follows."""
        s = self.s
        while stack:
            byte = s.peek()
            if byte in (ord("]"), ord("}")):
                self.close(stack)
            elif byte == ord(","):
                s.pos += 1
                array_run, object_run = self.runs(depth, stack)
                if stack[-1] == ord("["):
                    s.run(array_run)
                else:
                    s.run(object_run)
                    self.skip_key()
                return True
            else:
                raise self.fail("expected ',' or '" + ("]" if stack[-1] == ord("[") else "}") + "'")
        return False

    def close(self, stack: bytearray) -> None:
        """Consume the run of closing brackets at pos that close containers in stack."""
        s = self.s
        match = _CLOSERS.match(s.buf, s.pos)
        assert match is not None
        closers = match.group().translate(None, _NOT_WS).translate(_OPENER_OF)
        count = min(len(closers), len(stack))
        if closers[:count] != stack[: -count - 1 : -1]:
            count = next(i for i in range(count) if closers[i] != stack[-1 - i])
            for _ in range(count + 1):
                s.pos = _CLOSER.match(s.buf, s.pos).end()  # type: ignore[union-attr]
            s.pos -= 1
            raise self.fail("a closing bracket does not match its opening one")
        if count == len(closers):
            s.pos = match.end()
        else:
            for _ in range(count):
                s.pos = _CLOSER.match(s.buf, s.pos).end()  # type: ignore[union-attr]
        del stack[-count:]

    def literal(self) -> bool | None:
        byte = self.s.peek()
        if byte not in _LITERALS:
            raise self.fail("expected a value")
        text, value = _LITERALS[byte]
        self.s.ensure(len(text))
        if not self.s.buf.startswith(text, self.s.pos):
            raise self.fail("expected a value")
        self.s.pos += len(text)
        return value

    def number(self) -> bytes:
        limit = self.limits.max_number_bytes
        while True:
            end = _NUM_CHARS.match(self.s.buf, self.s.pos).end()  # type: ignore[union-attr]
            if end - self.s.pos > limit:
                raise self.refuse(f"a number is longer than {limit} bytes")
            if end < len(self.s.buf) or not self.s.more():
                break
        token = self.s.buf[self.s.pos : end]
        if _NUMBER.fullmatch(token) is None:
            raise self.fail("invalid number")
        self.s.pos = end
        return token

    def key(self) -> str | None:
        """An object key: the string when it is short enough to be one the reader uses."""
        plain = _PLAIN_KEY.match(self.s.buf, self.s.pos)
        if plain is not None:
            self.s.pos = plain.end()
            return plain.group(1).decode("utf-8")
        raw = self.string(_KEY_CAP, None)
        return None if raw is None else _decode_string(raw)

    def path(self) -> str:
        limits, offset = self.limits, self.s.offset
        # Each byte of the decoded path takes at most 6 bytes of JSON text (\u0041).
        raw = self.held_string(
            6 * limits.max_path_bytes,
            lambda: self.refuse(
                f"a path in files is longer than {limits.max_path_bytes} bytes", "unsafe_path"
            ),
        )
        path = _decode_string(raw)
        try:
            size = len(path.encode("utf-8"))
        except UnicodeEncodeError:
            raise ManifestRefused(
                "unsafe_path",
                f"path {_quote(path)} in files is not valid Unicode (at byte {offset})",
                offset,
            ) from None
        if size > limits.max_path_bytes:
            raise ManifestRefused(
                "unsafe_path",
                f"path {_quote(path)} in files is longer than"
                f" {limits.max_path_bytes} bytes (at byte {offset})",
                offset,
            )
        if path.count("/") >= limits.max_path_components:
            raise ManifestRefused(
                "unsafe_path",
                f"path {_quote(path)} in files has more than"
                f" {limits.max_path_components} components (at byte {offset})",
                offset,
            )
        return path

    def held_string(self, cap: int, too_long: Callable[[], ManifestError]) -> bytes:
        raw = self.string(cap, too_long)
        assert raw is not None  # string() raises too_long() rather than return None
        return raw

    def string(self, cap: int, too_long: Callable[[], ManifestError] | None) -> bytes | None:
        """The raw body of the string at pos, if at most cap bytes; else None or too_long().

        The body is validated to the closing quote in every case, and held only while it
        is within cap.
        """
        s, parts, size = self.s, [], 0
        s.pos += 1
        while True:
            end = _STR_RUN.match(s.buf, s.pos).end()  # type: ignore[union-attr]
            size += end - s.pos
            if size > cap and too_long is not None:
                raise too_long()
            if size <= cap:
                parts.append(s.buf[s.pos : end])
            s.pos = end
            if self.string_ends():
                return b"".join(parts) if size <= cap else None

    def string_ends(self) -> bool:
        """At the end of a run of string content: True after the closing quote."""
        s = self.s
        if s.pos < len(s.buf):
            byte = s.buf[s.pos]
            if byte == _QUOTE:
                s.pos += 1
                return True
            if byte != _BACKSLASH:
                raise self.fail("control character in a string")
            if len(s.buf) - s.pos >= 6 or s.eof:
                raise self.fail("invalid escape in a string")
        at_escape = s.pos < len(s.buf)
        if not s.more():
            raise self.fail("invalid escape in a string" if at_escape else "unterminated string")
        return False


def _decode_string(raw: bytes) -> str:
    """The text of a validated string body; json.loads so escapes mean what json says."""
    text: str = json.loads('"' + raw.decode("utf-8") + '"')
    return text


def _entry_cost(entry: FileEntry | RawValue) -> int:
    if isinstance(entry, FileEntry):
        return sys.getsizeof(entry) + sys.getsizeof(entry.sha256) + sys.getsizeof(entry.size)
    return sys.getsizeof(entry)
