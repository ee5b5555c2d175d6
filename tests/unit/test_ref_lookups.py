"""Planning records that show a reference by value reads only the records they refer to, and
finding the records that show a changed one reads only those.

Member "a" shows an invoice's customer by e-mail (``ref_by``); member "b" by its own ids.
A run that plans a few invoices looks up how a shows those invoices' customers, not every
customer in the state store (``References.back_index``), and shows them exactly as the whole
index would. Memory members, a real SQLite state file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine import refs as refs_module
from syncengine.config import Config, load_config
from syncengine.refs import References
from syncengine.state import StateStore
from tests.helpers import ds, memory_config, ops, run

C, INV = "customers", "invoices"
CUSTOMERS = 40


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    (tmp_path / "a-invoices.toml").write_text(
        '[fields]\ninvoice_number = "invoice_number"\n'
        'customer = { native = "customer_email", ref_by = ["email", "mobile_number"] }\n'
        'amount = "amount"\nstatus = "status"\n',
        encoding="utf-8",
    )
    config = memory_config(
        tmp_path,
        {"b": {"entities": [C, INV]}, "a": {"entities": [C, INV]}},
        entities=(C, INV),
    )
    text = config.path.read_text() + '\n[pipelines.mappings.a]\ninvoices = "a-invoices.toml"\n'
    config.path.write_text(text)
    return load_config(config.path)


class BaseReads:
    """Every read of records' bases the run makes, by entity: whole entities
    (``iter_bases``) and looked-up keys (``load_bases``). A spy: the reads still happen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.whole: list[str] = []
        self.keys: dict[str, list[str]] = {}
        iter_bases, load_bases = StateStore.iter_bases, StateStore.load_bases
        reads = self

        def spy_iter(
            store: StateStore, pipeline: str, entity: str, batch: int = 5000
        ) -> Iterator[tuple[str, dict[str, Any]]]:
            reads.whole.append(entity)
            return iter_bases(store, pipeline, entity, batch)

        def spy_load(
            store: StateStore, pipeline: str, entity: str, keys: Any
        ) -> dict[str, dict[str, Any]]:
            keys = list(keys)
            reads.keys.setdefault(entity, []).extend(keys)
            return load_bases(store, pipeline, entity, keys)

        monkeypatch.setattr(StateStore, "iter_bases", spy_iter)
        monkeypatch.setattr(StateStore, "load_bases", spy_load)


def _seed() -> None:
    b = ds("b")
    for n in range(CUSTOMERS):
        b.put(C, f"c{n}", {"first_name": f"N{n}", "email": f"n{n}@x.com"})
        b.put(
            INV,
            f"i{n}",
            {"invoice_number": str(1000 + n), "customer": f"c{n}", "amount": n, "status": "open"},
        )


def _shown_on_a() -> dict[str, str]:
    return {r["invoice_number"]: r["customer_email"] for r in ds("a").table(INV).values()}


def test_a_few_invoices_are_planned_from_their_own_customers(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed()
    run(cfg)
    assert _shown_on_a() == {str(1000 + n): f"n{n}@x.com" for n in range(CUSTOMERS)}
    assert run(cfg).plan.actions == []

    # one customer's e-mail changes (a's invoice row must show the new one), another gets a
    # new invoice, and one invoice moves to a third customer
    b = ds("b")
    b.edit(C, "c3", email="ann@new.example")
    b.put(INV, "i-new", {"invoice_number": "2000", "customer": "c7", "amount": 5, "status": "open"})
    b.edit(INV, "i9", customer="c11")
    reads = BaseReads(monkeypatch)
    dry = run(cfg, dry_run=True)
    # c3's new e-mail comes from the dry run's plan of the customers, the rest from the store
    assert reads.whole == [] and sorted(set(reads.keys[C])) == sorted(
        {_key(cfg, "c7"), _key(cfg, "c9"), _key(cfg, "c11")}
    )
    creates = [a for a in dry.plan.actions if a.op == "create" and a.entity == INV]
    assert [a.native["customer_email"] for a in creates] == ["n7@x.com"]
    reads = BaseReads(monkeypatch)
    result = run(cfg)
    assert ("create", "a") in ops(result) and ("update", "a") in ops(result)
    assert reads.whole == [] and len(set(reads.keys[C])) <= 4, reads.keys
    shown = _shown_on_a()
    assert shown["1003"] == "ann@new.example"
    assert shown["2000"] == "n7@x.com"
    assert shown["1009"] == "n11@x.com"
    assert {k: v for k, v in shown.items() if k not in ("1003", "2000", "1009")} == {
        str(1000 + n): f"n{n}@x.com" for n in range(CUSTOMERS) if n not in (3, 9)
    }
    assert run(cfg).plan.actions == []


@pytest.mark.parametrize("at_once", [1, 2, refs_module.BASES_AT_ONCE])
def test_a_looked_up_record_is_shown_as_the_whole_index_shows_it(
    cfg: Config, monkeypatch: pytest.MonkeyPatch, at_once: int
) -> None:
    """Every kind of customer: one shown by e-mail, one with only a mobile number, one with
    neither, one deleted, and a key the store does not hold; the bases looked up a batch of
    ``at_once`` at a time, never more."""
    monkeypatch.setattr(refs_module, "BASES_AT_ONCE", at_once)
    b = ds("b")
    b.put(C, "c1", {"first_name": "Ann", "email": "Ann@X.com"})
    b.put(C, "c2", {"first_name": "Bob", "mobile_number": "(555) 201-3344"})
    b.put(C, "c3", {"first_name": "Cy"})
    b.put(C, "c4", {"first_name": "Di", "email": "di@x.com"})
    b.put(C, "c6", {"first_name": "Fay", "email": "fay@x.com"})
    run(cfg)
    b.remove(C, "c6")
    run(cfg)
    with StateStore.open(cfg.state_url, base_dir=str(cfg.path.parent)) as store:
        keys = [k for k, _base in store.iter_bases("p", C)]
        whole = References(store, "p").index(C, "a", ("email", "mobile_number"))
        reads = BaseReads(monkeypatch)
        batches: list[int] = []
        load_bases = StateStore.load_bases

        def batch(store: StateStore, pipeline: str, entity: str, keys: Any) -> Any:
            batches.append(len(list(keys)))
            return load_bases(store, pipeline, entity, keys)

        monkeypatch.setattr(StateStore, "load_bases", batch)
        partial = References(store, "p").back_index(C, ("email", "mobile_number"), [*keys, "nope"])
        assert sorted(reads.keys[C]) == sorted([*keys, "nope"])
        assert batches and max(batches) <= at_once and sum(batches) == len(keys) + 1
        assert partial.loaded == {*keys, "nope"}
        assert partial.back == whole.back and len(whole.back) == 3
        assert [partial.shown(k) for k in keys] == [whole.back.get(k) for k in keys]
        assert partial.shown("nope") is None
        with pytest.raises(LookupError, match="not loaded"):
            partial.shown("never-asked")


def _key(cfg: Config, native_id: str) -> str:
    """The hub key of member b's customer ``native_id``."""
    with StateStore.open(cfg.state_url, base_dir=str(cfg.path.parent)) as store:
        index = store.link_index("p", C, "b")
    return index[native_id][0]


def test_a_batch_that_failed_to_load_is_loaded_again_next_time(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of bases that fails (a locked database) leaves its keys unlearnt: the next
    lookup loads them, instead of taking them for records the member cannot show."""
    b = ds("b")
    b.put(C, "c1", {"first_name": "Ann", "email": "ann@x.com"})
    b.put(C, "c2", {"first_name": "Bob", "email": "bob@x.com"})
    run(cfg)
    monkeypatch.setattr(refs_module, "BASES_AT_ONCE", 1)
    load_bases = StateStore.load_bases
    calls = [0]

    def second_fails(store: StateStore, pipeline: str, entity: str, keys: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError("database is locked")
        return load_bases(store, pipeline, entity, keys)

    monkeypatch.setattr(StateStore, "load_bases", second_fails)
    with StateStore.open(cfg.state_url, base_dir=str(cfg.path.parent)) as store:
        keys = [k for k, _base in store.iter_bases("p", C)]
        refs = References(store, "p")
        with pytest.raises(OSError, match="locked"):
            refs.back_index(C, ("email", "mobile_number"), keys)
        index = refs.back_index(C, ("email", "mobile_number"), keys)
        assert index.loaded == set(keys)
        assert sorted(index.shown(k) for k in keys) == ["ann@x.com", "bob@x.com"]
