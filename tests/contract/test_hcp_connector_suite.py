"""The connector contract for Housecall Pro's jobs and invoices, and its payments' reads.

``ConnectorContract`` speaks of the one entity its subclass names (``entity``), so the whole
suite runs against the HCP connector's jobs (full CRUD) and invoices (read and create; the
update and delete tests skip, saying the connector "cannot update invoices", as the suite
does for writes a member cannot make). Payments cannot be created through the API: their
reads and refusals are tested below with payments recorded in the sandbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest
from starlette.applications import Starlette

from syncengine.connector import (
    CapabilityViolation,
    Connector,
    ConnectorContext,
    NativeData,
    check_allowed,
)
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.connectors.housecallpro.sandbox import SandboxState, SyncASGITransport, create_app
from tests.contract.connector_suite import Change, ConnectorContract, Reopen, Sample

KEY = "hcp_contract_key_0123456789"
PAGE_SIZE = 4


def hcp(app: Starlette, name: str = "hcp") -> HousecallProConnector:
    options = HousecallProOptions(
        type="housecallpro", api_key=KEY, base_url="http://sandbox", rate_limit=0,
        page_size=PAGE_SIZE,
    )  # fmt: skip
    return HousecallProConnector(
        options, ConnectorContext(name=name, extra={"transport": SyncASGITransport(app)})
    )


class HcpEntityContract(ConnectorContract):
    """The suite over one HCP entity in an empty sandbox that holds one customer."""

    @pytest.fixture
    def app(self) -> Starlette:
        app = create_app(KEY, seed=None)
        state = app.state.sandbox
        assert isinstance(state, SandboxState)
        state.create_customer({"first_name": "Owner", "email": "owner@example.com"})
        return app

    @pytest.fixture
    def customer_id(self, app: Starlette) -> str:
        customer_id: str = app.state.sandbox.dump()["customers"][0]["id"]
        return customer_id

    @pytest.fixture
    def opened(self) -> Iterator[list[Connector]]:
        conns: list[Connector] = []
        yield conns
        for conn in conns:
            conn.close()

    @pytest.fixture
    def connector(self, app: Starlette, opened: list[Connector]) -> Connector:
        conn = hcp(app)
        opened.append(conn)
        return conn

    @pytest.fixture
    def reopen(self, app: Starlette, opened: list[Connector]) -> Reopen:
        def again(conn: Connector) -> Connector:
            other = hcp(app, "hcp-reopened")
            opened.append(other)
            return other

        return again


class TestHousecallProJobs(HcpEntityContract):
    entity = "jobs"
    volatile_fields: ClassVar[frozenset[str]] = frozenset({"updated_at"})
    missing_id: ClassVar[str] = "job_00000000000000000000000000000000"
    many: ClassVar[int] = 25  # 7 pages of PAGE_SIZE

    @pytest.fixture
    def sample(self, customer_id: str) -> Sample:
        def make(n: int) -> NativeData:
            day = n % 28 + 1
            return {
                "customer_id": customer_id,
                "description": f"Service call {n}",
                "notes": f"Gate code {n}",
                "work_status": "scheduled",
                "schedule": {
                    "scheduled_start": f"2026-05-{day:02d}T{n % 10 + 8:02d}:00:00Z",
                    "scheduled_end": f"2026-05-{day:02d}T{n % 10 + 10:02d}:00:00Z",
                    "arrival_window": 60,
                },
                "tags": ["contract", f"t{n}"],
            }

        return make

    @pytest.fixture
    def change(self) -> Change:
        def patch(data: NativeData) -> NativeData:
            return {"description": f"{data['description']} (moved)"}

        return patch


class TestHousecallProInvoices(HcpEntityContract):
    entity = "invoices"
    volatile_fields: ClassVar[frozenset[str]] = frozenset({"updated_at"})
    missing_id: ClassVar[str] = "inv_00000000000000000000000000000000"
    many: ClassVar[int] = 25

    @pytest.fixture
    def sample(self, customer_id: str) -> Sample:
        def make(n: int) -> NativeData:
            return {
                "invoice_number": f"C-{n:04d}",
                "customer_id": customer_id,
                "status": "sent",
                "amount": 10_000 + n,
                "due_at": f"2026-06-{n % 28 + 1:02d}T00:00:00Z",
            }

        return make

    @pytest.fixture
    def change(self) -> Change:
        def patch(data: NativeData) -> NativeData:
            return {"amount": data["amount"] + 1}

        return patch

    def test_invoices_cannot_be_updated_or_deleted(self, connector: Connector) -> None:
        for op in ("update", "delete"):
            with pytest.raises(CapabilityViolation):
                check_allowed(connector, self.entity, op)


# ---------------------------------------------------------------------------------- payments


@pytest.fixture
def paid_app() -> Starlette:
    """A sandbox with invoices, some with payments, and a few more payments recorded."""
    app = create_app(KEY, seed=10, random_seed=2)
    state = app.state.sandbox
    for invoice in state.dump()["invoices"]:
        if invoice["status"] == "sent" and invoice["outstanding_balance"] > 2:
            state.record_payment(invoice["id"], {"amount": 1, "payment_method": "cash"})
            state.record_payment(invoice["id"], {"amount": 1, "status": "failed"})
    return app


@pytest.mark.parametrize("nested", [True, False])
def test_payments_are_read_each_once_and_repeatably(paid_app: Starlette, nested: bool) -> None:
    state = paid_app.state.sandbox
    state.set_options({"nest_payments": nested})
    stored = {p["id"]: p for p in state.dump()["payments"]}
    readers = [hcp(paid_app), hcp(paid_app, "again")]
    try:
        first = list(readers[0].read("payments"))
        second = list(readers[0].read("payments"))
        third = list(readers[1].read("payments"))
    finally:
        for reader in readers:
            reader.close()
    assert len(first) == len({r.id for r in first}) == len(stored)
    for other in (second, third):
        assert [(r.id, r.native_hash()) for r in other] == [(r.id, r.native_hash()) for r in first]
    for record in first:
        payment = stored[record.id]
        assert record.data["invoice_id"] == payment["invoice_id"]
        assert record.data["amount"] == payment["amount"]
        assert record.data["processed_at"] == payment["processed_at"]
        assert record.location


def test_payments_cannot_be_written(paid_app: Starlette) -> None:
    conn = hcp(paid_app)
    try:
        caps = conn.capabilities("payments")
        assert caps.read and caps.read_only
        for op in ("create", "update", "delete"):
            with pytest.raises(CapabilityViolation, match=f"cannot {op} payments"):
                check_allowed(conn, "payments", op)
    finally:
        conn.close()
