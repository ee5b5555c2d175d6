"""References shown by value are planned from the records looked up exactly as the whole index
would plan them.

Member "a" shows an invoice's customer by e-mail (``ref_by``) and a payment's invoice by its
number; member "b" by its own ids. Planning looks up only the records referred to
(``References.back_index``, a partial ``RefIndex`` with ``loaded``), adds the ones found later
(``MemberRefs.fill``) and resolves a record just written to the record the write meant
(``MemberRefs.resolve(record, meant)``). Checked here: a record fetched after the partial pass,
a value a deleted and a live customer share, a fill after the whole index was built, and
random edits on both members where each dry run's plan with the partial index must equal the
plan with the whole index, and each written row's last-seen reference what the whole index
resolves it to. Memory members, a real SQLite state file."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from syncengine import model
from syncengine.config import Config, load_config
from syncengine.connector import NativeRecord
from syncengine.engine import SyncResult
from syncengine.mapping import EntityMapping, load_mapping_file, parse_mapping
from syncengine.refs import MemberRefs, References, RefIndexes
from syncengine.state import StateStore
from tests.helpers import ds, memory_config, run

C, INV, PAY = "customers", "invoices", "payments"
A_INVOICES = (
    '[fields]\ninvoice_number = "invoice_number"\n'
    'customer = { native = "customer_email", ref_by = ["email", "mobile_number"] }\n'
    'amount = "amount"\nstatus = "status"\n'
)
A_PAYMENTS = (
    '[fields]\ninvoice = { native = "invoice_no", ref_by = "invoice_number" }\n'
    'amount = "amount"\nstatus = "status"\n'
)
PARTIAL_SNAPSHOT = MemberRefs.snapshot
"""``MemberRefs.snapshot`` as the engine has it: partial indexes for ``wanted``."""


def _config(
    tmp_path: Path,
    a_options: Mapping[str, Any] | None = None,
    *,
    payments: bool = False,
    deletes: dict[str, Any] | None = None,
) -> Config:
    """Members "a" (``a_options``; invoices by customer e-mail, payments by invoice number)
    and "b" over customers and invoices (and ``payments``)."""
    entities = (C, INV, PAY) if payments else (C, INV)
    mappings = {INV: A_INVOICES, PAY: A_PAYMENTS} if payments else {INV: A_INVOICES}
    for entity, text in mappings.items():
        (tmp_path / f"a-{entity}.toml").write_text(text, encoding="utf-8")
    config = memory_config(
        tmp_path,
        {"a": {**(a_options or {}), "entities": list(entities)}, "b": {"entities": list(entities)}},
        entities=entities,
        deletes=deletes,
    )
    lines = [f'{entity} = "a-{entity}.toml"' for entity in mappings]
    text = "\n".join(["", "[pipelines.mappings.a]", *lines, ""])
    config.path.write_text(config.path.read_text(encoding="utf-8") + text, encoding="utf-8")
    return load_config(config.path)


def _invoice_mapping() -> EntityMapping:
    """a's invoice mapping, the customer shown by e-mail or else mobile number."""
    fields = {
        "invoice_number": "invoice_number",
        "customer": {"native": "customer_email", "ref_by": ["email", "mobile_number"]},
    }
    return parse_mapping({"fields": fields}, entity=INV, source="test")


def _member_refs(store: StateStore, mapping: EntityMapping) -> MemberRefs:
    """a's references of ``mapping``'s entity, as a new run sees them."""
    member_refs = References(store, "p").for_member("a", mapping)
    assert member_refs is not None
    return member_refs


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """An empty SQLite state store of its own (records put straight into it)."""
    with StateStore.open(f"sqlite:///{tmp_path}/state.db") as opened:
        yield opened


def _a_invoice(number: str) -> dict[str, Any]:
    """a's row of invoice ``number`` (the row itself: editing it edits a)."""
    rows: list[dict[str, Any]] = list(ds("a").table(INV).values())
    [row] = [r for r in rows if r["invoice_number"] == number]
    return row


def test_a_record_fetched_after_the_partial_pass_is_planned_with_its_own_customer(
    tmp_path: Path,
) -> None:
    """a reads incrementally and its row of invoice 1001 was moved to another customer
    without a new stamp; b's edit of the invoice fetches a's row, and planning it looks up
    the customer the fetched row names (Bob), not only the one its base names (Ann)."""
    cfg = _config(tmp_path, {"incremental": True, "full_every": 100, "put_updates": True})
    b = ds("b")
    b.put(C, "c1", {"first_name": "Ann", "email": "ann@x.com"})
    b.put(C, "c2", {"first_name": "Bob", "email": "bob@x.com"})
    b.put(INV, "i1", {"invoice_number": "1001", "customer": "c1", "amount": 1, "status": "open"})
    run(cfg)
    run(cfg)
    assert run(cfg).plan.actions == []
    row = _a_invoice("1001")
    assert row["customer_email"] == "ann@x.com"
    # edited on a in the same second as the last read: the incremental filter misses it
    row["customer_email"] = "bob@x.com"
    b.edit(INV, "i1", amount=2)
    result = run(cfg)
    assert result.exit_code == 0, result
    assert b.table(INV)["i1"]["customer"] == "c2"
    assert _a_invoice("1001")["amount"] == 2


def test_a_value_a_deleted_and_a_live_customer_share_means_the_live_one(
    store: StateStore,
) -> None:
    """The whole index resolves an e-mail a deleted and a live customer share to the live
    one; a row written for the deleted one resolves to the live one too, not to the record
    the write meant."""
    with store.transaction() as tx:
        tx.put_record("p", C, "k-old", {"email": "ann@x.com", model.DELETED: True})
        tx.put_record("p", C, "k-new", {"email": "ann@x.com"})
    mapping = _invoice_mapping()
    read = {"invoice_number": "1", "customer": "ann@x.com"}
    written = dict(read)
    _member_refs(store, mapping).resolve(read)
    _member_refs(store, mapping).resolve(written, {"customer": "k-old"})
    assert read["customer"] == "k-new"
    assert written["customer"] == "k-new"


def test_a_fill_after_the_whole_index_was_built_reaches_the_snapshot(store: StateStore) -> None:
    """A record mapped after the snapshot builds the whole index; filling the snapshot then
    still adds the records it lacks, which it renders as the whole index shows them."""
    with store.transaction() as tx:
        tx.put_record("p", C, "k1", {"email": "ann@x.com"})
        tx.put_record("p", C, "k2", {"email": "bob@x.com"})
    member_refs = _member_refs(store, _invoice_mapping())
    snapshot = member_refs.snapshot({C: {"k1"}})
    member_refs.resolve({"customer": "bob@x.com"})  # builds the whole index
    member_refs.fill(snapshot, {C: {"k2"}})
    assert snapshot.render({"customer": "k2"}) == ({"customer": "bob@x.com"}, [])


def _whole_snapshot(
    self: MemberRefs, wanted: Mapping[str, Iterable[str]] | None = None
) -> RefIndexes:
    """``MemberRefs.snapshot`` ignoring ``wanted``: every field's whole index."""
    return PARTIAL_SNAPSHOT(self)


PlanView = tuple[list[tuple[str, str, str, str, str]], list[tuple[str, str, str]]]


def _plan_view(result: SyncResult) -> PlanView:
    """The run's planned actions (what each writes) and issues, sorted."""
    actions = sorted(
        (
            a.entity,
            a.member,
            a.op,
            repr(getattr(a, "native", None)),
            repr(getattr(a, "patch", None)),
        )
        for a in result.plan.actions
    )
    issues = sorted((i.entity, i.member, i.message) for e in result.plan.entities for i in e.issues)
    return actions, issues


def _check_last_seen(cfg: Config) -> None:
    """Each invoice link on a whose row is as written: its last-seen customer is the one the
    whole index resolves the row to (where that is one customer)."""
    mapping = load_mapping_file(cfg.path.parent / "a-invoices.toml", entity=INV)
    with StateStore.open(cfg.state_url, base_dir=str(cfg.path.parent)) as store:
        keys = [k for k, _base in store.iter_bases("p", INV)]
        for key, states in store.load_records("p", INV, keys).items():
            link = states.links.get("a")
            if link is None or not link.native_id or link.last_seen is None:
                continue
            row = ds("a").table(INV).get(link.native_id)
            if row is None or NativeRecord(link.native_id, row).native_hash() != link.native_hash:
                continue
            record = mapping.to_canonical(row, location="")
            _member_refs(store, mapping).resolve(record)
            if record.get("customer") is not None:
                assert link.last_seen.get("customer") == record["customer"], (key, row)


def _dry_runs_agree_then_run(cfg: Config, step: int) -> None:
    """The dry run's plan with partial indexes equals the one with whole indexes; the run
    then succeeds and leaves last-seen references as the whole index resolves them."""
    partial = run(cfg, dry_run=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MemberRefs, "snapshot", _whole_snapshot)
        whole = run(cfg, dry_run=True)
    assert _plan_view(partial) == _plan_view(whole), step
    result = run(cfg)
    assert not result.error and result.exit_code in (0, 1, 3), result.error
    _check_last_seen(cfg)


@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize("seed", [11, 23])
def test_random_edits_are_planned_as_with_the_whole_index(
    tmp_path: Path, seed: int, incremental: bool
) -> None:
    """Random edits of customers (e-mails changed, cleared for a mobile number, shared,
    deleted) and invoices (moved, added, deleted) on b and of invoice e-mails on a: every
    step plans the same with partial and whole indexes, full and incremental reads."""
    options = {"incremental": True, "full_every": 3, "put_updates": True} if incremental else {}
    cfg = _config(tmp_path, options)
    b = ds("b")
    rng = random.Random(seed)
    emails = [f"p{n}@x.com" for n in range(6)]
    for n in range(6):
        b.put(C, f"c{n}", {"first_name": f"N{n}", "email": emails[n]})
    for n in range(8):
        invoice = {"invoice_number": str(1000 + n), "customer": f"c{n % 6}", "amount": n}
        b.put(INV, f"i{n}", {**invoice, "status": "open"})
    run(cfg)
    seq = count(101)
    for step in range(25):
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(8)
            customers, invoices = list(b.table(C)), list(b.table(INV))
            if _shared_edit(op, rng, step, seq, emails):
                continue
            if op == 1 and invoices and customers:
                b.edit(INV, rng.choice(invoices), customer=rng.choice(customers))
            elif op == 4:
                n = next(seq)
                b.put(C, f"c{n}", {"first_name": f"M{n}", "email": rng.choice([*emails, None])})
            elif op == 6 and customers:
                customer = rng.choice(customers)
                if not any(r.get("customer") == customer for r in b.table(INV).values()):
                    b.remove(C, customer)
            elif op == 7 and customers:
                customer = rng.choice(customers)
                mobile = rng.choice(["(555) 201-3344", "(555) 201-3345"])
                b.edit(C, customer, email=None, mobile_number=mobile)
        _dry_runs_agree_then_run(cfg, step)


@pytest.mark.parametrize(
    ("seed", "deletes"),
    [(5, None), (3, {"approve": True})],
    ids=["deletes-applied", "deletes-approved"],
)
def test_random_edits_with_payments_are_planned_as_with_the_whole_index(
    tmp_path: Path, seed: int, deletes: dict[str, Any] | None
) -> None:
    """Random edits with payments shown by invoice number: invoices renumbered (numbers
    shared), moved, added and deleted on b, payments added, invoice e-mails edited and
    invoices and customers deleted on a, deletes applied or held for approval: every step
    plans the same with partial and whole indexes."""
    cfg = _config(tmp_path, payments=True, deletes=deletes)
    a, b = ds("a"), ds("b")
    rng = random.Random(seed)
    emails = [f"p{n}@x.com" for n in range(4)]
    for n in range(4):
        b.put(C, f"c{n}", {"first_name": f"N{n}", "email": emails[n]})
    for n in range(6):
        invoice = {"invoice_number": str(1000 + n), "customer": f"c{n % 4}", "amount": n}
        b.put(INV, f"i{n}", {**invoice, "status": "open"})
        b.put(PAY, f"p{n}", {"invoice": f"i{n}", "amount": n, "status": "succeeded"})
    run(cfg)
    seq = count(101)
    for step in range(20):
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(8)
            customers, invoices = list(b.table(C)), list(b.table(INV))
            if _shared_edit(op, rng, step, seq, emails):
                continue
            if op == 1 and invoices and customers:
                invoice, customer = rng.choice(invoices), rng.choice(customers)
                number = str(rng.randrange(1000, 1010))
                b.edit(INV, invoice, customer=customer, invoice_number=number)
            elif op == 4 and invoices:
                payment = {"invoice": rng.choice(invoices), "amount": 2, "status": "succeeded"}
                b.put(PAY, f"p{next(seq)}", payment)
            elif op == 6 and a.table(INV):
                a.remove(INV, rng.choice(list(a.table(INV))))
            elif op == 7 and customers and a.table(C):
                a.remove(C, rng.choice(list(a.table(C))))
        _dry_runs_agree_then_run(cfg, step)


def _shared_edit(
    op: int, rng: random.Random, step: int, seq: Iterator[int], emails: list[str]
) -> bool:
    """The edits both random walks make (ops 0, 2, 3 and 5): a customer's e-mail changed, an
    invoice added or deleted on b, an invoice row's e-mail edited on a. False for the others,
    or when there is nothing to edit."""
    a, b = ds("a"), ds("b")
    customers, invoices = list(b.table(C)), list(b.table(INV))
    if op == 0 and customers:
        b.edit(C, rng.choice(customers), email=rng.choice([*emails, f"z{step}@x.com"]))
    elif op == 2 and customers:
        n = next(seq)
        invoice = {"invoice_number": str(n + 5000), "customer": rng.choice(customers)}
        b.put(INV, f"i{n}", {**invoice, "amount": 1, "status": "open"})
    elif op == 3 and invoices:
        b.remove(INV, rng.choice(invoices))
    elif op == 5 and a.table(INV):
        a.edit(INV, rng.choice(list(a.table(INV))), customer_email=rng.choice(emails))
    else:
        return False
    return True
