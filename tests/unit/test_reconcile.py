"""``reconcile()`` on its own: one table row per rule of the field-level three-way merge.

Every row gives one hub record's base and each member's view of it, and the whole plan it
must come to: the actions (with their exact patches), the link plans, the conflicts, the
skips and the new base. No engine, no state store: ``reconcile`` is a pure function.

Three members sync in every row: ``crm`` and ``shop`` take the in-memory mappings (canonical
names both ways), ``sheet`` the spreadsheet's (its own column names and formats).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from syncengine.connector import Capabilities
from syncengine.mapping import EntityMapping, load_mapping
from syncengine.model import DELETED, Record, entity_spec
from syncengine.plan import (
    NOTHING,
    RETOLD,
    Action,
    Conflict,
    Create,
    Delete,
    KeyPlan,
    LinkPlan,
    Skip,
    Update,
)
from syncengine.reconcile import Context, MemberView, Status, reconcile
from syncengine.refs import MemberRefs, References, RefIndex, RefIndexes

CRM, SHEET, SHOP = "crm", "sheet", "shop"
MEMBERS = (CRM, SHEET, SHOP)
TYPES = {CRM: "memory", SHEET: "spreadsheet", SHOP: "memory"}
KEY = "k1"

MAPPINGS: dict[str, dict[str, EntityMapping]] = {
    entity: {
        CRM: load_mapping("memory", entity),
        SHEET: load_mapping("spreadsheet", entity),
        SHOP: load_mapping("memory", entity),
    }
    for entity in ("customers", "invoices")
}

# ------------------------------------------------------------------------------- customers

ANN: Record = {
    "first_name": "Ann",
    "last_name": "Lee",
    "email": "ann@example.com",
    "mobile_number": "+15551234567",
}
ANN_LABEL = "Ann Lee <ann@example.com>"
ANNE_LABEL = "Anne Lee <ann@example.com>"
SHEET_ANN = {
    "First Name": "Ann",
    "Last Name": "Lee",
    "Email": "ann@example.com",
    "Mobile": "(555) 123-4567",
}
"""Ann as the sheet shows her."""


def ann(**fields: Any) -> Record:
    return {**ANN, **fields}


# -------------------------------------------------------------------------------- invoices
# References: crm and shop show an invoice's customer by their own native id, the sheet by
# the customer's e-mail. cust-1 is Ann (everywhere), cust-2 Bob (not on shop), cust-3 is
# only on crm.

INV: Record = {
    "invoice_number": "1001",
    "customer": "cust-1",
    "status": "open",
    "amount": 12500,
    "due_at": "2024-05-01T09:00:00Z",
}
INV_SHEET: Record = {**INV, "due_at": "2024-05-01T00:00:00Z"}
"""The invoice in the sheet's normal form: a date column reads back as midnight UTC."""
INV_CRM_NATIVE = {**INV, "customer": "c-101"}
INV_SHOP_NATIVE = {**INV, "customer": "s-7"}
INV_SHEET_NATIVE = {
    "Invoice #": "1001",
    "Customer Email": "ann@example.com",
    "Status": "open",
    "Amount": "125.00",
    "Due Date": "2024-05-01",
}
SHOWN = {
    CRM: {"cust-1": "c-101", "cust-2": "c-202", "cust-3": "c-303"},
    SHEET: {"cust-1": "ann@example.com", "cust-2": "bob@example.com"},
    SHOP: {"cust-1": "s-7"},
}
"""member -> customer key -> how the member shows it."""


class _GivenReferences(References):
    """References whose indexes are given as data instead of read from a state store.

    ``MemberRefs.snapshot()`` builds the ``RefIndexes`` from it as the engine does; the one
    index is built with ``RefIndex.add``."""

    def __init__(self, shown: Mapping[str, str]) -> None:  # no store: nothing to open
        self.shown = shown

    def index(self, target: str, member: str, ref_by: tuple[str, ...] | None) -> RefIndex:
        built = RefIndex()
        if target == "customers":
            for key, native in self.shown.items():
                built.add(native, key)
        return built


def _ref_indexes(member: str) -> RefIndexes:
    mapping = MAPPINGS["invoices"][member]
    member_refs = MemberRefs(_GivenReferences(SHOWN[member]), member, mapping)
    return member_refs.snapshot()


INVOICE_REFS = {member: _ref_indexes(member) for member in MEMBERS}


# ---------------------------------------------------------------------------------- views


def _native(entity: str, member: str, record: Record | None) -> dict[str, Any] | None:
    """The native record a member holds for a canonical one (invoice rows give theirs
    literally: how a member shows a reference is the point there)."""
    if record is None:
        return None
    if member != SHEET:  # the memory mappings: canonical names both ways
        return {k: v for k, v in record.items() if v is not None}
    mapping = MAPPINGS[entity][member]
    patch = {k: v for k, v in mapping.to_native(record).items() if v is not None}
    return mapping.build_native(patch)


def view(
    member: str,
    status: Status,
    current: Record | None = None,
    last_seen: Record | None = None,
    *,
    entity: str = "customers",
    native: dict[str, Any] | None = None,
    native_id: str | None = None,
    dirty: bool = False,
    provisional: bool = False,
    joined: bool = False,
) -> MemberView:
    return MemberView(
        member=member,
        status=status,
        native_id=native_id or f"{member}-1",
        current=current,
        last_seen=last_seen,
        native=native if native is not None else _native(entity, member, current),
        native_hash=f"h-{member}",
        provisional=provisional,
        joined=joined,
        dirty=dirty,
    )


def unchanged(member: str, record: Record, **kw: Any) -> MemberView:
    return view(member, "unchanged", record, record, **kw)


def changed(member: str, current: Record, last_seen: Record, **kw: Any) -> MemberView:
    return view(member, "changed", current, last_seen, **kw)


def new(member: str, current: Record, **kw: Any) -> MemberView:
    return view(member, "new", current, None, **kw)


def gone(member: str, last_seen: Record) -> MemberView:
    return MemberView(member=member, status="gone", native_id=f"{member}-1", last_seen=last_seen)


def absent(member: str) -> MemberView:
    return MemberView(member=member, status="absent")


# ---------------------------------------------------------------------- expected outcomes


def kept(member: str, last_seen: Record, *, dirty: bool = False, native_id: str = "") -> LinkPlan:
    return LinkPlan(member, native_id or f"{member}-1", f"h-{member}", last_seen, dirty=dirty)


def removed(member: str) -> LinkPlan:
    return LinkPlan(member, None, None, None, remove=True)


def update(
    member: str,
    changes: dict[str, tuple[Any, Any]],
    patch: dict[str, Any],
    full: dict[str, Any],
    *,
    entity: str = "customers",
    native_id: str = "",
    assign_id: str | None = None,
) -> Update:
    return Update(
        entity,
        member,
        KEY,
        native_id or f"{member}-1",
        changes,
        patch,
        full,
        assign_id=assign_id,
        read_hash=f"h-{member}",
    )


def skip(
    member: str,
    reason: str,
    label: str = ANN_LABEL,
    *,
    entity: str = "customers",
    kind: str = "unsupported",
) -> Skip:
    return Skip(entity, member, KEY, reason, label, kind=kind)


def conflict(
    values: dict[str, Any], base_value: Any, winner: str | None, rule: str, label: str
) -> Conflict:
    return Conflict("customers", KEY, "first_name", values, base_value, winner, rule, label)


@dataclass
class Expect:
    """The parts of a ``KeyPlan`` a row pins down: all of them but the echo of its inputs."""

    base_after: Record | None
    actions: list[Action] = field(default_factory=list)
    links: dict[str, LinkPlan] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    purge: bool = False
    waiting: set[str] = field(default_factory=set)
    prior: dict[str, LinkPlan] = field(default_factory=dict)

    @classmethod
    def of(cls, plan: KeyPlan) -> Expect:
        return cls(
            base_after=plan.base_after,
            actions=plan.actions,
            links=plan.links,
            conflicts=plan.conflicts,
            skips=plan.skips,
            purge=plan.purge,
            waiting=plan.waiting,
            prior=plan.prior,
        )


@dataclass(frozen=True)
class Row:
    base: Record | None
    views: tuple[MemberView, ...]
    expect: Expect
    entity: str = "customers"
    new_key: bool = False
    cannot: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """member -> the operations it lacks (create, update, delete)."""
    rules: Mapping[str, list[str]] = field(default_factory=dict)
    """field -> its ordered conflict rules (none when not given)."""
    propagate_deletes: bool = True
    parked: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """field with an open conflict -> member -> the value the conflict shows for it."""
    users: Mapping[str, int] | None = None


def context(row: Row) -> Context:
    return Context(
        entity=entity_spec(row.entity),
        members=MEMBERS,
        mappings=MAPPINGS[row.entity],
        caps={m: Capabilities(**dict.fromkeys(row.cannot.get(m, ()), False)) for m in MEMBERS},
        rules=lambda name: list(row.rules.get(name, [])),
        types=TYPES,
        propagate_deletes=row.propagate_deletes,
        parked={KEY: row.parked} if row.parked else {},
        refs=INVOICE_REFS if row.entity == "invoices" else {},
        users=row.users,
    )


# ------------------------------------------------------------------------- changes, merge

MERGE = [
    pytest.param(
        Row(
            base=ANN,
            views=(unchanged(CRM, ANN), unchanged(SHEET, ANN), unchanged(SHOP, ANN)),
            expect=Expect(base_after=ANN),
        ),
        id="nothing-changed-no-actions",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne"), ANN),
                unchanged(SHEET, ANN),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ann(first_name="Anne"),
                actions=[
                    update(
                        SHEET,
                        {"first_name": ("Ann", "Anne")},
                        {"First Name": "Anne"},
                        {**SHEET_ANN, "First Name": "Anne"},
                    ),
                    update(
                        SHOP,
                        {"first_name": ("Ann", "Anne")},
                        {"first_name": "Anne"},
                        ann(first_name="Anne"),
                    ),
                ],
                links={CRM: kept(CRM, ann(first_name="Anne"))},
            ),
        ),
        id="changed-on-one-member-updates-the-others",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                unchanged(CRM, ANN),
                changed(SHEET, ann(mobile_number=None), ANN),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after={k: v for k, v in ANN.items() if k != "mobile_number"},
                actions=[
                    update(
                        CRM,
                        {"mobile_number": ("+15551234567", None)},
                        {"mobile_number": None},
                        ann(mobile_number=None),
                    ),
                    update(
                        SHOP,
                        {"mobile_number": ("+15551234567", None)},
                        {"mobile_number": None},
                        ann(mobile_number=None),
                    ),
                ],
                links={SHEET: kept(SHEET, ann(mobile_number=None))},
            ),
        ),
        id="cleared-on-one-member-clears-the-others-and-leaves-the-base",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, {**ann(company=None, tags=None), "home_number": None}, ANN),
                unchanged(SHEET, ANN),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ANN,
                links={CRM: kept(CRM, {**ann(company=None, tags=None), "home_number": None})},
            ),
        ),
        id="none-and-missing-fields-agree",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                view(CRM, "unchanged", ann(company=None), ANN, dirty=True),
                unchanged(SHEET, ANN),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(base_after=ANN, links={CRM: kept(CRM, ann(company=None))}),
        ),
        id="dirty-view-none-and-missing-agree-no-write",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne"), ANN),
                unchanged(SHEET, ANN),
                changed(SHOP, ann(first_name="Anne"), ANN),
            ),
            expect=Expect(
                base_after=ann(first_name="Anne"),
                actions=[
                    update(
                        SHEET,
                        {"first_name": ("Ann", "Anne")},
                        {"First Name": "Anne"},
                        {**SHEET_ANN, "First Name": "Anne"},
                    )
                ],
                links={
                    CRM: kept(CRM, ann(first_name="Anne")),
                    SHOP: kept(SHOP, ann(first_name="Anne")),
                },
            ),
        ),
        id="same-change-on-two-members-no-conflict",
    ),
    pytest.param(
        Row(
            base=ann(tags=["vip"]),
            views=(
                changed(CRM, ann(tags=["new", "vip"]), ann(tags=["vip"])),
                unchanged(SHEET, ann(tags=["vip"])),
                changed(SHOP, ann(tags=["new", "vip"]), ann(tags=["vip"])),
            ),
            expect=Expect(
                base_after=ann(tags=["new", "vip"]),
                actions=[
                    update(
                        SHEET,
                        {"tags": (["vip"], ["new", "vip"])},
                        {"Tags": "new, vip"},
                        {**SHEET_ANN, "Tags": "new, vip"},
                    )
                ],
                links={
                    CRM: kept(CRM, ann(tags=["new", "vip"])),
                    SHOP: kept(SHOP, ann(tags=["new", "vip"])),
                },
            ),
        ),
        # lists are compared by value, not by identity
        id="same-list-change-on-two-members-no-conflict",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne"), ANN),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            rules={"first_name": ["shop", "sheet", "crm"]},
            expect=Expect(
                base_after=ann(first_name="Annie"),
                actions=[
                    update(
                        CRM,
                        {"first_name": ("Anne", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie"),
                    ),
                    update(
                        SHOP,
                        {"first_name": ("Ann", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie"),
                    ),
                ],
                links={SHEET: kept(SHEET, ann(first_name="Annie"))},
                conflicts=[
                    conflict({CRM: "Anne", SHEET: "Annie"}, "Ann", SHEET, SHEET, ANNE_LABEL)
                ],
            ),
        ),
        # "shop" comes first but did not change the field: the next rule decides
        id="conflict-decided-by-member-name",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(
                    CRM,
                    ann(first_name="Anne", updated_at="2024-06-01T10:00:00Z"),
                    ann(updated_at="2024-05-01T10:00:00Z"),
                ),
                unchanged(SHEET, ANN),
                changed(
                    SHOP,
                    ann(first_name="Annie", updated_at="2024-06-02T10:00:00Z"),
                    ann(updated_at="2024-05-01T10:00:00Z"),
                ),
            ),
            rules={"first_name": ["newest", "crm"]},
            expect=Expect(
                base_after=ann(first_name="Annie"),
                actions=[
                    update(
                        CRM,
                        {"first_name": ("Anne", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie", updated_at="2024-06-01T10:00:00Z"),
                    ),
                    update(
                        SHEET,
                        {"first_name": ("Ann", "Annie")},
                        {"First Name": "Annie"},
                        {**SHEET_ANN, "First Name": "Annie"},
                    ),
                ],
                links={
                    SHOP: kept(SHOP, ann(first_name="Annie", updated_at="2024-06-02T10:00:00Z"))
                },
                conflicts=[
                    conflict({CRM: "Anne", SHOP: "Annie"}, "Ann", SHOP, "newest", ANNE_LABEL)
                ],
            ),
        ),
        id="conflict-decided-by-newest",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne", updated_at="2024-06-01T10:00:00Z"), ANN),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            rules={"first_name": ["newest", "crm"]},
            expect=Expect(
                base_after=ann(first_name="Anne"),
                actions=[
                    update(
                        SHEET,
                        {"first_name": ("Annie", "Anne")},
                        {"First Name": "Anne"},
                        {**SHEET_ANN, "First Name": "Anne"},
                    ),
                    update(
                        SHOP,
                        {"first_name": ("Ann", "Anne")},
                        {"first_name": "Anne"},
                        ann(first_name="Anne"),
                    ),
                ],
                links={CRM: kept(CRM, ann(first_name="Anne", updated_at="2024-06-01T10:00:00Z"))},
                conflicts=[conflict({CRM: "Anne", SHEET: "Annie"}, "Ann", CRM, CRM, ANNE_LABEL)],
            ),
        ),
        # the sheet gives no update time: newest cannot tell, the next rule decides
        id="newest-without-a-time-falls-through-to-the-next-rule",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne", last_name="Li"), ANN),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            rules={"first_name": ["manual", "crm"]},
            expect=Expect(
                base_after=ann(last_name="Li"),
                actions=[
                    update(
                        SHEET,
                        {"last_name": ("Lee", "Li")},
                        {"Last Name": "Li"},
                        {**SHEET_ANN, "First Name": "Annie", "Last Name": "Li"},
                    ),
                    update(
                        SHOP,
                        {"last_name": ("Lee", "Li")},
                        {"last_name": "Li"},
                        ann(last_name="Li"),
                    ),
                ],
                links={CRM: kept(CRM, ann(first_name="Anne", last_name="Li"))},
                conflicts=[
                    conflict(
                        {CRM: "Anne", SHEET: "Annie"},
                        "Ann",
                        None,
                        "manual",
                        "Anne Li <ann@example.com>",
                    )
                ],
            ),
        ),
        # manual comes before crm: parked. The base keeps Ann, nobody is written first_name;
        # the other field still propagates
        id="conflict-parked-by-manual",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne"), ANN),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ANN,
                links={
                    CRM: kept(CRM, ann(first_name="Anne")),
                    SHEET: kept(SHEET, ann(first_name="Annie")),
                },
                conflicts=[
                    conflict(
                        {CRM: "Anne", SHEET: "Annie"}, "Ann", None, "no rule decided", ANNE_LABEL
                    )
                ],
            ),
        ),
        id="conflict-no-rule-decided",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne", updated_at="2024-06-01T10:00:00Z"), ANN),
                unchanged(SHEET, ANN),
                changed(SHOP, ann(first_name="Annie", updated_at="2024-06-01T10:00:00Z"), ANN),
            ),
            rules={"first_name": ["newest"]},
            expect=Expect(
                base_after=ANN,
                links={
                    CRM: kept(CRM, ann(first_name="Anne", updated_at="2024-06-01T10:00:00Z")),
                    SHOP: kept(SHOP, ann(first_name="Annie", updated_at="2024-06-01T10:00:00Z")),
                },
                conflicts=[
                    conflict(
                        {CRM: "Anne", SHOP: "Annie"}, "Ann", None, "no rule decided", ANNE_LABEL
                    )
                ],
            ),
        ),
        id="newest-tie-no-rule-decided",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne", last_name="Li"), ANN),
                unchanged(SHEET, ANN),
                unchanged(SHOP, ANN),
            ),
            parked={"first_name": {CRM: "Anne", SHEET: "Annie"}},
            expect=Expect(
                base_after=ann(last_name="Li"),
                actions=[
                    update(
                        SHEET,
                        {"last_name": ("Lee", "Li")},
                        {"Last Name": "Li"},
                        {**SHEET_ANN, "Last Name": "Li"},
                    ),
                    update(
                        SHOP,
                        {"last_name": ("Lee", "Li")},
                        {"last_name": "Li"},
                        ann(last_name="Li"),
                    ),
                ],
                links={CRM: kept(CRM, ann(first_name="Anne", last_name="Li"))},
            ),
        ),
        id="parked-field-left-alone",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anna", last_name="Li"), ann(first_name="Anne")),
                unchanged(SHEET, ANN),
                unchanged(SHOP, ANN),
            ),
            parked={"first_name": {CRM: "Anne", SHEET: "Annie"}},
            expect=Expect(
                base_after=ann(last_name="Li"),
                actions=[
                    update(
                        SHEET,
                        {"last_name": ("Lee", "Li")},
                        {"Last Name": "Li"},
                        {**SHEET_ANN, "Last Name": "Li"},
                    ),
                    update(
                        SHOP,
                        {"last_name": ("Lee", "Li")},
                        {"last_name": "Li"},
                        ann(last_name="Li"),
                    ),
                ],
                links={CRM: kept(CRM, ann(first_name="Anna", last_name="Li"))},
                conflicts=[
                    conflict(
                        {CRM: "Anna", SHEET: "Annie"},
                        "Ann",
                        None,
                        RETOLD,
                        "Anna Li <ann@example.com>",
                    )
                ],
            ),
        ),
        id="parked-field-typed-over-shows-in-its-conflict",
    ),
]

# ------------------------------------------------------------------- echo suppression, dirty
# The sheet shows due_at as a date: written 09:00Z, it reads back as 00:00Z.

ECHO = [
    pytest.param(
        Row(
            entity="invoices",
            base=INV,
            views=(
                unchanged(CRM, INV, entity="invoices", native=INV_CRM_NATIVE),
                changed(
                    SHEET,
                    {**INV_SHEET, "amount": 15000},
                    INV_SHEET,
                    entity="invoices",
                    native={**INV_SHEET_NATIVE, "Amount": "150.00"},
                ),
                unchanged(SHOP, INV, entity="invoices", native=INV_SHOP_NATIVE),
            ),
            expect=Expect(
                base_after={**INV, "amount": 15000},
                actions=[
                    update(
                        CRM,
                        {"amount": (12500, 15000)},
                        {"amount": 15000},
                        {**INV_CRM_NATIVE, "amount": 15000},
                        entity="invoices",
                    ),
                    update(
                        SHOP,
                        {"amount": (12500, 15000)},
                        {"amount": 15000},
                        {**INV_SHOP_NATIVE, "amount": 15000},
                        entity="invoices",
                    ),
                ],
                links={SHEET: kept(SHEET, {**INV_SHEET, "amount": 15000})},
            ),
        ),
        # the sheet's due_at differs from the base but not from what it last showed
        id="echo-suppression-a-reformatted-value-is-no-change",
    ),
    pytest.param(
        Row(
            entity="invoices",
            base=INV,
            views=(
                unchanged(CRM, INV, entity="invoices", native=INV_CRM_NATIVE),
                unchanged(
                    SHEET,
                    {**INV_SHEET, "amount": 12000},
                    entity="invoices",
                    native={**INV_SHEET_NATIVE, "Amount": "120.00"},
                ),
                unchanged(SHOP, INV, entity="invoices", native=INV_SHOP_NATIVE),
            ),
            expect=Expect(base_after=INV),
        ),
        # last_seen says the sheet took 120.00: without dirty nothing is looked at again
        id="clean-view-only-changed-fields-checked",
    ),
    pytest.param(
        Row(
            entity="invoices",
            base=INV,
            views=(
                unchanged(CRM, INV, entity="invoices", native=INV_CRM_NATIVE),
                unchanged(
                    SHEET,
                    {**INV_SHEET, "amount": 12000},
                    entity="invoices",
                    native={**INV_SHEET_NATIVE, "Amount": "120.00"},
                    dirty=True,
                ),
                unchanged(SHOP, INV, entity="invoices", native=INV_SHOP_NATIVE),
            ),
            expect=Expect(
                base_after=INV,
                actions=[
                    update(
                        SHEET,
                        {"amount": (12000, 12500)},
                        {"Amount": "125.00"},
                        INV_SHEET_NATIVE,
                        entity="invoices",
                    )
                ],
            ),
        ),
        # a failed write: every field is checked; the date shows alike, so it is not written
        id="dirty-view-every-field-checked",
    ),
    pytest.param(
        Row(
            entity="invoices",
            base=INV,
            views=(
                unchanged(CRM, INV, entity="invoices", native=INV_CRM_NATIVE),
                new(SHEET, INV_SHEET, entity="invoices", native=INV_SHEET_NATIVE),
                unchanged(SHOP, INV, entity="invoices", native=INV_SHOP_NATIVE),
            ),
            expect=Expect(base_after=INV, links={SHEET: kept(SHEET, INV_SHEET)}),
        ),
        # never seen before: its date differs from the base only as the sheet shows dates
        id="newly-linked-record-reformatted-value-is-no-change",
    ),
]

# ---------------------------------------------------------------- new records, capabilities

NEW = [
    pytest.param(
        Row(
            base=None,
            new_key=True,
            views=(new(CRM, ann(company=None)), absent(SHEET), absent(SHOP)),
            cannot={SHOP: ("create",)},
            expect=Expect(
                base_after=ANN,
                actions=[Create("customers", SHEET, KEY, ANN, SHEET_ANN)],
                links={CRM: kept(CRM, ann(company=None))},
                skips=[skip(SHOP, "memory cannot create customers")],
                prior={CRM: kept(CRM, ann(company=None))},
            ),
        ),
        id="new-record-created-where-possible-skipped-where-not",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(unchanged(CRM, ANN), unchanged(SHEET, ANN), absent(SHOP)),
            expect=Expect(base_after=ANN, actions=[Create("customers", SHOP, KEY, ANN, ANN)]),
        ),
        id="existing-record-missing-on-a-member-created-there",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(unchanged(CRM, ANN), unchanged(SHEET, ANN), absent(SHOP)),
            cannot={SHOP: ("create",)},
            expect=Expect(base_after=ANN),
        ),
        # "cannot create" is said once, when the record first appears
        id="cannot-create-not-repeated-for-an-old-record",
    ),
    pytest.param(
        Row(
            base=None,
            new_key=True,
            views=(
                new(CRM, ann(first_name="Anne")),
                new(SHEET, ann(first_name="Annie")),
                absent(SHOP),
            ),
            expect=Expect(
                base_after={k: v for k, v in ANN.items() if k != "first_name"},
                actions=[
                    Create(
                        "customers",
                        SHOP,
                        KEY,
                        {k: v for k, v in ANN.items() if k != "first_name"},
                        {k: v for k, v in ANN.items() if k != "first_name"},
                    )
                ],
                links={
                    CRM: kept(CRM, ann(first_name="Anne")),
                    SHEET: kept(SHEET, ann(first_name="Annie")),
                },
                conflicts=[
                    conflict(
                        {CRM: "Anne", SHEET: "Annie"}, None, None, "no rule decided", ANNE_LABEL
                    )
                ],
                prior={
                    CRM: kept(CRM, ann(first_name="Anne")),
                    SHEET: kept(SHEET, ann(first_name="Annie")),
                },
            ),
        ),
        # a record new to the hub has no base value to keep: the field stays out of it
        id="new-on-two-members-unsettled-field-stays-out-of-the-base",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                unchanged(CRM, ANN),
                new(SHEET, ann(mobile_number=None, company="Acme")),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ann(company="Acme"),
                actions=[
                    update(
                        CRM, {"company": (None, "Acme")}, {"company": "Acme"}, ann(company="Acme")
                    ),
                    update(
                        SHEET,
                        {"mobile_number": (None, "+15551234567")},
                        {"Mobile": "(555) 123-4567"},
                        {**SHEET_ANN, "Company": "Acme"},
                    ),
                    update(
                        SHOP, {"company": (None, "Acme")}, {"company": "Acme"}, ann(company="Acme")
                    ),
                ],
            ),
        ),
        # never seen: its missing mobile is no change, its company is one the base lacks
        id="newly-linked-record-brings-only-values-the-base-lacks",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(unchanged(CRM, ANN), new(SHEET, ann(first_name="Annie")), unchanged(SHOP, ANN)),
            expect=Expect(
                base_after=ann(first_name="Annie"),
                actions=[
                    update(
                        CRM,
                        {"first_name": ("Ann", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie"),
                    ),
                    update(
                        SHOP,
                        {"first_name": ("Ann", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie"),
                    ),
                ],
                links={SHEET: kept(SHEET, ann(first_name="Annie"))},
            ),
        ),
        # newly linked but not joining (a record an interrupted run was writing to, found by
        # its values after a person edited it): its differing value is that person's edit
        id="newly-linked-record-not-joining-brings-its-edit",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                unchanged(CRM, ANN),
                new(SHEET, ann(first_name="Annie"), joined=True),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ANN,
                links={SHEET: kept(SHEET, ann(first_name="Annie"))},
                conflicts=[
                    conflict(
                        {CRM: "Ann", SHEET: "Annie", SHOP: "Ann"},
                        "Ann",
                        None,
                        "no rule decided",
                        ANN_LABEL,
                    )
                ],
            ),
        ),
        # a member newly linked (added to the pipeline, a row typed again) differs from what
        # the others hold: a disagreement, not an edit; without a rule it waits for a person
        id="newly-linked-record-differing-from-the-base-is-a-conflict",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                unchanged(CRM, ANN),
                new(SHEET, ann(first_name="Annie"), joined=True),
                unchanged(SHOP, ANN),
            ),
            rules={"first_name": [CRM]},
            expect=Expect(
                base_after=ANN,
                actions=[
                    update(
                        SHEET,
                        {"first_name": ("Annie", "Ann")},
                        {"First Name": "Ann"},
                        SHEET_ANN,
                    )
                ],
                conflicts=[
                    conflict({CRM: "Ann", SHEET: "Annie", SHOP: "Ann"}, "Ann", CRM, CRM, ANN_LABEL)
                ],
            ),
        ),
        # the rules decide it, as for two members' edits: here the linked members' value stays
        id="newly-linked-record-differing-from-the-base-follows-the-rules",
    ),
    pytest.param(
        Row(
            entity="invoices",
            base=INV,
            views=(
                new(
                    CRM,
                    {**INV, "due_at": "2024-05-02T09:00:00Z"},
                    entity="invoices",
                    native={**INV_CRM_NATIVE, "due_at": "2024-05-02T09:00:00Z"},
                    joined=True,
                ),
                unchanged(SHEET, INV_SHEET, entity="invoices", native=INV_SHEET_NATIVE),
                unchanged(SHOP, INV, entity="invoices", native=INV_SHOP_NATIVE),
            ),
            expect=Expect(
                base_after=INV,
                links={
                    CRM: kept(CRM, {**INV, "due_at": "2024-05-02T09:00:00Z"}),
                },
                conflicts=[
                    Conflict(
                        "invoices",
                        KEY,
                        "due_at",
                        {
                            CRM: "2024-05-02T09:00:00Z",
                            SHEET: "2024-05-01T09:00:00Z",
                            SHOP: "2024-05-01T09:00:00Z",
                        },
                        "2024-05-01T09:00:00Z",
                        None,
                        "no rule decided",
                        "invoice 1001",
                    )
                ],
            ),
        ),
        # the sheet shows the base's due date as a date (midnight): it holds the base's value
        # all the same, and is weighed beside the others against the newcomer's
        id="newly-linked-record-contested-by-a-member-holding-the-base-coarser",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                unchanged(CRM, ANN),
                new(SHEET, ANN, native_id="row-3", provisional=True),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ANN,
                actions=[update(SHEET, {}, {}, SHEET_ANN, native_id="row-3", assign_id=KEY)],
            ),
        ),
        id="provisional-record-gets-the-key-as-its-id",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                unchanged(CRM, ANN),
                new(SHEET, ann(mobile_number=None), native_id="row-3", provisional=True),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ANN,
                actions=[
                    update(
                        SHEET,
                        {"mobile_number": (None, "+15551234567")},
                        {"Mobile": "(555) 123-4567"},
                        SHEET_ANN,
                        native_id="row-3",
                        assign_id=KEY,
                    )
                ],
            ),
        ),
        id="provisional-record-completed-and-given-the-key",
    ),
    pytest.param(
        Row(
            base=None,
            new_key=True,
            views=(
                absent(CRM),
                new(SHEET, ANN, native_id="row-3", provisional=True),
                absent(SHOP),
            ),
            expect=Expect(
                base_after=ANN,
                actions=[
                    Create("customers", CRM, KEY, ANN, ANN),
                    update(SHEET, {}, {}, SHEET_ANN, native_id="row-3", assign_id=KEY),
                    Create("customers", SHOP, KEY, ANN, ANN),
                ],
            ),
        ),
        # a provisional id is no id: no prior link is kept for it
        id="provisional-record-new-to-the-hub-no-prior-link",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                changed(CRM, ann(first_name="Anne"), ANN),
                unchanged(SHEET, ANN),
                unchanged(SHOP, ANN),
            ),
            cannot={SHOP: ("update",)},
            expect=Expect(
                base_after=ann(first_name="Anne"),
                actions=[
                    update(
                        SHEET,
                        {"first_name": ("Ann", "Anne")},
                        {"First Name": "Anne"},
                        {**SHEET_ANN, "First Name": "Anne"},
                    )
                ],
                links={CRM: kept(CRM, ann(first_name="Anne")), SHOP: kept(SHOP, ANN)},
                skips=[skip(SHOP, "memory cannot update customers", ANNE_LABEL)],
            ),
        ),
        id="member-that-cannot-update-skipped",
    ),
    pytest.param(
        Row(
            base=ann(first_name="Anne"),
            views=(
                unchanged(CRM, ann(first_name="Anne")),
                unchanged(SHEET, ann(first_name="Anne")),
                unchanged(SHOP, ANN),
            ),
            cannot={SHOP: ("update",)},
            expect=Expect(
                base_after=ann(first_name="Anne"),
                links={SHOP: kept(SHOP, ANN)},
                skips=[skip(SHOP, "memory cannot update customers", ANNE_LABEL)],
            ),
        ),
        # checked in full every time it is looked at, so the skip stays listed
        id="cannot-update-reported-again-when-looked-at",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                view(CRM, "blocked", None, None),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(base_after=ANN),
        ),
        id="blocked-view-leaves-the-key-alone",
    ),
]

# ---------------------------------------------------------------------------------- deletes

DELETED_ANN = {**ANN, DELETED: True}

DELETES = [
    pytest.param(
        Row(
            base=ANN,
            views=(gone(CRM, ANN), unchanged(SHEET, ANN), unchanged(SHOP, ANN)),
            expect=Expect(
                base_after=DELETED_ANN,
                actions=[
                    Delete("customers", SHEET, KEY, "sheet-1", ANN),
                    Delete("customers", SHOP, KEY, "shop-1", ANN),
                ],
                links={CRM: removed(CRM)},
                purge=True,
            ),
        ),
        id="delete-propagated-and-purged",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(gone(CRM, ANN), unchanged(SHEET, ANN), unchanged(SHOP, ANN)),
            cannot={SHOP: ("delete",)},
            expect=Expect(
                base_after=DELETED_ANN,
                actions=[Delete("customers", SHEET, KEY, "sheet-1", ANN)],
                links={CRM: removed(CRM)},
                skips=[skip(SHOP, "memory cannot delete customers; it keeps this record")],
            ),
        ),
        id="delete-kept-by-a-member-that-cannot-delete-marked-not-purged",
    ),
    pytest.param(
        Row(
            base=DELETED_ANN,
            views=(absent(CRM), unchanged(SHEET, ANN), unchanged(SHOP, ANN)),
            cannot={SHOP: ("delete",)},
            expect=Expect(
                base_after=DELETED_ANN,
                actions=[Delete("customers", SHEET, KEY, "sheet-1", ANN)],
            ),
        ),
        # the next run: deleted again where it can be, the skip is not repeated, nothing
        # re-creates it on crm
        id="deleted-record-still-held-deleted-again-not-recreated",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(gone(CRM, ANN), gone(SHEET, ANN), absent(SHOP)),
            expect=Expect(base_after=None, links={CRM: removed(CRM), SHEET: removed(SHEET)}),
        ),
        id="gone-everywhere-hub-record-dropped",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(gone(CRM, ANN), unchanged(SHEET, ANN), unchanged(SHOP, ANN)),
            propagate_deletes=False,
            expect=Expect(
                base_after=ANN,
                links={CRM: LinkPlan(CRM, None, None, None, tombstone=True)},
            ),
        ),
        id="delete-not-propagated-tombstone",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                view(CRM, "tombstone"),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            propagate_deletes=False,
            expect=Expect(
                base_after=ann(first_name="Annie"),
                actions=[
                    update(
                        SHOP,
                        {"first_name": ("Ann", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie"),
                    )
                ],
                links={SHEET: kept(SHEET, ann(first_name="Annie"))},
            ),
        ),
        id="tombstoned-member-not-given-the-record-again",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                gone(CRM, ANN),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ann(first_name="Annie"),
                actions=[
                    Create("customers", CRM, KEY, ann(first_name="Annie"), ann(first_name="Annie")),
                    update(
                        SHOP,
                        {"first_name": ("Ann", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie"),
                    ),
                ],
                links={CRM: removed(CRM), SHEET: kept(SHEET, ann(first_name="Annie"))},
            ),
        ),
        id="delete-modify-conflict-the-data-wins",
    ),
    pytest.param(
        Row(
            base=DELETED_ANN,
            views=(
                absent(CRM),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            expect=Expect(
                base_after=ann(first_name="Annie"),
                actions=[
                    Create("customers", CRM, KEY, ann(first_name="Annie"), ann(first_name="Annie")),
                    update(
                        SHOP,
                        {"first_name": ("Ann", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie"),
                    ),
                ],
                links={SHEET: kept(SHEET, ann(first_name="Annie"))},
            ),
        ),
        id="change-to-a-deleted-record-brings-it-back",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(gone(CRM, ANN), unchanged(SHEET, ANN), unchanged(SHOP, ANN)),
            users={KEY: 2, "k2": 5},
            expect=Expect(
                base_after=ANN,
                skips=[
                    skip(
                        member,
                        "deleted on crm, but 2 record(s) of other entities still refer to it; "
                        "it is deleted once they are, or restored where it was deleted if "
                        "they stay",
                        kind="deferred",
                    )
                    for member in (SHEET, SHOP)
                ],
                waiting={CRM},
            ),
        ),
        id="delete-of-a-referred-record-waits",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(gone(CRM, ANN), unchanged(SHEET, ANN), unchanged(SHOP, ANN)),
            users={"k2": 5},
            expect=Expect(
                base_after=DELETED_ANN,
                actions=[
                    Delete("customers", SHEET, KEY, "sheet-1", ANN),
                    Delete("customers", SHOP, KEY, "shop-1", ANN),
                ],
                links={CRM: removed(CRM)},
                purge=True,
            ),
        ),
        id="delete-of-a-record-nothing-refers-to-goes-ahead",
    ),
    pytest.param(
        Row(
            base=ANN,
            views=(
                gone(CRM, ANN),
                changed(SHEET, ann(first_name="Annie"), ANN),
                unchanged(SHOP, ANN),
            ),
            users={KEY: 2},
            expect=Expect(
                base_after=ann(first_name="Annie"),
                actions=[
                    Create("customers", CRM, KEY, ann(first_name="Annie"), ann(first_name="Annie")),
                    update(
                        SHOP,
                        {"first_name": ("Ann", "Annie")},
                        {"first_name": "Annie"},
                        ann(first_name="Annie"),
                    ),
                ],
                links={CRM: removed(CRM), SHEET: kept(SHEET, ann(first_name="Annie"))},
            ),
        ),
        id="delete-modify-conflict-of-a-referred-record-the-data-wins",
    ),
]

# ------------------------------------------------------------------------------- references

CUST3_ON_SHEET = (
    "waits: its customer has no email or mobile_number, which sheet uses to refer to customers"
)

REFERENCES = [
    pytest.param(
        Row(
            entity="invoices",
            base=INV,
            views=(
                changed(
                    CRM,
                    {**INV, "customer": "cust-2"},
                    INV,
                    entity="invoices",
                    native={**INV_CRM_NATIVE, "customer": "c-202"},
                ),
                unchanged(SHEET, INV_SHEET, entity="invoices", native=INV_SHEET_NATIVE),
                unchanged(SHOP, INV, entity="invoices", native=INV_SHOP_NATIVE),
            ),
            expect=Expect(
                base_after={**INV, "customer": "cust-2"},
                actions=[
                    update(
                        SHEET,
                        {"customer": ("cust-1", "cust-2")},
                        {"Customer Email": "bob@example.com"},
                        {**INV_SHEET_NATIVE, "Customer Email": "bob@example.com"},
                        entity="invoices",
                    )
                ],
                links={
                    CRM: kept(CRM, {**INV, "customer": "cust-2"}),
                    SHOP: kept(SHOP, INV, dirty=True),
                },
                skips=[
                    skip(
                        SHOP,
                        "waits: its customer is not on shop yet",
                        "invoice 1001",
                        entity="invoices",
                        kind="deferred",
                    )
                ],
            ),
        ),
        id="reference-rendered-per-member-or-waits",
    ),
    pytest.param(
        Row(
            entity="invoices",
            base=INV,
            views=(
                unchanged(
                    CRM, INV, entity="invoices", native={**INV_CRM_NATIVE, "customer": "c-100"}
                ),
                unchanged(
                    SHEET,
                    INV_SHEET,
                    entity="invoices",
                    native={**INV_SHEET_NATIVE, "Customer Email": "old@example.com"},
                ),
                unchanged(SHOP, INV, entity="invoices", native=INV_SHOP_NATIVE),
            ),
            expect=Expect(
                base_after=INV,
                actions=[
                    update(
                        CRM,
                        {"customer": ("cust-1", "cust-1")},
                        {"customer": "c-101"},
                        INV_CRM_NATIVE,
                        entity="invoices",
                    ),
                    update(
                        SHEET,
                        {"customer": ("cust-1", "cust-1")},
                        {"Customer Email": "ann@example.com"},
                        INV_SHEET_NATIVE,
                        entity="invoices",
                    ),
                ],
            ),
        ),
        # crm re-created the customer under a new id, the customer's e-mail changed: both
        # rows still show the old form and are rewritten
        id="stale-reference-rewritten",
    ),
    pytest.param(
        Row(
            entity="invoices",
            base=None,
            new_key=True,
            views=(
                new(CRM, INV, entity="invoices", native=INV_CRM_NATIVE),
                absent(SHEET),
                absent(SHOP),
            ),
            expect=Expect(
                base_after=INV,
                actions=[
                    Create(
                        "invoices",
                        SHEET,
                        KEY,
                        INV,
                        INV_SHEET_NATIVE,
                    ),
                    Create("invoices", SHOP, KEY, INV, INV_SHOP_NATIVE),
                ],
                links={CRM: kept(CRM, INV)},
                prior={CRM: kept(CRM, INV)},
            ),
        ),
        id="new-record-created-with-each-members-reference",
    ),
    pytest.param(
        Row(
            entity="invoices",
            base=None,
            new_key=True,
            views=(
                new(
                    CRM,
                    {**INV, "customer": "cust-3"},
                    entity="invoices",
                    native={**INV_CRM_NATIVE, "customer": "c-303"},
                ),
                absent(SHEET),
                absent(SHOP),
            ),
            expect=Expect(
                base_after={**INV, "customer": "cust-3"},
                links={CRM: kept(CRM, {**INV, "customer": "cust-3"})},
                skips=[
                    skip(SHEET, CUST3_ON_SHEET, "invoice 1001", entity="invoices", kind="deferred"),
                    skip(
                        SHOP,
                        "waits: its customer is not on shop yet",
                        "invoice 1001",
                        entity="invoices",
                        kind="deferred",
                    ),
                ],
                prior={CRM: kept(CRM, {**INV, "customer": "cust-3"})},
            ),
        ),
        id="reference-not-renderable-yet-create-waits",
    ),
]


@pytest.mark.parametrize("row", [*MERGE, *ECHO, *NEW, *DELETES, *REFERENCES])
def test_reconcile(row: Row) -> None:
    views = {v.member: v for v in row.views}
    base_before, views_before = copy.deepcopy(row.base), copy.deepcopy(views)

    plan = reconcile(context(row), KEY, row.base, views, new_key=row.new_key)

    assert Expect.of(plan) == row.expect
    assert (plan.entity, plan.key, plan.new_key) == (row.entity, KEY, row.new_key)
    assert plan.base_before == row.base
    # a pure function: its arguments are left as they were
    assert (row.base, views) == (base_before, views_before)


def test_each_row_is_named_once() -> None:
    ids = [p.id for p in (*MERGE, *ECHO, *NEW, *DELETES, *REFERENCES)]
    assert len(ids) == len(set(ids))


def test_a_record_new_on_one_member_is_planned_without_copies_of_it() -> None:
    """A first sync plans every record this way, and its plan is the run's peak memory: the
    base is the member's record itself, and its link one object for what it held before
    and after; a record whose members differ still gets a base of its own."""
    row = Row(None, (new(CRM, ANN), absent(SHEET), absent(SHOP)), Expect(None), new_key=True)
    views = {v.member: v for v in row.views}

    plan = reconcile(context(row), KEY, None, views, new_key=True)

    assert plan.base_after == ANN and plan.base_after is views[CRM].current
    assert plan.links[CRM] is plan.prior[CRM]
    assert [a.member for a in plan.actions] == [SHEET, SHOP]
    # one dict for the links it had and keeps, and the one shared empty list for the
    # conflicts and skips it has none of
    assert plan.links is plan.prior
    assert plan.conflicts is NOTHING and plan.skips is NOTHING

    both = {CRM: new(CRM, ANN), SHOP: new(SHOP, ann(first_name="Anne")), SHEET: absent(SHEET)}
    merged = reconcile(context(row), KEY, None, both, new_key=True)

    assert merged.base_after is not None
    assert all(merged.base_after is not v.current for v in both.values())


def test_the_shared_empty_list_of_settled_plans_takes_nothing() -> None:
    """Plans without conflicts or skips share one empty list: it refuses every way of adding
    to it, so that no plan's conflict or skip can appear in every other plan."""
    row = Row(None, (new(CRM, ANN), absent(SHEET), absent(SHOP)), Expect(None), new_key=True)
    views = {v.member: v for v in row.views}
    first = reconcile(context(row), KEY, None, views, new_key=True)
    second = reconcile(context(row), "other", None, views, new_key=True)
    assert first.conflicts is second.conflicts is first.skips is NOTHING
    adds = [
        lambda: NOTHING.append(1),
        lambda: NOTHING.extend([1]),
        lambda: NOTHING.insert(0, 1),
        lambda: NOTHING.__setitem__(slice(0, 0), [1]),
        lambda: NOTHING.__iadd__([1]),
    ]
    for add in adds:
        with pytest.raises(TypeError, match="takes no items"):
            add()
    assert NOTHING == [] and second.skips == []


def test_a_plan_with_a_conflict_keeps_its_own_list() -> None:
    row = next(p.values[0] for p in MERGE if p.values[0].expect.conflicts)
    views = {v.member: v for v in row.views}
    plan = reconcile(context(row), KEY, row.base, views, new_key=row.new_key)
    assert plan.conflicts == row.expect.conflicts and plan.conflicts is not NOTHING
    assert NOTHING == []


# ------------------------------------------------------- a sheet's date, back to the hub's


def test_a_date_typed_back_to_the_hubs_day_is_no_change() -> None:
    # the sheet last saw another day (a sort); its row is back to the invoice's day, which is
    # the hub's time as the sheet shows it: nothing changed anywhere, nothing is written
    elsewhere = {**INV_SHEET, "due_at": "2024-05-09T00:00:00Z"}
    views = {
        CRM: unchanged(CRM, INV, entity="invoices"),
        SHEET: changed(SHEET, INV_SHEET, elsewhere, entity="invoices"),
        SHOP: unchanged(SHOP, INV, entity="invoices"),
    }
    plan = reconcile(context(Row(INV, (), Expect(None), entity="invoices")), KEY, INV, views)
    assert plan.base_after == INV
    assert not [a for a in plan.actions if "due_at" in getattr(a, "changes", {})]
    assert not plan.conflicts


def test_a_date_typed_to_the_day_another_member_holds_takes_that_members_time() -> None:
    # the hub holds the 1st; the shop moved it to the 3rd at 15:00 and the sheet's row says
    # the 3rd: the sheet's change is the shop's time, so the hub takes 15:00 and nothing is
    # written back to the shop
    base = INV
    shop_now = {**INV, "due_at": "2024-05-03T15:00:00Z"}
    views = {
        CRM: unchanged(CRM, INV, entity="invoices"),
        SHEET: changed(
            SHEET, {**INV_SHEET, "due_at": "2024-05-03T00:00:00Z"}, INV_SHEET, entity="invoices"
        ),
        SHOP: changed(SHOP, shop_now, INV, entity="invoices"),
    }
    plan = reconcile(context(Row(base, (), Expect(None), entity="invoices")), KEY, base, views)
    assert plan.base_after is not None
    assert plan.base_after["due_at"] == "2024-05-03T15:00:00Z"
    # the crm gets the shop's time; nothing of it is written back to the shop
    written = {a.member for a in plan.actions if "due_at" in getattr(a, "changes", {})}
    assert written == {CRM}
    assert not plan.conflicts


def test_the_sheets_day_does_not_take_a_time_that_depends_on_the_order_of_the_members() -> None:
    # two members hold two times of the sheet's day: which one the sheet means cannot be told,
    # so its own value is its change, whatever order the members come in (a cold review)
    def plan(order: tuple[str, ...]) -> Any:
        views = {
            CRM: changed(CRM, {**INV, "due_at": "2024-05-03T09:00:00Z"}, INV, entity="invoices"),
            SHOP: changed(SHOP, {**INV, "due_at": "2024-05-03T15:00:00Z"}, INV, entity="invoices"),
            SHEET: changed(
                SHEET, {**INV_SHEET, "due_at": "2024-05-03T00:00:00Z"}, INV_SHEET, entity="invoices"
            ),
        }
        row = Row(INV, (), Expect(None), entity="invoices", rules={"due_at": [SHEET]})
        return reconcile(context(row), KEY, INV, {m: views[m] for m in order})

    first, second = plan((CRM, SHOP, SHEET)), plan((SHOP, CRM, SHEET))
    assert first.base_after == second.base_after
    assert first.base_after is not None
    assert first.base_after["due_at"] == "2024-05-03T00:00:00Z"
