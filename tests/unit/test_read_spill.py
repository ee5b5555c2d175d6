"""A read keeps the native records it observed on disk until their hub record is planned
(``syncengine.spill``): between the read and planning, only the canonical record, the id,
the location and the hash are in memory; planning takes the native record back exactly as
read, and lets go of it again. A temporary directory that cannot take the read stops the sync
with the fix, before anything is written."""

from __future__ import annotations

import math
import os
import sqlite3
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from syncengine import api, jsoncodec, read, spill
from syncengine.cli import app
from syncengine.connector import RELEASED, NativeRecord
from syncengine.connectors.memory import MemoryConnector
from syncengine.connectors.spreadsheet import rows
from syncengine.engine import Engine
from syncengine.errors import UnavailableError
from syncengine.exit_codes import ExitCode
from syncengine.match import Observed
from syncengine.plan import Update
from syncengine.spill import Spill
from tests.csvfiles import read_csv, write_csv
from tests.helpers import ds, memory_config, ops, run

C = "customers"

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@given(
    st.lists(st.dictionaries(st.text(max_size=8), _VALUES, max_size=5), max_size=12),
    st.integers(1, 200),
    st.randoms(use_true_random=False),
)
def test_a_spill_gives_back_each_record_it_was_given_in_any_order(
    records: list[dict[str, Any]], buffer: int, rnd: Any
) -> None:
    """Whether a record's text is in the file already or still gathered (a buffer of 1 to
    200 bytes here, a megabyte in a sync), it comes back as it was."""
    with mock.patch.object(spill, "_BUFFER", buffer):
        kept = Spill()
        slots: list[int] = []
        for i, record in enumerate(records):
            slots.append(kept.put(jsoncodec.dumps_sorted(record)))
            # taken back while more are still written: what is written since is found too
            j = rnd.randrange(i + 1)
            assert kept.get(slots[j]) == records[j]
        order = list(range(len(records)))
        rnd.shuffle(order)
        for j in order:
            assert kept.get(slots[j]) == records[j]
        assert len(kept) == len(records)
        kept.close()
        assert len(kept) == 0


@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=8), _VALUES, max_size=4),
            st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
            # line breaks, quotes and (rarely: the example below has one) lone surrogates
            st.text(st.characters(exclude_categories=()), max_size=12),
        ),
        max_size=10,
    ),
    st.integers(1, 200),
)
@example([({"a": 1}, {"b": "c"}, "sheet \udc80 line 2"), ({}, None, 'a "b"\nline 3')], 1)
def test_a_spill_gives_back_each_records_canonical_record_and_location(
    records: list[tuple[dict[str, Any], dict[str, Any] | None, str]], buffer: int
) -> None:
    """A slot keeps a native record, maybe its canonical record and maybe its location, and
    gives back each as it was given; a location it cannot keep exactly (a lone surrogate) is
    refused (``location_text`` is empty), for the caller to keep in memory."""
    with mock.patch.object(spill, "_BUFFER", buffer):
        kept = Spill()
        slots: list[tuple[int, str]] = []
        for native, canonical, where in records:
            text = spill.location_text(where)
            shown = where if text else ""
            assert bool(text) == (where != "" and not _surrogate(where))
            slots.append((kept.put(jsoncodec.dumpb(native), _canonical(canonical), text), shown))
        for (slot, shown), (native, canonical, _where) in zip(slots, records, strict=True):
            assert kept.whole(slot) == (native, canonical or None, shown)
            assert kept.location(slot) == shown
            assert kept.get(slot) == native
            if canonical:
                assert kept.both(slot) == (native, canonical)
        kept.close()
        # asked after the read was planned: an error in the suite, "" in a sync (a message then
        # names the record without it)
        for slot, _shown in slots:
            with pytest.raises(RuntimeError, match="after its read closed"):
                kept.location(slot)
            with mock.patch.object(spill, "STRICT", False):
                assert kept.location(slot) == ""


def _surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _canonical(record: dict[str, Any] | None) -> bytes:
    if not record or any(_surrogate(k + v) for k, v in record.items()):
        return b""
    return jsoncodec.dumpb(record)


def test_a_spill_file_has_no_name_and_is_let_go_of_on_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is left in the temporary directory after a crash: the file is unnamed from
    the start (Linux shows it as deleted while it is open)."""
    monkeypatch.setattr(spill, "_BUFFER", 4)
    kept = Spill()
    assert kept._file is None  # a small read never makes its file
    kept.put(b'{"a":1}')
    assert kept._file is not None
    fd = kept._file.fileno()
    assert os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")
    kept.close()
    assert kept._file is None
    with pytest.raises(RuntimeError, match="without slot 0"):
        kept.get(0)


def _spills(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Spill], list[tuple[int, bool]]]:
    """The spills the reads made, and for each close, how many records the spill held and
    whether it had made its file (records are written to the file every 64 bytes here). A
    CSV working copy's saved rows (``SheetRows``) are not a read's: left out."""
    monkeypatch.setattr(spill, "_BUFFER", 64)
    made: list[Spill] = []
    closed: list[tuple[int, bool]] = []
    init, close = Spill.__init__, Spill.close

    def noted(self: Spill) -> None:
        init(self)
        if sys._getframe(1).f_globals["__name__"] != rows.__name__:
            made.append(self)

    def closing(self: Spill) -> None:
        if any(self is s for s in made):
            closed.append((len(self), self._file is not None))
        close(self)

    monkeypatch.setattr(Spill, "__init__", noted)
    monkeypatch.setattr(Spill, "close", closing)
    return made, closed


NATIVE: dict[str, Any] = {
    "first_name": "Zoë",
    "email": "zoe@example.com",
    # fields no mapping reads: an update sends them back as they were read
    "address": {"street": "1 Main St", "unit": None, "geo": [40.7, -74.0]},
    "balance_cents": 123456789012345678901234567890,  # beyond 64 bits
    "score": float("nan"),
}


def test_a_first_sync_holds_no_native_record_from_its_read_until_it_is_planned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    made, closed = _spills(monkeypatch)
    looked: list[tuple[str, int, bool]] = []
    match_new = Engine._match_new

    def after_the_read(self: Engine, pipeline: Any, entity: str, members: Any, reads: Any,
                       *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        for name, r in reads.items():
            for obs in r.new:
                looked.append((name, obs.spilled, obs.record.data is RELEASED))
        return match_new(self, pipeline, entity, members, reads, *args, **kwargs)

    monkeypatch.setattr(Engine, "_match_new", after_the_read)
    books = tmp_path / "books"
    books.mkdir()
    write_csv(
        books / "customers.csv",
        [{"Sync ID": "", "First Name": "Bo", "Last Name": "Ray", "Email": "bo@example.com"}],
        ["Sync ID", "First Name", "Last Name", "Email"],
    )
    config = memory_config(
        tmp_path,
        {
            "hcp": {"put_updates": True, "stamp_updated_at": False},
            "books": {"type": "spreadsheet", "path": str(books)},
        },
    )
    ds("hcp").put(C, "c1", dict(NATIVE))
    held = {k: v for k, v in ds("hcp").table(C)["c1"].items() if k not in ("score", "updated_at")}
    ds("hcp").put(C, "c2", {"first_name": "Al", "email": "al@example.com"})

    # (the bookkeeper's row gets its Sync ID: an update of the books)
    assert ops(run(config)) == [
        ("create", "books"),
        ("create", "books"),
        ("create", "hcp"),
        ("update", "books"),
    ]
    # every record new on either member was on disk, not in memory, while it was matched
    assert sorted(looked) == [("books", 0, True), ("hcp", 0, True), ("hcp", 1, True)]
    # closed once the entity was planned, HCP's with its file (records taken back from it)
    assert len(closed) == len(made) and all(s._closed for s in made)
    assert (2, True) in closed
    rows = {r["Email"]: r for r in read_csv(books / "customers.csv")}
    assert rows["zoe@example.com"]["First Name"] == "Zoë"
    assert rows["al@example.com"]["First Name"] == "Al"
    (bo,) = [r for r in ds("hcp").table(C).values() if r.get("email") == "bo@example.com"]
    assert bo["first_name"] == "Bo" and bo["last_name"] == "Ray"
    assert run(config).plan.actions == []

    # a record changed in HCP is spilled as well, and written back whole where it changed
    ds("hcp").edit(C, "c1", email="zoe@new.example.com")
    looked.clear()
    assert ops(run(config)) == [("update", "books")]
    assert rows_of(books)["zoe@new.example.com"]["First Name"] == "Zoë"
    # the books' side changes; HCP's record is sent back whole: the spilled text was exact
    edited = [
        {**r, "First Name": "Zoe"} if r["Email"] == "zoe@new.example.com" else r
        for r in read_csv(books / "customers.csv")
    ]
    write_csv(books / "customers.csv", edited, list(edited[0]))
    result = run(config)
    assert ops(result) == [("update", "hcp")]
    (update,) = result.plan.actions
    assert isinstance(update, Update) and update.changes == {"first_name": ("Zoë", "Zoe")}
    written = dict(ds("hcp").table(C)["c1"])
    assert math.isnan(written.pop("score"))
    written.pop("updated_at")  # HCP's own, at each edit
    assert written == held | {"first_name": "Zoe", "email": "zoe@new.example.com"}
    assert type(written["balance_cents"]) is int
    assert run(config).plan.actions == []


def rows_of(books: Path) -> dict[str, dict[str, str]]:
    return {r["Email"]: r for r in read_csv(books / "customers.csv")}


def test_a_record_let_go_of_is_taken_back_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """``unspill`` takes a spilled record back each time it finds it released (planning lets
    go of it once planned), keeps its id, location and hash, and leaves a record that was
    never spilled as it is. Once the read is planned and its spill closed, a slot kept
    anywhere finds nothing, rather than another record's text."""
    monkeypatch.setattr(spill, "_BUFFER", 4)  # taken back from the file
    r = read.MemberRead()
    text = jsoncodec.dumps_sorted({"a": 1, "b": ["x"]})
    obs = Observed("hcp", NativeRecord("c1", RELEASED, location="c1"), {"a": 1}, "h1", 1)
    obs.spilled = r.spill.put(text)
    assert r.unspill(obs).record.data == {"a": 1, "b": ["x"]}
    assert obs.record.native_hash() == "h1" and obs.record.location == "c1"
    obs.release_native()
    assert obs.record.data is RELEASED
    assert r.unspill(obs).record.data == {"a": 1, "b": ["x"]}
    unspilled = Observed("hcp", NativeRecord("c2", {"a": 2}), {"a": 2}, "h2", 2)
    assert r.unspill(unspilled) is unspilled and unspilled.record.data == {"a": 2}
    r.spill.close()
    obs.release_native()
    with pytest.raises(RuntimeError, match="without slot"):
        r.unspill(obs)
    with pytest.raises(RuntimeError, match="after its read was planned"):
        r.spill.put(text)


def test_a_record_waiting_on_disk_keeps_its_location_there_and_messages_still_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the read and planning, a spilled record's location is on disk too (about 100
    bytes a record less in memory): the released record holds none, ``Observed.location``
    reads it back. The messages made before planning (a copy set aside, its review item)
    still name both records, and planning gives the record its location back."""
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    made, _closed = _spills(monkeypatch)
    looked: list[tuple[str, str, str]] = []
    match_new = Engine._match_new

    def after_the_read(self: Engine, pipeline: Any, entity: str, members: Any, reads: Any,
                       *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        for r in reads.values():
            for obs in r.new:
                looked.append((obs.record.id, obs.record.location, obs.location))
        return match_new(self, pipeline, entity, members, reads, *args, **kwargs)

    planned: list[str] = []
    unspill = read.MemberRead.unspill

    def taken_back(self: read.MemberRead, obs: Observed) -> Observed:
        out = unspill(self, obs)
        planned.append(out.record.location)
        return out

    monkeypatch.setattr(Engine, "_match_new", after_the_read)
    monkeypatch.setattr(read.MemberRead, "unspill", taken_back)
    config = memory_config(tmp_path, {"hcp": {"stamp_updated_at": False}, "crm": {}})
    ds("hcp").put(C, "c1", {"first_name": "Al", "email": "al@example.com"})
    ds("hcp").table(C)["c2"] = dict(ds("hcp").table(C)["c1"])  # the same record twice
    ds("hcp").put(C, "c3", {"first_name": "Bo", "email": "bo@example.com"})

    result = run(config)
    assert ops(result) == [("create", "crm"), ("create", "crm")]
    # (the copy is set aside before matching)
    assert sorted(looked) == [("c1", "", "hcp customers c1"), ("c3", "", "hcp customers c3")]
    assert made and all(s._closed for s in made)
    (copy,) = [i for i in result.plan.entities[0].issues if "possible duplicate" in i.message]
    assert copy.location == "hcp customers c2"
    assert "holds exactly what hcp customers c1 holds" in copy.message
    items = {i.native_id: i for i in api.list_review(config)}
    assert items["c2"].location == "hcp customers c2"
    assert sorted(planned) == ["hcp customers c1", "hcp customers c3"]


def test_a_location_that_json_cannot_hold_stays_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A location holding a lone surrogate (a file name the system could not decode) cannot be
    written to the spill exactly: the record keeps it in memory, and it is not lost."""
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    odd = "hcp customers c1 \udc80"
    read_records = MemoryConnector.read

    def oddly_located(self: MemoryConnector, entity: str) -> Any:
        for rec in read_records(self, entity):
            yield replace(rec, location=odd) if rec.id == "c1" else rec

    looked: list[tuple[str, str, bool]] = []
    match_new = Engine._match_new

    def after_the_read(self: Engine, pipeline: Any, entity: str, members: Any, reads: Any,
                       *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        for r in reads.values():
            for obs in r.new:
                looked.append((obs.record.location, obs.location, obs.spill is None))
        return match_new(self, pipeline, entity, members, reads, *args, **kwargs)

    monkeypatch.setattr(MemoryConnector, "read", oddly_located)
    monkeypatch.setattr(Engine, "_match_new", after_the_read)
    config = memory_config(tmp_path, {"hcp": {"stamp_updated_at": False}, "crm": {}})
    ds("hcp").put(C, "c1", {"first_name": "Al", "email": "al@example.com"})
    ds("hcp").put(C, "c2", {"first_name": "Bo", "email": "bo@example.com"})
    assert ops(run(config)) == [("create", "crm"), ("create", "crm")]
    assert sorted(looked) == [
        ("", "hcp customers c2", False),
        (odd, odd, True),
    ]


def test_a_record_changed_on_both_sides_is_merged_from_its_spilled_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sync where HCP changed a customer's e-mail and the books its last name: HCP's
    record, read changed and spilled, is taken back to send it whole with the books' edit."""
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    books = tmp_path / "books"
    books.mkdir()
    config = memory_config(
        tmp_path,
        {
            "hcp": {"put_updates": True, "stamp_updated_at": False},
            "books": {"type": "spreadsheet", "path": str(books)},
        },
    )
    ds("hcp").put(C, "c1", dict(NATIVE, last_name="Lee"))
    held = {k: v for k, v in ds("hcp").table(C)["c1"].items() if k not in ("score", "updated_at")}
    assert ops(run(config)) == [("create", "books")]
    ds("hcp").edit(C, "c1", email="zoe@new.example.com")
    (row,) = read_csv(books / "customers.csv")
    write_csv(books / "customers.csv", [{**row, "Last Name": "Lim"}], list(row))

    result = run(config)
    assert ops(result) == [("update", "books"), ("update", "hcp")]
    assert rows_of(books)["zoe@new.example.com"]["Last Name"] == "Lim"
    written = dict(ds("hcp").table(C)["c1"])
    assert math.isnan(written.pop("score"))
    written.pop("updated_at")
    assert written == held | {"email": "zoe@new.example.com", "last_name": "Lim"}
    assert run(config).plan.actions == []


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read's temporary file is ``/dev/full``: every write to it fails as on a full disk
    (ENOSPC, from the system), after a few records are gathered."""
    monkeypatch.setattr(spill, "_BUFFER", 64)
    monkeypatch.setattr(
        spill.tempfile,
        "TemporaryFile",
        lambda **_kw: open("/dev/full", "r+b", buffering=0),  # noqa: SIM115
    )


@pytest.mark.parametrize("where", ["full", "gone"])
def test_a_temporary_directory_that_cannot_take_the_read_stops_the_sync_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A full disk, or a temporary directory removed under a long-running process: no
    traceback, exit 4, the directory and the fix named, and nothing written (the books as
    they were, no record in the state). The next sync with room does it all, once."""
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    books = tmp_path / "books"
    books.mkdir()
    config = memory_config(
        tmp_path, {"hcp": {}, "books": {"type": "spreadsheet", "path": str(books)}}
    )
    for i in range(20):
        ds("hcp").put(C, f"c{i}", {"first_name": f"Al {i}", "email": f"al{i}@example.com"})
    if where == "full":
        _full_disk(monkeypatch)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        assert str(tmp_path) in str(spill._unavailable(OSError(28, "No space left on device")))
        expected = "No space left on device"
    else:
        monkeypatch.setattr(spill, "_BUFFER", 64)
        expected = str(tmp_path / "no-such-dir")
        monkeypatch.setattr(tempfile, "tempdir", expected)
    with pytest.raises(UnavailableError) as caught:
        run(config)
    message = str(caught.value)
    assert expected in message and "TMPDIR" in message and "sync again" in message

    done = CliRunner().invoke(app, ["sync", "-c", str(tmp_path / "config.toml")])
    assert done.exit_code == ExitCode.UNAVAILABLE, done.output
    assert "Traceback" not in done.output and expected in done.output.replace("\n", "")
    assert not (books / "customers.csv").exists()
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT count(*) FROM records").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM links").fetchone() == (0,)

    monkeypatch.undo()
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    assert ops(run(config)) == [("create", "books")] * 20
    assert len(read_csv(books / "customers.csv")) == 20
    assert run(config).plan.actions == []
