"""The journal: one writer, one reader that accepts only well-formed intents."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import journal
from service.errors import StateDamaged
from service.journal import Adopt, Claim, Promote, Reject, Rollback

CLAIM = Claim((12, 34), ("model.bin", "manifest.json"), False, 1.5)
INTENTS = [
    Promote("v1", None, CLAIM, 2.0),
    Promote("v2", "v1", CLAIM, 2.0),
    Reject("20261201T000000Z", "checksum_mismatch", "x", CLAIM, 3.0),
    Adopt("20261201T000000Z-2", 4.0),
    Rollback("v1", "v2", "manual", 5.0),
]


@pytest.mark.parametrize("intent", INTENTS, ids=lambda i: i.action)
def test_written_intent_reads_back_equal(tmp_path: Path, intent: journal.Intent) -> None:
    """What write() stores, read() returns unchanged."""
    journal.write(tmp_path / "intent.json", intent)
    assert journal.read(tmp_path / "intent.json") == intent


def test_missing_journal_is_none(tmp_path: Path) -> None:
    """No journal means nothing to finish."""
    assert journal.read(tmp_path / "intent.json") is None


def test_earlier_flat_format_is_read(tmp_path: Path) -> None:
    """A journal of an earlier release (flat fields) is still finished after an upgrade."""
    (tmp_path / "intent.json").write_text(
        json.dumps(
            {
                "action": "promote",
                "name": "v1",
                "previous": None,
                "entries": ["a"],
                "ready": [1, 2],
                "copied": False,
                "time": 0,
                "claimed": 0,
            }
        )
    )
    intent = journal.read(tmp_path / "intent.json")
    assert intent == Promote("v1", None, Claim((1, 2), ("a",), False, 0.0), 0.0)


def valid_record() -> dict[str, object]:
    return journal.to_json(INTENTS[1])


@pytest.mark.parametrize(
    "change",
    [
        {"action": "explode"},
        {"name": "../x"},
        {"name": 5},
        {"entries": ["a/b"]},
        {"entries": "a"},
        {"ready": [1]},
        {"ready": [True, 2]},
        {"copied": "yes"},
        {"time": "now"},
        {"previous": "/abs"},
    ],
    ids=str,
)
def test_malformed_fields_are_damage(tmp_path: Path, change: dict[str, object]) -> None:
    """A journal with a wrong field is StateDamaged, never a KeyError or TypeError."""
    (tmp_path / "intent.json").write_text(json.dumps({**valid_record(), **change}))
    with pytest.raises(StateDamaged):
        journal.read(tmp_path / "intent.json")


@given(st.binary(max_size=300))
def test_any_bytes_are_an_intent_or_damage(data: bytes) -> None:
    """Whatever bytes a damaged volume holds, read() returns an intent or StateDamaged."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "intent.json")
        path.write_bytes(data)
        with contextlib.suppress(StateDamaged):
            journal.read(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(sorted(valid_record())), json_values, max_size=6))
def test_any_json_shape_is_an_intent_or_damage(fields: dict[str, object]) -> None:
    """Any JSON object with the journal's keys is an intent or StateDamaged."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "intent.json")
        path.write_text(json.dumps({**valid_record(), **fields}))
        with contextlib.suppress(StateDamaged):
            journal.read(path)


def test_deep_nesting_is_damage(tmp_path: Path) -> None:
    """A journal nested a hundred thousand levels deep is damage, not a RecursionError."""
    (tmp_path / "intent.json").write_text("[" * 100_000)
    with pytest.raises(StateDamaged):
        journal.read(tmp_path / "intent.json")
