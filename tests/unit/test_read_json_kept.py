"""A member that reads JSON (``Connector.reads_json``: Housecall Pro, a REST API) keeps each
record it reads unchanged as the JSON text its native hash is made of, not as objects (on
disk, in the read's spill, until its hub record is planned); a record written after all is
decoded back to exactly what was read (``read.Unchanged``)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncengine import jsoncodec, read
from syncengine.connector import NativeRecord, json_and_hash, raw_hash
from syncengine.connectors.memory import MemoryConnector
from syncengine.plan import Update
from syncengine.reconcile import MemberView
from tests.helpers import ds, memory_config, ops, run

C = "customers"

NATIVE: dict[str, Any] = {
    "first_name": "Zoë",
    "email": "zoe@example.com",
    "tags": ["vip", "net 30"],
    # fields no mapping reads: an update must send them back as they were
    "address": {"street": "1 Main St", "unit": None, "geo": [40.7, -74.0]},
    "balance_cents": 123456789012345678901234567890,  # beyond 64 bits
    "score": float("nan"),
    "active": True,
}


def test_the_kept_text_is_the_record_and_its_hash_is_the_one_stored_before() -> None:
    text, digest = json_and_hash(NATIVE)
    assert digest == raw_hash(NATIVE) == NativeRecord("c1", NATIVE).native_hash()
    view = MemberView(member="hcp", status="unchanged", native=bytes(memoryview(text)))
    back = view.native_record()
    assert back is not None and back is view.native_record()  # decoded once
    assert math.isnan(back.pop("score"))
    assert back == {k: v for k, v in NATIVE.items() if k != "score"}
    assert type(back["balance_cents"]) is int
    # one below the smallest 64-bit integer (19 digits), in a text with no longer one
    low = {"ledger": -9223372036854775809}
    text, _digest = json_and_hash(low)
    back = MemberView(member="hcp", status="unchanged", native=text).native_record()
    assert back == low and type(back["ledger"]) is int
    own = MemberView(member="books", status="unchanged", native=NATIVE)
    assert own.native_record() is NATIVE  # a member that does not read JSON: its own record


@pytest.mark.parametrize(
    "number",
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**19, -(2**63), -(2**63) - 1, -(10**19) + 1,
     -(10**19), -(10**30), 10**30],
)  # fmt: skip
def test_integers_at_every_edge_of_64_bits_come_back_as_the_same_integers(number: int) -> None:
    record = {"n": number, "list": [number, -number], "text": f"{number} is text"}
    for text in (jsoncodec.dumps(record), jsoncodec.dumps_sorted(record)):
        back = jsoncodec.loads(text)
        assert back == record and type(back["n"]) is int, text


@pytest.mark.parametrize("json_member", [True, False])
def test_a_record_read_unchanged_and_then_written_keeps_what_it_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_member: bool
) -> None:
    monkeypatch.setattr(MemoryConnector, "reads_json", json_member)
    kept: list[read.Unchanged] = []

    class Noted(read.Unchanged):
        __slots__ = ()

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            kept.append(self)

    monkeypatch.setattr(read, "Unchanged", Noted)
    config = memory_config(
        tmp_path, {"hcp": {"put_updates": True, "stamp_updated_at": False}, "books": {}}
    )
    ds("hcp").put(C, "c1", dict(NATIVE))
    held = {k: v for k, v in ds("hcp").table(C)["c1"].items() if k != "score"}
    ds("hcp").put(C, "c2", {"first_name": "Al", "email": "al@example.com"})
    assert ops(run(config)) == [("create", "books"), ("create", "books")]
    assert run(config).plan.actions == []
    unchanged = [u for u in kept if u.native_id in ("c1", "c2")]
    assert len(unchanged) == 2
    # a JSON member's waits on disk (a slot of the read's spill), another's is its record
    assert all(isinstance(u.native, int) is json_member for u in unchanged)

    # the sheet's side changes; HCP's record was read unchanged and is now written in full
    (books_id,) = [k for k, r in ds("books").table(C).items() if r["first_name"] == "Zoë"]
    ds("books").edit(C, books_id, first_name="Zoe")
    result = run(config)
    assert ops(result) == [("update", "hcp")]
    (update,) = result.plan.actions
    assert isinstance(update, Update) and update.changes == {"first_name": ("Zoë", "Zoe")}
    written = ds("hcp").table(C)["c1"]
    assert math.isnan(written.pop("score"))
    assert written == held | {"first_name": "Zoe"}
    assert run(config).plan.actions == []


# ------------------------------------------------------------------ jsoncodec.loads's check


@given(st.text(alphabet='0123456789-. ,:[]{}"e+x٣', max_size=80))
def test_the_check_for_a_long_integer_finds_every_run_the_pattern_finds(text: str) -> None:
    """Every run of twenty ASCII digits, or a minus and nineteen, sends the text the exact
    way, as the regular expression it replaces did (a digit of another script never is a
    JSON number's: only that one may now take the fast way)."""
    wanted = re.search(r"[0-9]{20}|-[0-9]{19}", text) is not None
    assert jsoncodec._may_hold_long_integer(text) is wanted
    assert jsoncodec._may_hold_long_integer(text.encode()) is wanted


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    # at the edges of what orjson reads as an integer, 19 to 21 digits
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(10**19)])
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(_JSON)
def test_loads_gives_back_what_dumps_wrote_from_text_or_bytes(value: Any) -> None:
    """Integers of any size stay integers, NaN and infinities come back, and UTF-8 bytes
    read as their text does."""
    text = jsoncodec.dumps(value)
    expected = json.loads(json.dumps(value))
    for given_as in (text, text.encode(), bytearray(text.encode())):
        back = jsoncodec.loads(given_as)
        assert _same(back, expected), (given_as, back)


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and every number of the same type."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)
