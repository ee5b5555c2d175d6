"""``match()`` on its own: one table row per way a new record finds (or does not find) the hub
record it belongs to.

A row gives the hub records (key, base, members holding a live link), the records new on each
member this run, and the whole result: which keys the new records are grouped under, which
keys are new, and which records are reported as ambiguous with what explanation. New keys come
from a counter (``new-1``, ``new-2``, ...) so that rows can name them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncengine.connector import NativeRecord
from syncengine.match import MatchResult, Observed, hold_blind, match
from syncengine.member import Member
from syncengine.model import Record
from syncengine.read import MemberRead, member_views
from syncengine.state.store import LinkState, RecordState

CRM, SHEET, SHOP = "crm", "sheet", "shop"
MEMBERS = (CRM, SHEET, SHOP)
CUSTOMER_KEYS = ("email", "mobile_number")

ANN_EMAIL = "ann@example.com"
ANN_MOBILE = "+15551234567"
ANN: Record = {"first_name": "Ann", "email": ANN_EMAIL, "mobile_number": ANN_MOBILE}

SEVERAL = (
    "email 'ann@example.com' matches 2 records already linked elsewhere; give them distinct "
    "values or link by hand"
)
SEVERAL_ONE_NEW = (
    "email 'ann@example.com' matches 2 records on other members (1 already linked elsewhere, 1 "
    "new in this read); give them distinct values or link by hand"
)
ALIKE = (
    "email 'bob@example.com' is also on a record new on crm before it in this read (a copied "
    "row, or one typed twice?): a possible duplicate, not synced (delete the copy, or give "
    "this one a distinct value)"
)
DUPLICATE_ON_SHEET = (
    "email 'ann@example.com' is already used by another record on sheet that is linked to "
    "the other members: a possible duplicate, not synced (delete one of the two, give this "
    "one a distinct value, or decide with `syncengine review link` or `separate`)"
)
HELD_BACK = "held back: another record matches it ambiguously (see the other error for this value)"

Hub = tuple[str, Record, frozenset[str]]


def hub(key: str, base: Record, *linked: str) -> Hub:
    return (key, base, frozenset(linked))


def record(member: str, native_id: str, canonical: Record, order: int = 0) -> Observed:
    return Observed(
        member=member,
        record=NativeRecord(id=native_id, data=dict(canonical)),
        canonical=canonical,
        native_hash=f"h-{native_id}",
        order=order,
    )


@dataclass
class Expect:
    groups: dict[str, dict[str, str]] = field(default_factory=dict)
    """key -> member -> native id of the new record linked to it."""
    new_keys: set[str] = field(default_factory=set)
    ambiguous: list[tuple[str, str, str]] = field(default_factory=list)
    """(member, native id, explanation), in the order reported."""

    @classmethod
    def of(cls, result: MatchResult) -> Expect:
        return cls(
            groups={
                key: {member: obs.record.id for member, obs in group.items()}
                for key, group in result.groups.items()
            },
            new_keys=set(result.new_keys),
            ambiguous=[(obs.member, obs.record.id, why) for obs, why in result.ambiguous],
        )


@dataclass(frozen=True)
class Row:
    new: tuple[Observed, ...]
    expect: Expect
    existing: tuple[Hub, ...] = ()
    match_keys: tuple[str, ...] = CUSTOMER_KEYS
    hints: Mapping[tuple[str, str], str] = field(default_factory=dict)


ROWS = [
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM, SHOP),),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL, "mobile_number": None}),),
            expect=Expect(groups={"k1": {SHEET: "s1"}}),
        ),
        id="matched-by-email",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM, SHOP),),
            new=(record(SHEET, "s1", {"email": None, "mobile_number": ANN_MOBILE}),),
            expect=Expect(groups={"k1": {SHEET: "s1"}}),
        ),
        id="matched-by-mobile-when-email-is-missing",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM, SHOP),),
            new=(record(SHEET, "s1", {"email": "ann@work.example", "mobile_number": ANN_MOBILE}),),
            expect=Expect(groups={"k1": {SHEET: "s1"}}),
        ),
        id="matched-by-mobile-when-email-matches-nothing",
    ),
    pytest.param(
        Row(
            existing=(
                hub("k1", ANN, CRM),
                hub("k2", {"email": ANN_EMAIL, "mobile_number": "+15559876543"}, CRM),
            ),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL, "mobile_number": ANN_MOBILE}),),
            expect=Expect(ambiguous=[(SHEET, "s1", SEVERAL)]),
        ),
        # the mobile would single out k1, but an ambiguous e-mail is never guessed past
        id="two-hub-records-with-the-email-ambiguous-not-linked",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM), hub("k2", ANN, SHOP)),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL, "mobile_number": ANN_MOBILE}),),
            expect=Expect(ambiguous=[(SHEET, "s1", SEVERAL)]),
        ),
        # reported by the first match key that is ambiguous
        id="ambiguous-by-every-match-key-reported-once",
    ),
    pytest.param(
        Row(
            new=(
                record(CRM, "c1", {"email": "bob@example.com", "mobile_number": None}),
                record(SHEET, "s1", {"email": "bob@example.com", "mobile_number": ANN_MOBILE}),
            ),
            expect=Expect(groups={"new-1": {CRM: "c1", SHEET: "s1"}}, new_keys={"new-1"}),
        ),
        id="new-on-two-members-matching-each-other-one-new-key",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM, SHEET),),
            new=(
                record(CRM, "c1", {"email": "bob@example.com"}),
                record(CRM, "c2", {"email": "cat@example.com"}),
            ),
            expect=Expect(
                groups={"new-1": {CRM: "c1"}, "new-2": {CRM: "c2"}},
                new_keys={"new-1", "new-2"},
            ),
        ),
        id="no-match-a-new-key-each",
    ),
    pytest.param(
        Row(
            new=(
                record(CRM, "c1", {"email": "bob@example.com"}),
                record(CRM, "c2", {"email": "bob@example.com"}),
            ),
            expect=Expect(
                groups={"new-1": {CRM: "c1"}},
                new_keys={"new-1"},
                ambiguous=[(CRM, "c2", ALIKE)],
            ),
        ),
        # a member's own two records are never one record, and two new ones with one match
        # key would be two records with that key on every other member: the second is a
        # possible duplicate, not synced
        id="same-email-twice-on-one-member-the-second-is-a-possible-duplicate",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM, SHEET),),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL}),),
            expect=Expect(ambiguous=[(SHEET, "s1", DUPLICATE_ON_SHEET)]),
        ),
        id="member-already-linked-to-the-candidate-possible-duplicate",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, SHEET),),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL}),),
            expect=Expect(groups={"new-1": {SHEET: "s1"}}, new_keys={"new-1"}),
        ),
        # k1 is the member's own record and nobody else's: s1 is another record
        id="member-alone-linked-to-the-candidate-a-new-key",
    ),
    pytest.param(
        Row(
            existing=(
                hub("k1", ANN, CRM),
                hub("k2", {"email": "ann@work.example"}, CRM),
            ),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL, "mobile_number": ANN_MOBILE}),),
            hints={(SHEET, "h-s1"): "k2"},
            expect=Expect(groups={"k2": {SHEET: "s1"}}),
        ),
        id="recovery-hint-wins-over-match-keys",
    ),
    pytest.param(
        Row(
            existing=(
                hub("k1", ANN, CRM),
                hub("k2", {"email": "ann@work.example"}, CRM, SHEET),
            ),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL}),),
            hints={(SHEET, "h-s1"): "k2"},
            expect=Expect(groups={"k1": {SHEET: "s1"}}),
        ),
        id="hint-to-a-key-the-member-holds-ignored",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM),),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL}),),
            hints={(SHEET, "h-s1"): "k9"},
            expect=Expect(groups={"k1": {SHEET: "s1"}}),
        ),
        id="hint-to-a-key-not-in-the-hub-ignored",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM),),
            new=(record(SHEET, "s1", {"email": ANN_EMAIL}),),
            hints={(SHEET, "h-other"): "k9"},
            expect=Expect(groups={"k1": {SHEET: "s1"}}),
        ),
        id="hint-for-another-record-ignored",
    ),
    pytest.param(
        Row(
            existing=(hub("k0", {"first_name": "Zed", "email": "", "mobile_number": None}, SHOP),),
            new=(
                record(CRM, "c1", {"first_name": "Dan", "email": None, "mobile_number": ""}),
                record(SHEET, "s1", {"first_name": "Eve"}),
            ),
            expect=Expect(
                groups={"new-1": {CRM: "c1"}, "new-2": {SHEET: "s1"}},
                new_keys={"new-1", "new-2"},
            ),
        ),
        id="no-match-key-values-new-and-not-grouped",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", {"email": None, "mobile_number": ANN_MOBILE}, CRM),),
            new=(
                record(SHEET, "s1", {"email": ANN_EMAIL, "mobile_number": ANN_MOBILE}),
                record(SHOP, "t1", {"email": ANN_EMAIL, "mobile_number": None}),
            ),
            expect=Expect(groups={"k1": {SHEET: "s1", SHOP: "t1"}}),
        ),
        # shop's record shares only the e-mail, which the hub learns from the sheet's record
        id="third-member-matched-through-a-value-of-a-matched-record",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM),),
            new=(
                record(CRM, "c1", {"email": ANN_EMAIL}),
                record(SHEET, "s1", {"email": ANN_EMAIL}),
            ),
            expect=Expect(ambiguous=[(SHEET, "s1", SEVERAL_ONE_NEW), (CRM, "c1", HELD_BACK)]),
        ),
        # c1 is crm's second Ann (a new key); s1 could be either: neither is synced
        id="new-key-contested-by-an-ambiguous-record-held-back",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", ANN, CRM),),
            new=(
                record(SHEET, "s1", {"email": ANN_EMAIL}),
                record(SHOP, "t1", {"email": ANN_EMAIL}),
            ),
            match_keys=(),
            expect=Expect(
                groups={"new-1": {SHEET: "s1"}, "new-2": {SHOP: "t1"}},
                new_keys={"new-1", "new-2"},
            ),
        ),
        id="no-match-keys-every-record-new",
    ),
    pytest.param(
        Row(
            existing=(hub("k1", {"invoice_number": "1001", "email": ANN_EMAIL}, CRM),),
            new=(
                record(SHEET, "s1", {"invoice_number": "1001"}),
                record(SHOP, "t1", {"invoice_number": "1002", "email": ANN_EMAIL}),
            ),
            match_keys=("invoice_number",),
            expect=Expect(groups={"k1": {SHEET: "s1"}, "new-1": {SHOP: "t1"}}, new_keys={"new-1"}),
        ),
        id="only-the-given-match-keys-count",
    ),
]


@pytest.mark.parametrize("row", ROWS)
def test_match(row: Row) -> None:
    counter = itertools.count(1)
    new_records: dict[str, list[Observed]] = {}
    for obs in row.new:
        new_records.setdefault(obs.member, []).append(obs)

    result = match(
        MEMBERS,
        new_records,
        iter(row.existing),
        row.match_keys,
        hints=row.hints,
        make_key=lambda: f"new-{next(counter)}",
    )

    assert Expect.of(result) == row.expect
    # what is grouped or reported is the very record given, not a copy
    given = {id(obs) for obs in row.new}
    assert all(id(obs) in given for group in result.groups.values() for obs in group.values())
    assert all(id(obs) in given for obs, _ in result.ambiguous)


def test_members_are_matched_in_pipeline_order() -> None:
    """The first member in the pipeline's order founds the new key, whatever order the new
    records come in."""
    sheet = record(SHEET, "s1", {"email": "bob@example.com"})
    crm = record(CRM, "c1", {"email": "bob@example.com"})
    keys = iter(["first", "second"])

    result = match(
        (CRM, SHEET),
        {SHEET: [sheet], CRM: [crm]},
        [],
        CUSTOMER_KEYS,
        hints=None,
        make_key=lambda: next(keys),
    )

    assert result.groups == {"first": {CRM: crm, SHEET: sheet}}
    assert list(result.groups["first"]) == [CRM, SHEET]
    assert result.new_keys == {"first"}
    assert result.ambiguous == []


def test_records_of_members_outside_the_pipeline_are_left_out() -> None:
    stray = record(SHOP, "t1", {"email": ANN_EMAIL})

    result = match((CRM, SHEET), {SHOP: [stray]}, [hub("k1", ANN, CRM)], CUSTOMER_KEYS, hints={})

    assert (result.groups, result.new_keys, result.ambiguous) == ({}, set(), [])


def test_a_record_matched_by_its_values_to_a_hub_record_joins_it() -> None:
    """Found by its e-mail among hub records the other members hold, or linked to one by a
    person's decision: joining (its differing values are a disagreement for the rules,
    ``reconcile``: the person said the two are one, not whose values are right). Grouped
    with another new record, or given by a recovery hint: not joining."""
    joining = record(SHEET, "s1", {"email": ANN_EMAIL})
    founding = record(CRM, "c2", {"email": "bob@example.com"})
    paired = record(SHEET, "s2", {"email": "bob@example.com"})
    hinted = record(SHEET, "s3", {"email": "cy@example.com"})
    decided = record(SHEET, "s4", {"email": "dee@example.com"})

    result = match(
        (CRM, SHEET),
        {CRM: [founding], SHEET: [joining, paired, hinted, decided]},
        [hub("k1", ANN, CRM), hub("k3", {"email": "cy@example.com"}, CRM), hub("k4", {}, CRM)],
        CUSTOMER_KEYS,
        hints={(SHEET, "h-s3"): "k3"},
        make_key=lambda: "new-1",
        decided=lambda obs: ("link", "k4") if obs is decided else None,
    )

    assert result.groups["k1"] == {SHEET: joining}
    assert result.groups["new-1"] == {CRM: founding, SHEET: paired}
    assert result.groups["k3"] == {SHEET: hinted}
    assert result.groups["k4"] == {SHEET: decided}
    assert [o.joined for o in (joining, founding, paired, hinted, decided)] == [
        True,
        False,
        False,
        False,
        True,
    ]


# ------------------------------------------------- a sheet lacking a match key's column


def _counter() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new-{next(counter)}"


def _held(new_records: Mapping[str, list[Observed]], *hinted: str) -> dict[str, list[str]]:
    """Match, then hold what the sheet (lacking its Mobile column) cannot vouch for: member
    -> the native ids that wait; the rest stays in the result."""
    result = match(MEMBERS, new_records, [], CUSTOMER_KEYS, make_key=_counter())
    blind = hold_blind(
        result,
        {SHEET: frozenset({"mobile_number"})},
        CUSTOMER_KEYS,
        lambda obs: obs.record.id in hinted,
    )
    assert set(blind.lacking) <= {SHEET}
    assert bool(blind.held) == bool(blind.lacking)
    kept = {o.record.id for g in result.groups.values() for o in g.values()}
    held = {o.record.id for obs in blind.held.values() for o in obs}
    assert not kept & held
    return {m: sorted(o.record.id for o in obs) for m, obs in blind.held.items()}


def test_what_a_sheet_without_its_mobile_column_cannot_vouch_for_waits() -> None:
    """Dee's row paired with nothing, and Eve, new in the CRM, holds a mobile: Dee may hold
    Eve's mobile in the column that is gone. Both wait. Ann (paired by e-mail) and Bob (no
    mobile, so no pairing through the column) go on."""
    ann_sheet = record(SHEET, "s1", {"email": ANN_EMAIL})
    ann_crm = record(CRM, "c1", {"email": ANN_EMAIL, "mobile_number": ANN_MOBILE})
    dee = record(SHEET, "s2", {"first_name": "Dee"})
    eve = record(CRM, "c2", {"first_name": "Eve", "mobile_number": "+15550000002"})
    bob = record(CRM, "c3", {"first_name": "Bob", "email": "bob@example.com"})
    assert _held({SHEET: [ann_sheet, dee], CRM: [ann_crm, eve, bob]}) == {
        SHEET: ["s2"],
        CRM: ["c2"],
    }


def test_a_row_showing_another_key_may_still_pair_through_the_missing_column() -> None:
    """Dee's row shows an e-mail the CRM's Dee lacks, and the CRM's Dee a mobile: with the
    column there, the two may have paired by mobile; both wait."""
    dee_sheet = record(SHEET, "s1", {"first_name": "Dee", "email": "dee@example.com"})
    dee_crm = record(CRM, "c1", {"first_name": "Dee", "mobile_number": "+15550000002"})
    assert _held({SHEET: [dee_sheet], CRM: [dee_crm]}) == {SHEET: ["s1"], CRM: ["c1"]}


def test_nothing_waits_where_nothing_could_pair_through_the_missing_column() -> None:
    ann_sheet = record(SHEET, "s1", {"email": ANN_EMAIL})
    ann_crm = record(CRM, "c1", {"email": ANN_EMAIL, "mobile_number": ANN_MOBILE})
    dee = record(SHEET, "s2", {"first_name": "Dee"})
    bob = record(CRM, "c2", {"email": "bob@example.com"})
    cy = record(CRM, "c3", {"mobile_number": "+15550000003"})
    assert _held({SHEET: [ann_sheet, dee], CRM: [ann_crm, bob]}) == {}  # no mobile elsewhere
    assert _held({SHEET: [ann_sheet], CRM: [ann_crm, cy]}) == {}  # every row paired
    assert _held({CRM: [cy]}) == {}  # nothing new on the sheet


def test_a_record_an_earlier_run_paired_goes_on_while_others_wait() -> None:
    dee = record(SHEET, "s1", {"first_name": "Dee"})
    eve = record(CRM, "c1", {"mobile_number": "+15550000002"})
    fay = record(CRM, "c2", {"mobile_number": "+15550000003"})
    assert _held({SHEET: [dee], CRM: [eve, fay]}, "c1") == {SHEET: ["s1"], CRM: ["c2"]}


@pytest.mark.parametrize(
    ("link", "joining"),
    [
        (None, True),
        (LinkState(SHEET, "row-1", "h-row-1", ANN, dirty=False, tombstone=True), True),
        (LinkState(SHEET, None, None, None, dirty=True, tombstone=False), False),
    ],
    ids=["no-link", "deleted-there", "a-link-waiting-for-its-id"],
)
def test_a_joining_record_is_one_its_member_holds_no_live_link_for(
    link: LinkState | None, joining: bool
) -> None:
    """A record matched by its values joins the hub record unless its member still has a
    live link for it (a row not given its Sync ID yet: the record that link stands for); one
    typed in again after its record there was deleted (a tombstone) joins."""
    obs = record(SHEET, "row-2", ANN)
    obs.joined = True
    links = {CRM: LinkState(CRM, "c1", "h-c1", ANN, dirty=False, tombstone=False)}
    if link is not None:
        links[SHEET] = link
    state = RecordState("k1", dict(ANN), links)
    reads = {CRM: MemberRead(), SHEET: MemberRead()}
    members = cast(list[Member], [SimpleNamespace(name=CRM), SimpleNamespace(name=SHEET)])

    views = member_views("k1", state, reads, {SHEET: obs}, members)

    assert views[SHEET].status == "new"
    assert views[SHEET].joined is joining


def test_a_group_of_one_reads_as_a_dict_and_becomes_one_when_a_second_record_joins() -> None:
    """A first sync's groups are mostly of one record: kept as an ``_Alone``, not a dict."""
    from syncengine.match import _Alone, _attach, _Holders

    result = MatchResult()
    holders = _Holders()
    a = Observed("hcp", NativeRecord("1", {}), {"email": "x@y.com"}, "h1")
    b = Observed("books", NativeRecord("2", {}), {"email": "x@y.com"}, "h2")
    _attach(result, holders, "k", a)
    group = result.groups["k"]
    assert isinstance(group, _Alone) and len(group) == 1
    assert group == {"hcp": a} and dict(group) == {"hcp": a} and list(group.values()) == [a]
    assert "books" not in group and group.get("books") is None
    with pytest.raises(KeyError):
        group["books"]
    _attach(result, holders, "k", b)
    assert type(result.groups["k"]) is dict and result.groups["k"] == {"hcp": a, "books": b}
    assert holders.of == {"k": frozenset({"hcp", "books"})}


def test_records_held_by_the_same_members_share_one_set_of_them() -> None:
    """A first sync attaches every record it read to a key of its own: the members holding
    each key are one shared set per distinct combination, not a set per key."""
    from syncengine.match import _attach, _Holders

    result = MatchResult()
    holders = _Holders()
    for i in range(50):
        _attach(result, holders, f"k{i}", Observed("hcp", NativeRecord(str(i), {}), {}, f"h{i}"))
    holders.hold("both", ("hcp", "books"))
    holders.add("k0", "books")
    assert holders.of["k0"] == {"hcp", "books"} and holders.of["k0"] is holders.of["both"]
    assert len({id(held) for key, held in holders.of.items() if key not in ("k0", "both")}) == 1
    holders.discard("k0", "books")
    assert holders.of["k0"] is holders.of["k1"] and holders.get("k0") == {"hcp"}
    assert holders.get("nowhere") == frozenset() and "nowhere" not in holders


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "get"]),
            st.sampled_from(["email", "mobile_number"]),
            st.sampled_from(["a@x.com", "b@x.com", "+15550100", 7]),
            st.sampled_from(["k1", "k2", "k3"]),
        ),
        max_size=40,
    )
)
def test_keys_by_value_answers_as_a_dict_of_lists_would(
    steps: list[tuple[str, str, object, str]],
) -> None:
    """``_KeysByValue`` keeps one key as itself and several as a list: what it answers, and
    whether an add was new, are what a plain dict of ``(name, value)`` -> list of keys gives,
    over any sequence of adds, removals and lookups."""
    from syncengine.match import _KeysByValue

    index = _KeysByValue()
    model: dict[tuple[str, object], list[str]] = {}
    for op, name, value, key in steps:
        keys = model.setdefault((name, value), [])
        if op == "add":
            assert index.add(name, value, key) == (key not in keys)
            if key not in keys:
                keys.append(key)
        elif op == "remove":
            index.remove(name, value, key)
            if key in keys:
                keys.remove(key)
        got = index.get(name, value)
        assert got == keys
        got.append("changed by the caller")  # a copy: the index does not change
        assert index.get(name, value) == keys
