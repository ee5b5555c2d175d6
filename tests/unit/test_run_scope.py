"""What a run keeps only for the entities it syncs: the Housecall Pro connector's job ->
invoice index (``JobInvoices``) is learnt only when the run syncs line items
(``Connector.will_sync``), and the reference indexes of an entity no entity still to plan
refers to are let go of (``References.keep_only``). Each is measured memory (the payments'
first slice of a first sync: ``bench/README.md``); these tests show that nothing a run
needs goes with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import load_config
from syncengine.connector import ConnectorContext, NativeRecord
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.connectors.housecallpro.sandbox import SandboxState, SyncASGITransport, create_app
from syncengine.connectors.memory import MemoryConnector
from syncengine.refs import References, targets_of
from syncengine.state import StateStore
from tests.helpers import write_config

KEY = "hcp_test_key_0123456789"
LINES = "line_items"


@pytest.fixture
def app() -> Any:
    return create_app(KEY, seed=18, random_seed=4)


def sandbox(app: Any) -> SandboxState:
    state = app.state.sandbox
    assert isinstance(state, SandboxState)
    return state


def hcp(app: Any) -> HousecallProConnector:
    options = HousecallProOptions(
        type="housecallpro", base_url="http://sandbox", api_key=KEY, page_size=7, rate_limit=0
    )
    extra = {"transport": SyncASGITransport(app), "sleep": lambda _: None}
    return HousecallProConnector(options, ConnectorContext(name="hcp", extra=extra))


def lines_of(conn: HousecallProConnector) -> dict[str, tuple[str, Any]]:
    """Each line's invoice and data, as the connector reads them."""
    records: list[NativeRecord] = list(conn.read(LINES))
    return {r.id: (r.data.get("invoice_id"), r.data) for r in records}


def invoice_lists(state: SandboxState) -> int:
    found = [r for r in state.requests() if r["method"] == "GET" and r["path"] == "/invoices"]
    state.clear_requests()
    return len(found)


def test_a_run_without_line_items_learns_no_job_invoices(app: Any) -> None:
    conn = hcp(app)
    conn.will_sync(["customers", "invoices", "payments"])
    invoices = list(conn.read("invoices"))
    payments = list(conn.read("payments"))
    known = conn.billing.job_invoices
    assert invoices and payments
    assert not known.complete
    assert all(known.job_of(r.id) is None for r in invoices)
    assert known.billed() == []
    conn.close()


def test_an_index_not_learnt_from_is_never_taken_as_complete(app: Any) -> None:
    """An instance that learnt every invoice and is then told a run without line items
    (none does that today: a run makes its connectors) no longer calls its index complete,
    so a line of an invoice read after that is not taken for a line of no invoice."""
    conn = hcp(app)
    list(conn.read("invoices"))
    known = conn.billing.job_invoices
    assert known.complete
    conn.will_sync(["customers", "invoices"])
    assert not known.complete
    known.learn({"id": "inv_new", "job_id": "job_new", "created_at": "2026-12-07T10:00:00Z"})
    known.wanted = True  # line items asked for it again: still not complete
    assert not known.complete and known.invoice_of("job_new") is None
    conn.close()


def test_line_items_read_after_all_are_right_and_list_the_invoices_once_more(app: Any) -> None:
    state = sandbox(app)
    told = hcp(app)
    told.will_sync(["customers", "invoices", "line_items"])
    state.clear_requests()
    list(told.read("invoices"))
    listing = invoice_lists(state)  # the requests one listing of the invoices takes
    assert listing > 1
    expected = lines_of(told)
    assert expected and invoice_lists(state) == 0  # learnt while the invoices were read
    assert told.billing.job_invoices.complete
    told.close()

    # an instance told the run syncs no line items and asked for them anyway (nothing in a
    # run does): the same lines, for one more listing of the invoices
    untold = hcp(app)
    untold.will_sync(["customers", "invoices"])
    list(untold.read("invoices"))
    state.clear_requests()
    assert lines_of(untold) == expected
    assert invoice_lists(state) == listing
    assert untold.billing.job_invoices.complete
    untold.close()

    # and one never told keeps everything, as before the hook (a report reads so)
    never = hcp(app)
    list(never.read("invoices"))
    state.clear_requests()
    assert lines_of(never) == expected
    assert invoice_lists(state) == 0
    never.close()


def test_the_engine_tells_each_member_the_entities_the_run_syncs_on_it(
    tmp_path: Path, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    told: list[tuple[str, list[str]]] = []

    def will_sync(self: Any, entities: Any) -> None:
        told.append((self.name, list(entities)))

    monkeypatch.setattr(HousecallProConnector, "will_sync", will_sync)
    monkeypatch.setattr(MemoryConnector, "will_sync", will_sync)
    path = write_config(
        tmp_path,
        f"""
        [state]
        url = "sqlite:///state.db"

        [connectors.hcp]
        type = "housecallpro"
        base_url = "http://sandbox"
        api_key = "{KEY}"
        rate_limit = 0

        [connectors.books]
        type = "memory"
        entities = ["customers", "invoices"]

        [connectors.crm]
        type = "memory"
        entities = ["customers", "invoices"]

        [[pipelines]]
        name = "p"
        members = ["hcp", "books", "crm"]
        entities = ["customers", "invoices"]
        [pipelines.member_entities]
        crm = ["customers"]
        [pipelines.conflicts]
        default = ["hcp"]
        """,
    )
    extra = {"hcp": {"transport": SyncASGITransport(app), "sleep": lambda _: None}}
    cfg = load_config(path)
    result = api.sync(cfg, connector_extra=extra)[0]
    assert not result.error and not result.failures
    assert sorted(told) == [
        ("books", ["customers", "invoices"]),
        ("crm", ["customers"]),
        ("hcp", ["customers", "invoices"]),
    ]
    told.clear()
    api.sync(cfg, connector_extra=extra, entities=["customers"])
    assert sorted(told) == [
        ("books", ["customers"]),
        ("crm", ["customers"]),
        ("hcp", ["customers"]),
    ]


def test_an_index_let_go_of_is_rebuilt_the_same_when_asked_again(tmp_path: Path) -> None:
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with store.transaction() as tx:
            for n in range(3):
                tx.put_record("p", "customers", f"k{n}", {"name": f"C{n}"})
                tx.put_link(
                    "p",
                    "customers",
                    f"k{n}",
                    "hcp",
                    native_id=f"cus_{n}",
                    native_hash=None,
                    last_seen={"name": f"C{n}"},
                )
        refs = References(store, "p")
        built = refs.index("customers", "hcp", None)
        assert built.forward == {"cus_0": "k0", "cus_1": "k1", "cus_2": "k2"}

        refs.keep_only(targets_of(["invoices", "payments"]))  # invoices refer to customers
        assert refs.index("customers", "hcp", None) is built

        refs.keep_only(targets_of(["payments"]))  # payments refer to invoices alone
        again = refs.index("customers", "hcp", None)
        assert again is not built
        assert again.forward == built.forward and again.back == built.back
    finally:
        store.close()


def test_targets_of_names_what_records_of_the_entities_refer_to() -> None:
    assert targets_of(["payments"]) == {"invoices"}
    assert targets_of(["invoices", "payments"]) == {"customers", "jobs", "invoices"}
    assert targets_of(["customers", "an entity of a REST member's own"]) == set()
