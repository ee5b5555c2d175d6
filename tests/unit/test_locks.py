"""Closed periods (``[pipelines.locks]``): the pure rule of ``syncengine.locks``, and what a
sync over memory members does with it.

The rule: no write to a locked member creates, changes or deletes an invoice (dated by its
``created_at``), a payment (``paid_at``) or a line item (its invoice's date) dated before the
lock, in the member's time zone; a record dated before the lock either as the member holds it
or as the write would leave it is refused. The syncs check that such a write is skipped with
``period closed on books``, kept on record (listed by status) and reported once, that a second
sync plans nothing, that the other member still gets everything, and that the write goes
through once the period is open again.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import Config
from syncengine.connector import Capabilities
from syncengine.errors import ConfigError
from syncengine.locks import Lock, record_day, refuses
from syncengine.mapping import load_mapping
from syncengine.model import entity_spec
from syncengine.plan import KeyPlan, Update
from syncengine.reconcile import Context, MemberView, reconcile
from tests.helpers import ACCOUNTING, ds, hcp_books_config, memory_config, run

LOCK = Lock("books", dt.date(2026, 10, 1))
BEFORE = "2026-09-14T15:00:00Z"
AFTER = "2026-10-02T09:30:00Z"
REASON = "period closed on books"


# ------------------------------------------------------------------------------ the rule


def test_an_invoice_is_dated_by_its_created_at_and_a_payment_by_its_paid_at() -> None:
    assert record_day("invoices", {"created_at": BEFORE, "due_at": AFTER}) == dt.date(2026, 9, 14)
    assert record_day("payments", {"paid_at": AFTER}) == dt.date(2026, 10, 2)
    assert record_day("customers", {"created_at": BEFORE}) is None  # no period
    assert record_day("invoices", {"due_at": BEFORE}) is None  # no date of its own
    assert record_day("invoices", None) is None
    assert record_day("invoices", {"created_at": "not a date"}) is None


def test_the_day_is_the_one_the_locked_member_shows() -> None:
    # 03:00 UTC on the first open day is still the last closed day in California
    late = {"created_at": "2026-10-01T03:00:00Z"}
    assert not Lock("books", dt.date(2026, 10, 1)).closed("invoices", late)
    assert Lock("books", dt.date(2026, 10, 1), "America/Los_Angeles").closed("invoices", late)
    assert record_day("invoices", late, "America/Los_Angeles") == dt.date(2026, 9, 30)
    # the first open day itself is open
    assert not LOCK.closed("invoices", {"created_at": "2026-10-01T00:00:00Z"})
    assert LOCK.closed("invoices", {"created_at": "2026-09-30T23:59:59Z"})


def _as_payment(invoice: dict[str, Any] | None) -> dict[str, Any] | None:
    if invoice is None or "created_at" not in invoice:
        return invoice
    return {"paid_at" if k == "created_at" else k: v for k, v in invoice.items()}


@pytest.mark.parametrize(
    ("held", "wanted", "refused"),
    [
        (None, {"created_at": BEFORE}, True),  # created in the closed period
        (None, {"created_at": AFTER}, False),  # created in the open one
        ({"created_at": BEFORE, "amount": 1}, {"created_at": BEFORE, "amount": 2}, True),
        ({"created_at": AFTER, "amount": 1}, {"created_at": AFTER, "amount": 2}, False),
        ({"created_at": BEFORE}, {"created_at": AFTER}, True),  # moved out of the closed period
        ({"created_at": AFTER}, {"created_at": BEFORE}, True),  # moved into it
        ({"created_at": BEFORE}, None, True),  # deleted from it
        ({"created_at": AFTER}, None, False),
        ({"amount": 1}, {"amount": 2}, False),  # no date: in no period
    ],
)
def test_a_write_is_refused_when_either_side_is_closed(
    held: dict[str, Any] | None, wanted: dict[str, Any] | None, refused: bool
) -> None:
    assert refuses(LOCK, "invoices", held, wanted) is refused
    # a payment dated the same way by its paid_at
    assert refuses(LOCK, "payments", _as_payment(held), _as_payment(wanted)) is refused
    assert not refuses(LOCK, "customers", held, wanted)


def test_a_line_is_dated_by_its_invoice_in_every_version_that_counts() -> None:
    """A line has no date: it is closed when its invoice is closed as the hub has it or as
    the locked member holds it (``through``); an invoice the rule is not given dates
    nothing."""
    closed_invoice = {"i0": [{"created_at": BEFORE}, {"created_at": BEFORE}]}
    assert record_day("line_items", {"invoice": "i0", "created_at": BEFORE}) is None
    assert LOCK.closed("line_items", {"invoice": "i0"}, closed_invoice)
    assert not LOCK.closed("line_items", {"invoice": "i0"}, {"i0": [{"created_at": AFTER}]})
    assert not LOCK.closed("line_items", {"invoice": "i0"})  # nothing to date it by
    assert not LOCK.closed("line_items", {"invoice": "i9"}, closed_invoice)
    assert not LOCK.closed("line_items", {"invoice": None}, closed_invoice)
    # new in this run: only the hub has it (the member holds none yet)
    assert LOCK.closed("line_items", {"invoice": "i0"}, {"i0": [{"created_at": BEFORE}, None]})
    # the invoice moved across the lock, either way: one version is closed
    for moved in ([{"created_at": AFTER}, {"created_at": BEFORE}], [{"created_at": BEFORE}]):
        assert LOCK.closed("line_items", {"invoice": "i0"}, {"i0": moved})


@pytest.mark.parametrize(
    ("held", "wanted", "refused"),
    [
        (None, {"invoice": "closed"}, True),  # created on a closed invoice
        (None, {"invoice": "open"}, False),
        ({"invoice": "closed", "name": "a"}, {"invoice": "closed", "name": "b"}, True),
        ({"invoice": "open", "name": "a"}, {"invoice": "open", "name": "b"}, False),
        ({"invoice": "closed"}, {"invoice": "open"}, True),  # moved off a closed invoice
        ({"invoice": "open"}, {"invoice": "closed"}, True),  # moved onto one
        ({"invoice": "closed"}, None, True),  # deleted from a closed invoice
        ({"invoice": "open"}, None, False),
    ],
)
def test_a_line_write_is_refused_when_either_invoice_is_closed(
    held: dict[str, Any] | None, wanted: dict[str, Any] | None, refused: bool
) -> None:
    through: dict[str, list[dict[str, Any] | None]] = {
        "closed": [{"created_at": BEFORE}],
        "open": [{"created_at": AFTER}, None],
    }
    assert refuses(LOCK, "line_items", held, wanted, through) is refused


# ------------------------------------------------------------------ reconcile's last phase

PAY: dict[str, Any] = {
    "invoice": "inv-1",
    "amount": 5000,
    "method": "cash",
    "status": "succeeded",
    "paid_at": BEFORE,
}


def _plan(books: dict[str, Any], known: dict[str, dict[str, str]] | None = None) -> KeyPlan:
    """One payment HCP changed (its amount), with books' view as given."""
    mapping = load_mapping("memory", "payments")
    ctx = Context(
        entity=entity_spec("payments"),
        members=("hcp", "books"),
        mappings={"hcp": mapping, "books": mapping},
        caps={"hcp": Capabilities(), "books": Capabilities(assigns_ids=True)},
        rules=lambda _field: ["hcp"],
        locks={"books": LOCK},
        skipped=known or {},
    )
    paid_at = books.pop("paid_at", BEFORE)
    held = {**PAY, "paid_at": paid_at}
    views = {
        "hcp": MemberView(
            member="hcp",
            status="changed",
            native_id="p1",
            current={**PAY, "paid_at": paid_at, "amount": 6000},
            last_seen=held,
            native={**held, "amount": 6000},
        ),
        "books": MemberView(
            member="books",
            status="unchanged",
            native_id="k1",
            current=held,
            last_seen=held,
            native=held,
            **books,
        ),
    }
    return reconcile(ctx, "k1", held, views)


def test_a_closed_update_is_skipped_and_the_link_kept_dirty_the_base_moves_on() -> None:
    plan = _plan({})
    assert plan.actions == []
    (skip,) = plan.skips
    assert (skip.member, skip.reason, skip.quiet) == ("books", REASON, False)
    assert plan.links["books"].dirty and plan.links["books"].last_seen == PAY
    assert plan.base_after is not None and plan.base_after["amount"] == 6000
    assert plan.reported_skips == [skip]


def test_a_skip_on_record_is_kept_quietly() -> None:
    plan = _plan({"dirty": True}, known={"k1": {"books": REASON}})
    (skip,) = plan.skips
    assert skip.quiet and plan.reported_skips == []
    assert "books" not in plan.links  # dirty and unchanged already: nothing to store again


def test_an_open_update_goes_through() -> None:
    plan = _plan({"paid_at": AFTER})
    assert [(a.op, a.member) for a in plan.actions] == [("update", "books")]
    assert plan.skips == []


def test_a_closed_row_without_a_sync_id_still_gets_it_and_nothing_else() -> None:
    plan = _plan({"provisional": True})
    (action,) = plan.actions
    assert isinstance(action, Update) and action.link_only and action.assign_id == "k1"
    assert action.patch == {} and action.full == {**PAY}
    assert [s.reason for s in plan.skips] == [REASON]


LINE: dict[str, Any] = {"invoice": "inv-1", "name": "Labor", "quantity": "1", "position": 1}


def _line_plan(invoice: list[dict[str, Any] | None]) -> KeyPlan:
    """One line HCP changed (its name), its invoice in the versions given."""
    mapping = load_mapping("memory", "line_items")
    ctx = Context(
        entity=entity_spec("line_items"),
        members=("hcp", "books"),
        mappings={"hcp": mapping, "books": mapping},
        caps={"hcp": Capabilities(), "books": Capabilities(assigns_ids=True)},
        rules=lambda _field: ["hcp"],
        locks={"books": LOCK},
        through={"books": {"inv-1": invoice}},
    )
    views = {
        "hcp": MemberView(
            member="hcp",
            status="changed",
            native_id="l1",
            current={**LINE, "name": "Labour"},
            last_seen=LINE,
            native={**LINE, "name": "Labour"},
        ),
        "books": MemberView(
            member="books",
            status="unchanged",
            native_id="k1",
            current=LINE,
            last_seen=LINE,
            native=LINE,
        ),
    }
    return reconcile(ctx, "k1", LINE, views)


def test_a_line_of_a_closed_invoice_is_skipped_and_one_of_an_open_invoice_written() -> None:
    plan = _line_plan([{"created_at": BEFORE}, {"created_at": BEFORE}])
    assert plan.actions == [] and [s.reason for s in plan.skips] == [REASON]
    assert plan.links["books"].dirty and plan.base_after is not None
    assert plan.base_after["name"] == "Labour"
    # the invoice moved out of the closed period on the hub: the books still hold it closed
    assert _line_plan([{"created_at": AFTER}, {"created_at": BEFORE}]).actions == []
    plan = _line_plan([{"created_at": AFTER}, {"created_at": AFTER}])
    assert [(a.op, a.member) for a in plan.actions] == [("update", "books")]
    assert plan.skips == []


# ---------------------------------------------------------------------------- the config


def test_the_lock_is_read_with_the_members_time_zone(tmp_path: Path) -> None:
    config = hcp_books_config(tmp_path, locks={"books": "2026-10-01"})
    (pipeline,) = config.pipelines.values()
    assert pipeline.locks == {"books": Lock("books", dt.date(2026, 10, 1), "UTC")}
    assert pipeline.locks["books"].describe() == (
        "books closed before 2026-10-01"
        " (no write of invoices, line items or payments dated before it)"
    )
    chicago = Lock("books", dt.date(2026, 10, 1), "America/Chicago").describe()
    assert chicago.endswith("dated before it, days in America/Chicago)")


@pytest.mark.parametrize(
    ("locks", "where", "message"),
    [
        ({"books": "2026-02-30"}, "locks.books", "'2026-02-30' is not a real date"),
        ({"books": "1 October 2026"}, "locks.books", "'1 October 2026' is not a date"),
        ({"books": "2026-10-01T00:00:00"}, "locks.books", "is not a date"),
        ({"bokks": "2026-10-01"}, "locks.bokks", "not a member of this pipeline"),
    ],
)
def test_a_bad_lock_is_a_config_error_naming_the_key_and_the_fix(
    tmp_path: Path, locks: dict[str, str], where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        hcp_books_config(tmp_path, locks=locks)
    (problem,) = caught.value.problems
    assert problem.location.endswith(where), problem
    assert message in problem.message, problem
    assert problem.fix, problem


# ------------------------------------------------------------------------------ the sync


def _seed(hcp: Any) -> None:
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    for n, (day, amount) in enumerate(((BEFORE, 10000), (AFTER, 20000))):
        hcp.put(
            "invoices",
            f"i{n}",
            {
                "invoice_number": str(1000 + n),
                "customer": "c1",
                "amount": amount,
                "balance": amount - 5000,
                "status": "sent",
                "created_at": day,
            },
        )
        hcp.put(
            "payments",
            f"p{n}",
            {
                "invoice": f"i{n}",
                "amount": 5000,
                "method": "cash",
                "status": "succeeded",
                "paid_at": day,
            },
        )


def _books(number: str) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (k, v) for k, v in ds("books").table("invoices").items() if v["invoice_number"] == number
    ]
    return found


def _skips(config: Config) -> list[tuple[str, str, str]]:
    """The skipped writes ``syncengine status`` lists: (entity, member, reason)."""
    (status,) = api.status(config)
    return sorted((s["entity"], s["member"], s["reason"]) for s in status.skipped)


def _counts(result: Any) -> dict[str, tuple[int, int]]:
    """entity -> (writes planned, skipped writes reported)."""
    out = {}
    for ep in result.plan.entities:
        out[ep.entity] = (len(ep.actions), ep.counts()["skipped"])
    return out


def _synced(tmp_path: Path, locks: dict[str, str] | None = None) -> Config:
    config = hcp_books_config(tmp_path, locks={"books": "2026-10-01"} if locks is None else locks)
    _seed(ds("hcp"))
    first = run(config)
    assert first.exit_code == 0
    return config


def test_a_closed_invoice_changed_in_hcp_is_skipped_once_and_not_replanned(tmp_path: Path) -> None:
    """Locked from the start: the first sync creates what is open only."""
    config = _synced(tmp_path)
    assert {v["invoice_number"] for v in ds("books").table("invoices").values()} == {"1001"}
    assert [v["paid_at"] for v in ds("books").table("payments").values()] == [AFTER]
    assert _skips(config) == [("invoices", "books", REASON), ("payments", "books", REASON)]
    again = run(config)
    assert _counts(again) == {e: (0, 0) for e in ACCOUNTING}
    assert _skips(config) == [("invoices", "books", REASON), ("payments", "books", REASON)]


def test_an_edit_in_hcp_reaches_the_books_only_on_the_open_side(tmp_path: Path) -> None:
    config = _synced(tmp_path, locks={})
    # the books close September, then HCP changes both invoices
    config = hcp_books_config(tmp_path, locks={"books": "2026-10-01"})
    hcp = ds("hcp")
    hcp.edit("invoices", "i0", amount=11111, status="paid")
    hcp.edit("invoices", "i1", amount=22222)
    closed_before = _books("1000")
    result = run(config)
    assert result.exit_code == 0
    assert [(a.op, a.member, a.key) for a in result.plan.actions if a.entity == "invoices"] == [
        ("update", "books", result.plan.actions[0].key)
    ]
    assert _books("1000") == closed_before
    assert _books("1001")[1]["amount"] == 22222
    (skip,) = [s for ep in result.plan.entities for s in ep.skips]
    assert (skip.entity, skip.member, skip.reason, skip.quiet) == (
        "invoices",
        "books",
        REASON,
        False,
    )
    assert _skips(config) == [("invoices", "books", REASON)]
    # a second sync (and a third) plans nothing and reports nothing, and the skip stays listed
    for _ in range(2):
        again = run(config)
        assert _counts(again) == {e: (0, 0) for e in ACCOUNTING}, again.plan
        assert _skips(config) == [("invoices", "books", REASON)]
    assert _books("1000") == closed_before
    # the hub agreed with HCP all along: opening the period again writes the change
    opened = hcp_books_config(tmp_path, locks={"books": "2026-09-01"})
    done = run(opened)
    assert [(a.op, a.member) for a in done.plan.actions] == [("update", "books")]
    assert (_books("1000")[1]["amount"], _books("1000")[1]["status"]) == (11111, "paid")
    assert _skips(opened) == []
    assert run(opened).plan.actions == []


def test_a_payment_in_hcp_dated_before_the_lock_is_not_written(tmp_path: Path) -> None:
    config = _synced(tmp_path, locks={})
    config = hcp_books_config(tmp_path, locks={"books": "2026-10-01"})
    hcp = ds("hcp")
    for n, day in ((2, "2026-09-20T10:00:00Z"), (3, "2026-10-05T10:00:00Z")):
        hcp.put(
            "payments",
            f"p{n}",
            {
                "invoice": "i0",
                "amount": 100,
                "method": "check",
                "status": "succeeded",
                "paid_at": day,
            },
        )
    result = run(config)
    assert sorted(v["paid_at"] for v in ds("books").table("payments").values()) == [
        BEFORE,
        AFTER,
        "2026-10-05T10:00:00Z",
    ]
    assert _counts(result)["payments"] == (1, 1)
    assert _skips(config) == [("payments", "books", REASON)]
    assert _counts(run(config)) == {e: (0, 0) for e in ACCOUNTING}
    assert _skips(config) == [("payments", "books", REASON)]


@pytest.mark.parametrize(("was", "becomes"), [(BEFORE, AFTER), (AFTER, BEFORE)])
def test_a_date_moved_across_the_lock_is_skipped(tmp_path: Path, was: str, becomes: str) -> None:
    config = _synced(tmp_path, locks={})
    config = hcp_books_config(tmp_path, locks={"books": "2026-10-01"})
    invoice = "i0" if was == BEFORE else "i1"
    number = "1000" if was == BEFORE else "1001"
    closed_before = _books(number)
    ds("hcp").edit("invoices", invoice, created_at=becomes, amount=777)
    result = run(config)
    assert not [a for a in result.plan.actions if a.member == "books"]
    assert _books(number) == closed_before
    assert _skips(config) == [("invoices", "books", REASON)]
    assert _counts(run(config)) == {e: (0, 0) for e in ACCOUNTING}


def test_a_delete_of_a_closed_payment_is_skipped_and_the_books_keep_it(tmp_path: Path) -> None:
    config = _synced(tmp_path, locks={})
    config = hcp_books_config(tmp_path, locks={"books": "2026-10-01"})
    hcp = ds("hcp")
    later = {
        "invoice": "i1",
        "amount": 5,
        "method": "cash",
        "status": "succeeded",
        "paid_at": AFTER,
    }
    hcp.put("payments", "p2", later)
    assert _counts(run(config))["payments"] == (1, 0)
    hcp.remove("payments", "p0")
    hcp.remove("payments", "p1")
    result = run(config)
    assert [(a.op, a.member) for a in result.plan.actions] == [("delete", "books")]
    paid = sorted((v["paid_at"], v["amount"]) for v in ds("books").table("payments").values())
    assert paid == [(BEFORE, 5000), (AFTER, 5)]
    assert _skips(config) == [("payments", "books", REASON)]
    for _ in range(2):
        assert _counts(run(config)) == {e: (0, 0) for e in ACCOUNTING}
        assert _skips(config) == [("payments", "books", REASON)]
    assert (
        sorted((v["paid_at"], v["amount"]) for v in ds("books").table("payments").values()) == paid
    )
    # opened again: the delete goes through
    opened = hcp_books_config(tmp_path, locks={"books": "2026-01-01"})
    assert [(a.op, a.member) for a in run(opened).plan.actions] == [("delete", "books")]
    assert [v["paid_at"] for v in ds("books").table("payments").values()] == [AFTER]
    assert _skips(opened) == []
    assert run(opened).plan.actions == []


def test_the_other_members_still_get_what_the_locked_one_changes(tmp_path: Path) -> None:
    """The lock holds writes *to* the books: the bookkeeper's own edit of a closed invoice
    still reaches the other member, and the new invoices it types reach it too."""
    both = {"entities": list(ACCOUNTING)}
    config = memory_config(
        tmp_path, {"hcp": both, "books": both}, entities=ACCOUNTING, locks={"books": "2026-10-01"}
    )
    _seed(ds("hcp"))
    run(config)
    key, _row = _books("1001")
    ds("books").edit("invoices", key, amount=999)
    closed = next(
        k for k, v in ds("hcp").table("invoices").items() if v["invoice_number"] == "1000"
    )
    ds("hcp").edit("invoices", closed, amount=4242)
    result = run(config)
    assert sorted((a.op, a.member) for a in result.plan.actions) == [("update", "hcp")]
    assert ds("hcp").table("invoices")["i1"]["amount"] == 999
    assert _counts(run(config)) == {e: (0, 0) for e in ACCOUNTING}


LINED = (*ACCOUNTING, "line_items")


def _lined(tmp_path: Path, locks: dict[str, str]) -> Config:
    members = {"hcp": {"entities": list(LINED)}, "books": {"entities": list(LINED)}}
    return memory_config(tmp_path, members, entities=LINED, locks=locks)


def _seed_lines(hcp: Any) -> None:
    _seed(hcp)
    for n in range(2):
        hcp.put(
            "line_items",
            f"l{n}",
            {"invoice": f"i{n}", "name": "Labor", "quantity": "2", "unit_price": 2500,
             "amount": 5000, "position": 1},
        )  # fmt: skip


def _books_lines() -> dict[str, str]:
    """The books' lines: invoice number -> name."""
    books = ds("books")
    numbers = {k: v["invoice_number"] for k, v in books.table("invoices").items()}
    return {numbers[v["invoice"]]: v["name"] for v in books.table("line_items").values()}


def test_the_lines_of_a_closed_invoice_stay_out_of_the_books(tmp_path: Path) -> None:
    """Locked from the start: the closed invoice's line is not created (it would wait for
    its invoice, which the lock holds: it is skipped for the lock); the open one's is.
    Then HCP changes both lines: only the open one is written, the other skipped once."""
    config = _lined(tmp_path, {"books": "2026-10-01"})
    hcp = ds("hcp")
    _seed_lines(hcp)
    assert run(config).exit_code == 0
    assert _books_lines() == {"1001": "Labor"}
    listed = [("invoices", "books", REASON), ("line_items", "books", REASON)]
    assert [s for s in _skips(config) if s[0] != "payments"] == listed
    assert _counts(run(config)) == {e: (0, 0) for e in LINED}

    opened = _lined(tmp_path, {})
    run(opened)
    assert _books_lines() == {"1000": "Labor", "1001": "Labor"}
    hcp.edit("line_items", "l0", name="Labour")
    hcp.edit("line_items", "l1", name="Labour")
    result = run(config)
    assert _counts(result)["line_items"] == (1, 1)
    assert _books_lines() == {"1000": "Labor", "1001": "Labour"}
    assert _skips(config) == [("line_items", "books", REASON)]
    for _ in range(2):
        assert _counts(run(config)) == {e: (0, 0) for e in LINED}
        assert _skips(config) == [("line_items", "books", REASON)]
    hcp.remove("line_items", "l0")  # a delete of a closed line is held too
    assert _counts(run(config))["line_items"] == (0, 0)  # (the skip is on record: quiet)
    assert _books_lines() == {"1000": "Labor", "1001": "Labour"}
    assert _skips(config) == [("line_items", "books", REASON)]


def test_a_line_of_an_invoice_moved_across_the_lock_is_held(tmp_path: Path) -> None:
    """HCP moves the open invoice into the closed period and changes its line: neither is
    written; a new invoice dated after the lock brings its new line along in the same run."""
    config = _lined(tmp_path, {})
    hcp = ds("hcp")
    _seed_lines(hcp)
    run(config)
    config = _lined(tmp_path, {"books": "2026-10-01"})
    hcp.edit("invoices", "i1", created_at=BEFORE)
    hcp.edit("line_items", "l1", name="Labour")
    hcp.put("invoices", "i2", {"invoice_number": "1002", "customer": "c1", "amount": 900,
                               "balance": 900, "status": "sent", "created_at": AFTER})  # fmt: skip
    hcp.put("line_items", "l2", {"invoice": "i2", "name": "Fitting", "quantity": "1",
                                 "unit_price": 900, "amount": 900, "position": 1})  # fmt: skip
    result = run(config)
    assert _counts(result)["line_items"] == (1, 1)
    assert _books_lines() == {"1000": "Labor", "1001": "Labor", "1002": "Fitting"}
    assert _skips(config) == [("invoices", "books", REASON), ("line_items", "books", REASON)]
    assert _counts(run(config)) == {e: (0, 0) for e in LINED}


def test_the_report_shows_a_difference_after_the_close_not_a_disagreement(tmp_path: Path) -> None:
    """HCP changes a closed invoice and takes two payments on it, one dated before the lock
    and one after: the books get the later payment only, and keep the invoice row as it was
    closed. Every difference that leaves is one the lock explains: listed after the close,
    the report clean (exit 0). A difference on the open side is still a disagreement."""
    config = _synced(tmp_path, locks={})
    config = hcp_books_config(tmp_path, locks={"books": "2026-10-01"})
    hcp = ds("hcp")
    for n, day in ((8, BEFORE), (9, AFTER)):
        payment = {"invoice": "i0", "amount": 100, "method": "check", "status": "succeeded"}
        hcp.put("payments", f"p{n}", {**payment, "paid_at": day})
    hcp.edit("invoices", "i0", amount=11111, balance=11111 - 5200, status="paid")
    hcp.put("customers", "c9", {"first_name": "Cy", "email": "cy@example.com"})
    hcp.edit("invoices", "i0", customer="c9")  # moved to another customer after the close
    run(config)
    assert sorted(v["paid_at"] for v in ds("books").table("payments").values()) == [
        BEFORE,
        AFTER,
        AFTER,
    ]
    [report] = api.reconcile_report(config)
    assert report.clean and report.exit_code == 0, report.to_json()
    (line,) = [x for x in report.invoices if x.after_close]
    assert line.invoice_number == "1000" and not line.problems
    explained = sorted((d.member, d.message.split(":")[0]) for d in line.after_close)
    assert explained == [
        ("", "amounts differ"),
        ("", "customers differ"),
        ("", "statuses differ"),  # paid in HCP, still sent in the closed books
        ("", "succeeded payments differ"),
        ("books", "1 payment(s) held elsewhere are not on books (after the close"),
        (
            "books",
            "balance $50.00 on books but amount $100.00 − payments $51.00 = $49.00"
            " (after the close",
        ),
    ], explained
    assert all(d.kind == "after_close" for d in line.after_close)
    assert all("books closed before 2026-10-01" in d.message for d in line.after_close)
    body = report.to_json()
    assert body["clean"] is True and body["after_close"] == 6 and body["disagreements"] == 0
    # an open invoice that disagrees is still a disagreement: voided in HCP, not in the books
    key, _row = _books("1001")
    ds("books").edit("invoices", key, amount=1)
    [report] = api.reconcile_report(config)
    assert not report.clean and report.exit_code == 1
    assert {x.invoice_number for x in report.invoices if x.problems} == {"1001"}
    ds("books").edit("invoices", key, amount=ds("hcp").table("invoices")["i1"]["amount"])
    ds("books").edit("invoices", key, status="voided")
    [report] = api.reconcile_report(config)
    [open_line] = [x for x in report.invoices if x.problems]
    assert [d.message.split(":")[0] for d in open_line.problems] == ["statuses differ"]
