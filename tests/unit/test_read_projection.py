"""Between a read and planning, a new or changed record keeps only the canonical fields the
decisions before planning compare (``read.kept_fields``) in memory; the whole canonical record
waits on disk after its native text (``spill.Projected``), and planning takes both back. The
suite runs with ``SYNCENGINE_TEST_STRICT_PROJECTION=1`` (``tests/conftest.py``), so that a look
at any other field before planning fails the test that makes it."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from syncengine import api, jsoncodec, read, spill
from syncengine.config import load_config
from syncengine.connectors.memory import MemoryConnector
from syncengine.engine import Engine
from syncengine.match import Observed
from syncengine.spill import Projected, Spill, json_exact
from tests.csvfiles import read_csv, write_csv
from tests.helpers import ds, memory_config, ops, run

C = "customers"
WHOLE: dict[str, Any] = {
    "first_name": "Zoë",
    "last_name": "Lee",
    "email": "zoe@example.com",
    "company": "Lee & Daughters",
    "tags": ["vip", "weekly"],
    "notifications_enabled": True,
}
KEEPS = frozenset({"first_name", "last_name", "email", "mobile_number"})


def _projected(record: dict[str, Any]) -> tuple[Projected, Spill]:
    kept = Spill()
    slot = kept.put(b'{"id":"c1"}', jsoncodec.dumpb(record))
    return Projected(record, KEEPS, kept, slot), kept


def test_a_projected_record_holds_its_kept_fields_and_refuses_the_rest_in_the_suite() -> None:
    assert spill.STRICT  # the suite's own setting, for every test and every CLI it starts
    rec, kept = _projected(WHOLE)
    # in memory: the kept fields only (read below the overrides, as the dict is stored)
    assert dict(dict.items(rec)) == {k: WHOLE[k] for k in ("first_name", "last_name", "email")}
    assert rec.get("email") == "zoe@example.com" and rec["last_name"] == "Lee"
    assert rec.get("mobile_number") is None and "mobile_number" not in rec
    assert bool(rec)
    for look in (
        lambda: rec.get("company"),
        lambda: rec["tags"],
        lambda: "company" in rec,
        lambda: list(rec.items()),
        lambda: len(rec),
        lambda: rec == WHOLE,
        lambda: {**rec},
        lambda: copy.deepcopy(rec),
    ):
        with pytest.raises(RuntimeError, match="before its hub record was planned"):
            look()
    # asked for explicitly (a record parked for review), the whole record, as a plain dict
    assert spill.whole(rec) == WHOLE and type(spill.whole(rec)) is dict
    assert kept.get(0) == {"id": "c1"}  # the native text comes first, alone
    assert kept.both(0) == ({"id": "c1"}, WHOLE)


def test_outside_the_suite_a_look_at_another_field_reads_the_whole_record_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A decision no test reaches never sees part of a record: it reads the rest first."""
    monkeypatch.setattr(spill, "STRICT", False)
    monkeypatch.setattr(spill, "_BUFFER", 4)  # from the file, not from what is gathered
    rec, _kept = _projected(WHOLE)
    assert rec.get("company") == "Lee & Daughters"
    assert dict(dict.items(rec)) == WHOLE  # whole from now on
    assert rec == WHOLE and dict(rec) == WHOLE and list(rec) == list(WHOLE)
    other, _ = _projected(WHOLE)
    assert {**other} == WHOLE
    third, _ = _projected(WHOLE)
    assert copy.deepcopy(third) == WHOLE


def test_after_its_read_is_planned_a_record_refuses_rather_than_answer_in_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A look past the kept fields once the spill is closed (the entity planned) is an error
    of the engine, never the answer of a part of the record taken for the whole."""
    monkeypatch.setattr(spill, "STRICT", False)
    rec, kept = _projected(WHOLE)
    kept.close()
    assert rec.get("email") == "zoe@example.com"  # what it keeps, it still tells
    with pytest.raises(RuntimeError, match="without slot"):
        rec.get("company")
    with pytest.raises(RuntimeError, match="without slot"):
        dict(rec)


@pytest.mark.parametrize(
    ("record", "exact"),
    [
        (WHOLE, True),
        ({"n": 2**70, "x": 1.5, "z": None, "b": False}, True),
        ({"pair": ("a", "b")}, False),  # a tuple comes back from JSON as a list
        ({"amount": Decimal("1.50")}, False),
        ({"nested": {"a": 1}}, False),
        ({"list": [1, 2]}, False),
    ],
)
def test_only_a_record_json_gives_back_as_it_is_waits_on_disk(
    record: dict[str, Any], exact: bool
) -> None:
    assert json_exact(record) is exact
    if exact:
        assert jsoncodec.loads(jsoncodec.dumpb(record)) == record


def test_a_record_is_kept_in_part_only_where_that_leaves_out_half_of_it() -> None:
    payment = {"invoice": "k1", "amount": 100, "paid_at": "2026-01-02T00:00:00Z",
               "method": "cash", "status": "paid", "refunded_amount": 0}  # fmt: skip
    keeps = frozenset({"invoice", "amount", "paid_at", "method"})
    assert not read._worth(payment, keeps)
    assert read._worth(WHOLE, KEEPS)  # three of six
    assert not read._worth({}, KEEPS)


def test_a_record_holding_a_lone_surrogate_stays_whole_in_memory() -> None:
    record = {"first_name": "bad \ud800 text"}
    assert json_exact(record)
    assert read._canonical_text(record) == b""


def _seen_at_matching(monkeypatch: pytest.MonkeyPatch) -> list[Observed]:
    """The records new on a member as matching gets them."""
    seen: list[Observed] = []
    match_new = Engine._match_new

    def noted(self: Engine, pipeline: Any, entity: str, members: Any, reads: Any,
              *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        seen.extend(obs for r in reads.values() for obs in r.new)
        return match_new(self, pipeline, entity, members, reads, *args, **kwargs)

    monkeypatch.setattr(Engine, "_match_new", noted)
    return seen


def test_a_first_sync_matches_on_the_kept_fields_and_writes_every_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    monkeypatch.setattr(spill, "_BUFFER", 64)
    seen = _seen_at_matching(monkeypatch)
    books = tmp_path / "books"
    books.mkdir()
    config = memory_config(
        tmp_path,
        {"hcp": {"stamp_updated_at": False}, "books": {"type": "spreadsheet", "path": str(books)}},
    )
    ds("hcp").put(C, "c1", dict(WHOLE))
    ds("hcp").put(C, "c2", {"first_name": "Al", "email": "al@example.com", "company": "Al's"})
    assert ops(run(config)) == [("create", "books"), ("create", "books")]
    kept = read.kept_fields(config.pipeline("p")[0], C)
    assert {"email", "mobile_number", "first_name", "last_name"} <= kept
    assert "company" not in kept and "tags" not in kept
    assert len(seen) == 2 and all(type(obs.canonical) is dict for obs in seen)  # planned
    rows = {r["Email"]: r for r in read_csv(books / "customers.csv")}
    assert rows["zoe@example.com"]["Company"] == "Lee & Daughters"
    assert rows["zoe@example.com"]["Tags"] == "vip, weekly"
    assert rows["al@example.com"]["Company"] == "Al's"
    assert run(config).plan.actions == []


def test_while_matched_a_record_holds_only_the_kept_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    held: list[dict[str, Any]] = []
    match_new = Engine._match_new

    def noted(self: Engine, pipeline: Any, entity: str, members: Any, reads: Any,
              *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        for r in reads.values():
            for obs in r.new:
                assert type(obs.canonical) is Projected
                held.append(dict(dict.items(obs.canonical)))
        return match_new(self, pipeline, entity, members, reads, *args, **kwargs)

    monkeypatch.setattr(Engine, "_match_new", noted)
    config = memory_config(tmp_path, {"hcp": {"stamp_updated_at": False}, "crm": {}})
    ds("hcp").put(C, "c1", dict(WHOLE))
    assert ops(run(config)) == [("create", "crm")]
    assert held == [{"first_name": "Zoë", "last_name": "Lee", "email": "zoe@example.com"}]
    (created,) = ds("crm").table(C).values()
    assert {k: created.get(k) for k in WHOLE} == WHOLE


def test_a_record_parked_for_review_is_shown_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two records new on one member with one e-mail: the second is not synced, and its review
    item shows every field of the record, read back before the read's spill is closed."""
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    config = memory_config(tmp_path, {"hcp": {"stamp_updated_at": False}, "crm": {}})
    ds("hcp").put(C, "c1", dict(WHOLE))
    ds("hcp").put(C, "c2", dict(WHOLE, first_name="Zoe", company="Another"))
    assert ops(run(config)) == [("create", "crm")]
    items = {i.native_id: i for i in api.list_review(config)}
    assert "possible duplicate" in items["c2"].reason
    # its location too, kept on disk with the record until then (``Observed.hold_location``)
    assert items["c2"].location == "hcp customers c2"
    assert items["c2"].fields["company"] == "Another"
    assert items["c2"].fields["tags"] == ["vip", "weekly"]


def test_the_kept_fields_follow_the_pipelines_own_match_keys(tmp_path: Path) -> None:
    config = memory_config(tmp_path, {"hcp": {}, "crm": {}})
    text = config.path.read_text(encoding="utf-8")
    config.path.write_text(
        text + '\n[pipelines.match]\ncustomers = ["company"]\n', encoding="utf-8"
    )
    pipeline = load_config(config.path).pipeline("p")[0]
    assert "company" in read.kept_fields(pipeline, C)
    assert "invoice" in read.kept_fields(pipeline, "payments")  # a reference


def _books(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    books = tmp_path / "books"
    books.mkdir()
    header = ["Sync ID", "First Name", "Last Name", "Email", "Company"]
    write_csv(books / "customers.csv", rows, header)
    return books


def _hcp_held_at_matching(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What HCP's new records hold in memory as they are matched (HCP a member that reads
    ahead, so read last in a first sync); the reads are in the pipeline's order by then."""
    monkeypatch.setattr(MemoryConnector, "reads_json", True)
    monkeypatch.setattr(MemoryConnector, "reads_ahead", True)
    held: list[dict[str, Any]] = []
    match_new = Engine._match_new

    def noted(self: Engine, pipeline: Any, entity: str, members: Any, reads: Any,
              *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        assert list(reads) == ["hcp", "books"]  # the pipeline's order, whatever the read's
        held.extend(dict(dict.items(obs.canonical)) for obs in reads["hcp"].new)
        return match_new(self, pipeline, entity, members, reads, *args, **kwargs)

    monkeypatch.setattr(Engine, "_match_new", noted)
    return held


def test_a_first_sync_into_an_empty_sheet_keeps_only_the_match_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HCP's records (a member that reads ahead) are read last in a first sync; the sheet,
    read first, holds no customer, so nothing can be paired with them by name: while matched
    they hold their e-mail alone, and every field is written all the same."""
    held = _hcp_held_at_matching(monkeypatch)
    books = _books(tmp_path, [])
    config = memory_config(
        tmp_path,
        {"hcp": {"stamp_updated_at": False}, "books": {"type": "spreadsheet", "path": str(books)}},
    )
    ds("hcp").put(C, "c1", dict(WHOLE))
    ds("hcp").put(C, "c2", {"first_name": "Al", "email": "al@example.com", "company": "Al's"})
    result = run(config)
    assert ops(result) == [("create", "books"), ("create", "books")]
    assert held == [{"email": "zoe@example.com"}, {"email": "al@example.com"}]
    assert list(result.plan.entities[0].seen) == ["hcp", "books"]
    rows = {r["Email"]: r for r in read_csv(books / "customers.csv")}
    assert rows["zoe@example.com"]["First Name"] == "Zoë"
    assert rows["zoe@example.com"]["Company"] == "Lee & Daughters"
    assert rows["al@example.com"]["First Name"] == "Al"
    # a second sync reads in the pipeline's order, and finds nothing to do
    assert run(config).plan.actions == []


def test_a_first_sync_into_a_sheet_holding_customers_keeps_the_relink_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sheet holds a customer typed by hand, without an e-mail: HCP's customer of that
    full name is the same one, paired by name (a relink key), so HCP's records keep their
    names while matched, and the row is linked, not written twice."""
    held = _hcp_held_at_matching(monkeypatch)
    row = {"Sync ID": "", "First Name": "Zoë", "Last Name": "Lee", "Email": "", "Company": ""}
    books = _books(tmp_path, [row])
    config = memory_config(
        tmp_path,
        {"hcp": {"stamp_updated_at": False}, "books": {"type": "spreadsheet", "path": str(books)}},
    )
    ds("hcp").put(C, "c1", dict(WHOLE))
    result = run(config)
    assert held == [{"first_name": "Zoë", "last_name": "Lee", "email": "zoe@example.com"}]
    assert ("create", "books") not in ops(result)
    (only,) = read_csv(books / "customers.csv")
    assert only["Email"] == "zoe@example.com" and only["Sync ID"]
