"""Money round-trips exactly, as integers, through every path it takes.

Amounts are 0 to 10^10 cents, and their negatives (credit notes); an invoice's subtotal and
tax, and a payment's refund from 0 up to the payment, travel the same paths. The paths:

- the ``cents`` transform at 0 to 4 decimal places, both ways: the text it writes reads back
  as the same integer; what a person types (``1,234.50``, ``$12``, ``12.5``, ``(3.00)``,
  ``-$7``) reads as exactly the amount it shows; a workbook's number cell (a float of whole
  cents) too; more decimals than the places is an error, never a rounding;
- the spreadsheet's invoice and payment mappings (``Amount``, ``Balance``, ``Subtotal``,
  ``Tax``, ``Refunded``): canonical cents -> text -> canonical cents; a refund above its
  payment is refused by every mapping, never passed on;
- the Housecall Pro mappings (integer cents both ways, read-only balances and job totals);
- from one member's form to another's and back (HCP int -> sheet text -> HCP int);
- a real CSV folder through the spreadsheet connector: rows written, flushed, read back by a
  new connector instance; rows as a person typed them, rewritten by the sync and read back;
- a whole sync: a memory member (integer cents) and a CSV folder, both directions;
- the HCP sandbox's refunds: any sequence of refunds up to the payment, each one exact, the
  invoice's balance reopened by exactly their sum, and one cent more refused.
- line items: quantities of up to 4 decimal places (and a fifth refused, never rounded)
  through the ``decimal`` transform as typed, as text, as a JSON number and as a workbook's
  number; unit prices up to 10^9 cents; a line's amount is quantity x unit price rounded half
  to even, equal to the exact fraction's; every line items mapping, and HCP -> sheet -> HCP;
  the sandbox's invoice billing its lines to the cent.

Every comparison is exact integer equality; nothing goes through binary floats. (The XLSX
round trip lives in ``tests/unit/test_xlsx_money.py``.)
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine import api, model
from syncengine.connector import ConnectorContext
from syncengine.connectors.housecallpro.sandbox import SandboxState
from syncengine.connectors.housecallpro.sandbox_fields import ValidationFailed
from syncengine.connectors.memory import MemoryConnector
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions
from syncengine.errors import RecordError
from syncengine.mapping import EntityMapping, load_mapping
from syncengine.transforms import build_transform
from tests.csvfiles import read_csv, write_csv
from tests.helpers import memory_config

MAX = 10**10
PLACES = [0, 1, 2, 3, 4]

cents = st.integers(0, MAX) | st.sampled_from([0, 1, 9, 10, 99, 100, 101, 123450, MAX])
signed_cents = st.builds(lambda c, neg: -c if neg else c, cents, st.booleans())


@st.composite
def refunded_payments(draw: st.DrawFn) -> tuple[int, int]:
    """A payment's amount and what was refunded of it: 0, part of it, or all of it."""
    amount = draw(cents)
    refunded = draw(st.sampled_from([0, amount]) | st.integers(0, amount))
    return amount, refunded


@st.composite
def taxed(draw: st.DrawFn) -> tuple[int, int, int]:
    """An invoice's amount, subtotal and tax, with amount = subtotal + tax."""
    subtotal, tax = draw(signed_cents), draw(cents)
    return subtotal + tax, subtotal, tax


def cents_transform(places: int) -> Any:
    return build_transform({"name": "cents", "places": places}, "test")


def _digits(value: int, places: int) -> tuple[str, int, str]:
    """sign, whole units and the fraction digits of ``value`` in units of 10^-places."""
    sign = "-" if value < 0 else ""
    units, fraction = divmod(abs(value), 10**places)
    return sign, units, f"{fraction:0{places}d}" if places else ""


@st.composite
def typed(draw: st.DrawFn, value: int, places: int) -> str:
    """``value`` (in units of 10^-places) as a person might type it."""
    sign, units, digits = _digits(value, places)
    whole = draw(st.sampled_from([str(units), f"{units:,}"]))
    if digits:
        shown = draw(st.sampled_from([digits, digits.rstrip("0"), digits + "0"]))
    else:
        shown = draw(st.sampled_from(["", "0", "00"]))
    number = f"{whole}.{shown}" if shown else draw(st.sampled_from([whole, f"{whole}."]))
    if number.startswith("0.") and len(number) > 2 and draw(st.booleans()):
        number = number[1:]  # ".50"
    dollar = draw(st.sampled_from(["", "$", "$ "]))
    body = f"{dollar}{number}"
    if sign:
        body = draw(st.sampled_from([f"-{body}", f"({body})", f"- {body}", f"{dollar}-{number}"]))
    elif draw(st.booleans()):
        body = f"+{body}"
    pad = draw(st.sampled_from(["", " ", "  "]))
    return f"{pad}{body}{pad}"


def _exact(text: str, places: int) -> int:
    """What a written amount means, by decimal arithmetic only."""
    scaled = Decimal(text).scaleb(places)
    assert scaled == scaled.to_integral_value()
    return int(scaled)


# ------------------------------------------------------------------------- the cents transform


@pytest.mark.parametrize("places", PLACES)
@given(value=signed_cents)
def test_cents_written_text_reads_back_exactly(places: int, value: int) -> None:
    transform = cents_transform(places)
    text = transform.write(value)
    assert isinstance(text, str)
    pattern = r"-?[0-9]+" + (rf"\.[0-9]{{{places}}}" if places else "")
    assert re.fullmatch(pattern, text), text
    assert _exact(text, places) == value
    assert transform.read(text) == value
    assert transform.write(transform.read(text)) == text


@pytest.mark.parametrize("places", PLACES)
@given(data=st.data(), value=signed_cents)
def test_cents_reads_typed_amounts_exactly(places: int, data: st.DataObject, value: int) -> None:
    transform = cents_transform(places)
    text = data.draw(typed(value, places), label="typed")
    read = transform.read(text)
    assert type(read) is int
    assert read == value, text
    assert transform.read(transform.write(read)) == value


@pytest.mark.parametrize("places", PLACES)
@given(value=signed_cents)
def test_cents_reads_workbook_numbers_exactly(places: int, value: int) -> None:
    transform = cents_transform(places)
    # a number cell holds the float nearest to the amount; its shortest repr is the amount
    assert transform.read(value / 10**places) == value
    assert transform.read(Decimal(value).scaleb(-places)) == value
    units = value // 10**places
    assert transform.read(units) == units * 10**places  # an int cell is whole units


@pytest.mark.parametrize("places", PLACES)
@given(value=signed_cents, extra=st.integers(1, 9))
def test_cents_refuses_more_decimals_than_its_places(places: int, value: int, extra: int) -> None:
    transform = cents_transform(places)
    sign, units, digits = _digits(value, places)
    text = f"{sign}{units}.{digits}{extra}"
    with pytest.raises(ValueError, match="decimal places"):
        transform.read(text)  # never rounded to a nearby amount


# ------------------------------------------------------------------------------ the mappings

SHEET_INVOICES = load_mapping("spreadsheet", "invoices")
SHEET_PAYMENTS = load_mapping("spreadsheet", "payments")
HCP = {e: load_mapping("housecallpro", e) for e in ("jobs", "invoices", "payments")}
MEMORY = {e: load_mapping("memory", e) for e in ("jobs", "invoices", "payments")}


INVOICE_MONEY = {"amount": "Amount", "balance": "Balance", "subtotal": "Subtotal",
                 "tax_amount": "Tax"}  # fmt: skip
PAYMENT_MONEY = {"amount": "Amount", "refunded_amount": "Refunded"}


@given(totals=taxed(), balance=signed_cents)
def test_sheet_invoice_amounts_round_trip(totals: tuple[int, int, int], balance: int) -> None:
    amount, subtotal, tax = totals
    canonical = {"amount": amount, "balance": balance, "subtotal": subtotal, "tax_amount": tax}
    native = SHEET_INVOICES.to_native(canonical)
    assert set(native) == set(INVOICE_MONEY.values())
    assert all(isinstance(native[c], str) for c in INVOICE_MONEY.values())
    assert {f: _exact(native[c], 2) for f, c in INVOICE_MONEY.items()} == canonical
    back = SHEET_INVOICES.to_canonical(SHEET_INVOICES.build_native(native))
    assert {f: back[f] for f in INVOICE_MONEY} == canonical


@given(payment=refunded_payments())
def test_sheet_payment_amounts_round_trip(payment: tuple[int, int]) -> None:
    amount, refunded = payment
    native = SHEET_PAYMENTS.to_native({"amount": amount, "refunded_amount": refunded})
    assert isinstance(native["Amount"], str) and _exact(native["Amount"], 2) == amount
    assert isinstance(native["Refunded"], str) and _exact(native["Refunded"], 2) == refunded
    back = SHEET_PAYMENTS.to_canonical(native)
    assert (back["amount"], back["refunded_amount"]) == (amount, refunded)


@given(data=st.data(), totals=taxed(), balance=signed_cents, payment=refunded_payments())
def test_sheet_reads_typed_amounts_exactly(
    data: st.DataObject, totals: tuple[int, int, int], balance: int, payment: tuple[int, int]
) -> None:
    amount, subtotal, tax = totals
    values = {"amount": amount, "balance": balance, "subtotal": subtotal, "tax_amount": tax}
    row = {c: data.draw(typed(values[f], 2), label=c) for f, c in INVOICE_MONEY.items()}
    record = SHEET_INVOICES.to_canonical(row)
    assert {f: record[f] for f in INVOICE_MONEY} == values
    paid, refunded = payment
    cells = {"Amount": data.draw(typed(paid, 2)), "Refunded": data.draw(typed(refunded, 2))}
    read = SHEET_PAYMENTS.to_canonical(cells)
    assert (read["amount"], read["refunded_amount"]) == (paid, refunded)
    assert type(read["refunded_amount"]) is int


@pytest.mark.parametrize("member", ["spreadsheet", "housecallpro", "memory"])
@given(data=st.data(), amount=cents, extra=st.integers(1, MAX))
def test_a_refund_above_its_payment_is_refused_by_every_mapping(
    member: str, data: st.DataObject, amount: int, extra: int
) -> None:
    mapping = {"spreadsheet": SHEET_PAYMENTS, "housecallpro": HCP["payments"],
               "memory": MEMORY["payments"]}[member]  # fmt: skip
    native = mapping.to_native({"amount": amount, "refunded_amount": amount + extra})
    if member == "spreadsheet":  # as typed, in any style
        native["Refunded"] = data.draw(typed(amount + extra, 2), label="typed refund")
    with pytest.raises(RecordError) as refused:
        mapping.to_canonical(native, location="row 7")
    assert refused.value.location == "row 7"
    assert refused.value.field == mapping.native_name("refunded_amount")
    assert "is more than the payment's amount" in str(refused.value)


@pytest.mark.parametrize("mappings", [HCP, MEMORY], ids=["housecallpro", "memory"])
@given(amount=signed_cents, balance=signed_cents)
def test_integer_mappings_keep_cents_as_ints(
    mappings: dict[str, EntityMapping], amount: int, balance: int
) -> None:
    invoices, payments, jobs = mappings["invoices"], mappings["payments"], mappings["jobs"]
    for mapping in (invoices, payments):
        native = mapping.to_native({"amount": amount})
        [written] = native.values()
        assert type(written) is int and written == amount
        assert mapping.to_canonical(native)["amount"] == amount
    balance_at = invoices.native_name("balance")
    assert balance_at is not None
    record = invoices.to_canonical({"amount": amount, balance_at: balance})
    assert (record["amount"], record["balance"]) == (amount, balance)
    job = jobs.to_canonical({"total_amount": amount, "outstanding_balance": balance})
    assert (job["total_amount"], job["outstanding_balance"]) == (amount, balance)
    assert type(job["total_amount"]) is int


@pytest.mark.parametrize("mappings", [HCP, MEMORY], ids=["housecallpro", "memory"])
@given(totals=taxed(), payment=refunded_payments())
def test_integer_mappings_keep_subtotals_tax_and_refunds_as_ints(
    mappings: dict[str, EntityMapping], totals: tuple[int, int, int], payment: tuple[int, int]
) -> None:
    amount, subtotal, tax = totals
    invoice = {"amount": amount, "subtotal": subtotal, "tax_amount": tax}
    native = mappings["invoices"].to_native(invoice)
    assert all(type(v) is int for v in native.values()) and len(native) == 3
    assert {k: mappings["invoices"].to_canonical(native)[k] for k in invoice} == invoice
    paid, refunded = payment
    written = mappings["payments"].to_native({"amount": paid, "refunded_amount": refunded})
    assert sorted(written.values()) == sorted([paid, refunded])
    assert all(type(v) is int for v in written.values())
    back = mappings["payments"].to_canonical(written)
    assert (back["amount"], back["refunded_amount"]) == (paid, refunded)


@given(amount=signed_cents, balance=signed_cents, data=st.data())
def test_amounts_cross_from_hcp_to_the_sheet_and_back(
    amount: int, balance: int, data: st.DataObject
) -> None:
    hcp = HCP["invoices"]
    canonical = hcp.to_canonical({"amount": amount, "outstanding_balance": balance})
    sheet = SHEET_INVOICES.to_native(canonical)
    # the bookkeeper retypes the cell in another style: still the same amount
    retyped = data.draw(st.just(sheet["Amount"]) | typed(amount, 2), label="amount cell")
    again = SHEET_INVOICES.to_canonical({**sheet, "Amount": retyped})
    assert (again["amount"], again["balance"]) == (amount, balance)
    written = hcp.to_native(again)
    assert type(written["amount"]) is int and written["amount"] == amount
    for_payment = SHEET_PAYMENTS.to_native(HCP["payments"].to_canonical({"amount": amount}))
    assert HCP["payments"].to_native(SHEET_PAYMENTS.to_canonical(for_payment))["amount"] == amount


@given(totals=taxed(), payment=refunded_payments(), data=st.data())
def test_subtotals_tax_and_refunds_cross_from_hcp_to_the_sheet_and_back(
    totals: tuple[int, int, int], payment: tuple[int, int], data: st.DataObject
) -> None:
    amount, subtotal, tax = totals
    hcp_invoice = {"amount": amount, "subtotal": subtotal, "tax_amount": tax}
    sheet = SHEET_INVOICES.to_native(HCP["invoices"].to_canonical(hcp_invoice))
    retyped = {
        **sheet,
        "Subtotal": data.draw(st.just(sheet["Subtotal"]) | typed(subtotal, 2), label="subtotal"),
        "Tax": data.draw(st.just(sheet["Tax"]) | typed(tax, 2), label="tax"),
    }
    back = HCP["invoices"].to_native(SHEET_INVOICES.to_canonical(retyped))
    assert {k: back[k] for k in hcp_invoice} == hcp_invoice
    assert all(type(back[k]) is int for k in hcp_invoice)
    paid, refunded = payment
    hcp_payment = {"amount": paid, "refunded_amount": refunded}
    row = SHEET_PAYMENTS.to_native(HCP["payments"].to_canonical(hcp_payment))
    row["Refunded"] = data.draw(st.just(row["Refunded"]) | typed(refunded, 2), label="refund")
    again = HCP["payments"].to_native(SHEET_PAYMENTS.to_canonical(row))
    assert {k: again[k] for k in hcp_payment} == hcp_payment


# -------------------------------------------------------------------- a real CSV file round trip

_PROFILE = settings.default
assert _PROFILE is not None
# fewer examples where each one writes files (the profile's health checks and deadline hold)
FILE_SETTINGS = settings(max_examples=max(10, _PROFILE.max_examples // 2))


def sheet_member(folder: Path) -> SpreadsheetConnector:
    options = SpreadsheetOptions(type="spreadsheet", path=str(folder))
    conn = SpreadsheetConnector(options, ConnectorContext(name="books", base_dir=str(folder)))
    conn.prepare("invoices", SHEET_INVOICES)
    conn.prepare("payments", SHEET_PAYMENTS)
    return conn


amount_lists = st.lists(signed_cents, min_size=1, max_size=8)


@FILE_SETTINGS
@given(amounts=amount_lists, balances=st.data())
def test_csv_rows_written_by_the_connector_read_back_exactly(
    amounts: list[int], balances: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "books"
        writer = sheet_member(folder)
        for entity in ("invoices", "payments"):
            list(writer.read(entity))
        owed = [balances.draw(signed_cents, label="balance") for _ in amounts]
        for n, (amount, balance) in enumerate(zip(amounts, owed, strict=True)):
            invoice = SHEET_INVOICES.to_native(
                {"invoice_number": str(1000 + n), "amount": amount, "balance": balance}
            )
            writer.create("invoices", invoice, key=f"i{n}")
            payment = SHEET_PAYMENTS.to_native({"invoice": str(1000 + n), "amount": amount})
            writer.create("payments", payment, key=f"p{n}")
        writer.flush("invoices")
        writer.flush("payments")
        writer.close()

        reader = sheet_member(folder)
        invoices = {r.id: SHEET_INVOICES.to_canonical(r.data) for r in reader.read("invoices")}
        payments = {r.id: SHEET_PAYMENTS.to_canonical(r.data) for r in reader.read("payments")}
        assert {k: (v["amount"], v["balance"]) for k, v in invoices.items()} == {
            f"i{n}": (a, b) for n, (a, b) in enumerate(zip(amounts, owed, strict=True))
        }
        assert {k: v["amount"] for k, v in payments.items()} == {
            f"p{n}": a for n, a in enumerate(amounts)
        }
        # the file holds the plain decimal text, one row per record
        rows = read_csv(folder / "payments.csv")
        assert [_exact(r["Amount"], 2) for r in rows] == amounts


@FILE_SETTINGS
@given(data=st.data(), amounts=amount_lists)
def test_csv_amounts_typed_by_a_person_survive_a_rewrite(
    data: st.DataObject, amounts: list[int]
) -> None:
    typed_cells = [data.draw(typed(a, 2), label="typed") for a in amounts]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "books"
        folder.mkdir()
        text = io.StringIO()
        out = csv.writer(text, lineterminator="\n")
        out.writerow(["Sync ID", "Invoice #", "Amount", "Method", "Status", "Date"])
        for n, cell in enumerate(typed_cells):
            out.writerow([f"p{n}", str(1000 + n), cell, "Cash", "succeeded", "2026-01-02"])
        (folder / "payments.csv").write_text(text.getvalue(), encoding="utf-8")

        conn = sheet_member(folder)
        read = {r.id: r for r in conn.read("payments")}
        assert {k: SHEET_PAYMENTS.to_canonical(r.data)["amount"] for k, r in read.items()} == {
            f"p{n}": a for n, a in enumerate(amounts)
        }
        # the sync rewrites some rows (another field, or the amount in its own form)
        for n, amount in enumerate(amounts):
            if n % 2:
                conn.update(
                    "payments",
                    f"p{n}",
                    SHEET_PAYMENTS.to_native({"amount": amount}),
                    full=read[f"p{n}"].data,
                )
            else:
                conn.update("payments", f"p{n}", {"Method": "check"}, full=read[f"p{n}"].data)
        conn.flush("payments")
        conn.close()
        again = {
            r.id: SHEET_PAYMENTS.to_canonical(r.data) for r in sheet_member(folder).read("payments")
        }
        assert {k: v["amount"] for k, v in again.items()} == {
            f"p{n}": a for n, a in enumerate(amounts)
        }


# ------------------------------------------------------------------------------- a whole sync

SYNC_SETTINGS = settings(max_examples=max(10, _PROFILE.max_examples // 3))
ENTITIES = ("customers", "invoices", "payments")


@SYNC_SETTINGS
@given(data=st.data(), amounts=st.lists(signed_cents, min_size=1, max_size=5))
def test_a_sync_between_integer_cents_and_a_csv_folder_keeps_every_cent(
    data: st.DataObject, amounts: list[int]
) -> None:
    MemoryConnector.reset()
    with tempfile.TemporaryDirectory() as tmp:
        config = memory_config(
            Path(tmp),
            {
                "hcp": {"entities": list(ENTITIES)},
                "books": {"type": "spreadsheet", "path": "books"},
            },
            entities=ENTITIES,
        )
        hcp = MemoryConnector.get_dataset("hcp")
        hcp.put("customers", "c1", {"email": "ann@x.com"})
        owed = [data.draw(signed_cents, label="balance") for _ in amounts]
        for n, (amount, balance) in enumerate(zip(amounts, owed, strict=True)):
            hcp.put(
                "invoices",
                f"i{n}",
                {
                    "invoice_number": str(1000 + n),
                    "customer": "c1",
                    "amount": amount,
                    "balance": balance,
                    "status": "open",
                },
            )
            hcp.put(
                "payments",
                f"p{n}",
                {"invoice": f"i{n}", "amount": amount, "method": "cash", "status": "succeeded"},
            )
        [first] = api.sync(config)
        assert first.exit_code == 0, first.to_json()

        folder = Path(tmp) / "books"
        invoices = read_csv(folder / "invoices.csv")
        assert sorted(
            (r["Invoice #"], _exact(r["Amount"], 2), _exact(r["Balance"], 2)) for r in invoices
        ) == sorted(
            (str(1000 + n), a, b) for n, (a, b) in enumerate(zip(amounts, owed, strict=True))
        )
        payments = read_csv(folder / "payments.csv")
        assert sorted((r["Invoice #"], _exact(r["Amount"], 2)) for r in payments) == sorted(
            (str(1000 + n), a) for n, a in enumerate(amounts)
        )

        # the bookkeeper retypes every amount in another style, and changes the balances
        new_owed = [data.draw(signed_cents, label="new balance") for _ in amounts]
        by_number = {
            str(1000 + n): (a, b) for n, (a, b) in enumerate(zip(amounts, new_owed, strict=True))
        }
        for row in invoices:
            amount, balance = by_number[row["Invoice #"]]
            row["Amount"] = data.draw(typed(amount, 2), label="retyped amount")
            row["Balance"] = data.draw(typed(balance, 2), label="typed balance")
        write_csv(folder / "invoices.csv", invoices, list(invoices[0]))

        [second] = api.sync(config)
        assert second.exit_code == 0, second.to_json()
        held = {
            r["invoice_number"]: (r["amount"], r["balance"]) for r in hcp.table("invoices").values()
        }
        assert held == by_number
        assert all(type(a) is int and type(b) is int for a, b in held.values())
        [third] = api.sync(config)
        assert third.plan.actions == [], [a.describe() for a in third.plan.actions]


@SYNC_SETTINGS
@given(data=st.data(), invoices=st.lists(taxed(), min_size=1, max_size=4))
def test_a_sync_keeps_every_cent_of_subtotals_tax_and_refunds(
    data: st.DataObject, invoices: list[tuple[int, int, int]]
) -> None:
    """Refunds up to the payment reach a CSV folder exactly, and a later refund changes the
    payment's row in place: the same Sync ID, never a new row."""
    MemoryConnector.reset()
    with tempfile.TemporaryDirectory() as tmp:
        config = memory_config(
            Path(tmp),
            {
                "hcp": {"entities": list(ENTITIES)},
                "books": {"type": "spreadsheet", "path": "books"},
            },
            entities=ENTITIES,
        )
        hcp = MemoryConnector.get_dataset("hcp")
        hcp.put("customers", "c1", {"email": "ann@x.com"})
        paid = [data.draw(refunded_payments(), label="payment") for _ in invoices]
        for n, ((amount, subtotal, tax), (payment, refunded)) in enumerate(
            zip(invoices, paid, strict=True)
        ):
            hcp.put("invoices", f"i{n}", {"invoice_number": str(1000 + n), "customer": "c1",
                                          "amount": amount, "subtotal": subtotal,
                                          "tax_amount": tax, "status": "open"})  # fmt: skip
            hcp.put("payments", f"p{n}", {"invoice": f"i{n}", "amount": payment,
                                          "refunded_amount": refunded, "method": "cash",
                                          "status": "succeeded"})  # fmt: skip
        [first] = api.sync(config)
        assert first.exit_code == 0, first.to_json()
        folder = Path(tmp) / "books"
        rows = read_csv(folder / "invoices.csv")
        assert sorted(
            (r["Invoice #"], _exact(r["Subtotal"], 2), _exact(r["Tax"], 2), _exact(r["Amount"], 2))
            for r in rows
        ) == sorted(
            (str(1000 + n), subtotal, tax, amount)
            for n, (amount, subtotal, tax) in enumerate(invoices)
        )

        def refunds() -> dict[str, tuple[str, int, int]]:
            """Sync ID -> (invoice number, amount, refunded) of each payment row."""
            return {
                r["Sync ID"]: (r["Invoice #"], _exact(r["Amount"], 2), _exact(r["Refunded"], 2))
                for r in read_csv(folder / "payments.csv")
            }

        before = refunds()
        assert sorted(before.values()) == sorted(
            (str(1000 + n), payment, refunded) for n, (payment, refunded) in enumerate(paid)
        )
        # more is refunded in HCP, up to the whole payment
        later = [data.draw(st.integers(r, a), label="refunded later") for a, r in paid]
        for n, refunded in enumerate(later):
            hcp.edit("payments", f"p{n}", refunded_amount=refunded)
        [second] = api.sync(config)
        assert second.exit_code == 0, second.to_json()
        after = refunds()
        assert after.keys() == before.keys(), "a refund is a change of the row, never a new one"
        assert sorted(after.values()) == sorted(
            (str(1000 + n), payment, refunded)
            for n, ((payment, _first), refunded) in enumerate(zip(paid, later, strict=True))
        )
        [third] = api.sync(config)
        assert third.plan.actions == [], [a.describe() for a in third.plan.actions]


# --------------------------------------------------------------------- the sandbox's refunds


@settings(max_examples=max(10, _PROFILE.max_examples // 2))
@given(data=st.data(), amount=st.integers(1, MAX))
def test_sandbox_refunds_up_to_the_payment_are_exact(data: st.DataObject, amount: int) -> None:
    """Any sequence of refunds of one payment: each adds exactly its cents to the payment's
    refunded_amount and to the invoice's balance; past the payment is refused, changing
    nothing; the whole payment refunded makes it ``refunded``."""
    state = SandboxState(api_key="k")
    state.load({"customers": [{"id": "cus_1", "first_name": "Ann"}]}, source="test")
    invoice = state.create_invoice({"customer_id": "cus_1", "amount": amount, "status": "sent"})
    payment = state.record_payment(invoice["id"], {"amount": amount})
    assert payment is not None
    given_back = 0
    while given_back < amount:
        left = amount - given_back
        part = data.draw(st.integers(1, left) | st.just(left), label="refund")
        if data.draw(st.booleans(), label="one cent too many first"):
            with pytest.raises(ValidationFailed):
                state.refund_payment(payment["id"], {"amount": left + 1})
        shown = state.refund_payment(payment["id"], {"amount": part})
        assert shown is not None
        given_back += part
        assert shown["refunded_amount"] == given_back
        after = state.get_invoice(invoice["id"])
        assert after is not None and after["outstanding_balance"] == given_back
        assert after["amount"] == after["subtotal"] + after["tax_amount"] == amount
    assert shown["status"] == "refunded"
    with pytest.raises(ValidationFailed):
        state.refund_payment(payment["id"], {"amount": 1})


# --------------------------------------------------------------------------------- line items
#
# Quantities have up to 4 decimal places (and run to a million, either sign: a discount may
# be a negative quantity); unit prices run to 10^9 cents, either sign. A line's amount is
# quantity x unit price rounded half to even, computed here by exact fractions.

QUANTITY_SCALE = 10**4
quantity_units = st.integers(-(10**10), 10**10) | st.sampled_from(
    [0, 1, 5_000, 10_000, 15_000, 25_000, 3_333, 6_667, 10**10]
)
"""A quantity in ten-thousandths (15_000 is 1.5)."""
unit_prices = st.integers(-(10**9), 10**9) | st.sampled_from([0, 1, 3, 99, 10**9, -(10**9)])
SHEET_LINES = load_mapping("spreadsheet", "line_items")
LINE_MAPPINGS = {m: load_mapping(m, "line_items") for m in ("housecallpro", "memory", "rest")}


def quantity_text(units: int) -> str:
    """The canonical text of a quantity of ``units`` ten-thousandths, by integer arithmetic."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), QUANTITY_SCALE)
    digits = f"{fraction:04d}".rstrip("0")
    return f"{sign}{whole}.{digits}" if digits else ("0" if not whole else f"{sign}{whole}")


@st.composite
def typed_quantity(draw: st.DrawFn, units: int) -> str:
    """A quantity as a person types it: 1.5, 1.50, 1,234.5, +2, -0.25, .5, padded."""
    text = quantity_text(units)
    sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, _, fraction = body.partition(".")
    grouped = draw(st.sampled_from([whole, f"{int(whole):,}"]))
    shown = draw(st.sampled_from([fraction, fraction + "0", fraction + "00"])) if fraction else ""
    number = f"{grouped}.{shown}" if shown else draw(st.sampled_from([grouped, f"{grouped}.0"]))
    if number.startswith("0.") and draw(st.booleans()):
        number = number[1:]
    if not sign and draw(st.booleans()):
        sign = "+"
    pad = draw(st.sampled_from(["", " ", "  "]))
    return f"{pad}{sign}{number}{pad}"


def exact_amount(units: int, unit_price: int) -> int:
    """quantity x unit price in cents, rounded half to even, by fractions alone."""
    return round(Fraction(units, QUANTITY_SCALE) * unit_price)


@given(units=quantity_units, unit_price=unit_prices)
def test_a_lines_amount_is_exact_half_to_even(units: int, unit_price: int) -> None:
    amount = model.line_amount(quantity_text(units), unit_price)
    assert type(amount) is int
    assert amount == exact_amount(units, unit_price)
    assert model.line_amount(Decimal(units).scaleb(-4), unit_price) == amount


@given(data=st.data(), units=quantity_units)
def test_quantities_read_and_write_exactly_through_the_decimal_transform(
    data: st.DataObject, units: int
) -> None:
    text = quantity_text(units)
    plain, number = (
        build_transform("decimal"),
        build_transform({"name": "decimal", "as_number": True}),
    )
    assert plain.write(text) == text and plain.read(text) == text
    typed_text = data.draw(typed_quantity(units), label="typed")
    assert model.norm_decimal(plain.read(typed_text)) == text, typed_text
    sent = number.write(text)  # a JSON number, through JSON and back
    assert type(sent) is (int if units % QUANTITY_SCALE == 0 else float)
    assert number.read(json.loads(json.dumps(sent))) == text
    assert plain.read(units / QUANTITY_SCALE) == text  # a workbook's number cell


@given(units=quantity_units, extra=st.integers(1, 9))
def test_a_quantity_with_a_fifth_decimal_is_refused_never_rounded(units: int, extra: int) -> None:
    longer = f"{Decimal(units).scaleb(-4) + Decimal(extra).scaleb(-5):f}"  # 5 places
    with pytest.raises(ValueError, match="decimal places"):
        model.norm_decimal(longer)


@st.composite
def line_values(draw: st.DrawFn) -> dict[str, Any]:
    units, unit_price = draw(quantity_units), draw(unit_prices)
    return {
        "quantity": quantity_text(units),
        "unit_price": unit_price,
        "unit_cost": draw(cents),
        "amount": exact_amount(units, unit_price),
        "taxable": draw(st.booleans()),
    }


@given(line=line_values())
def test_every_line_items_mapping_keeps_quantities_and_cents_exact(line: dict[str, Any]) -> None:
    native = SHEET_LINES.to_native(line)
    assert all(isinstance(native[c], str) for c in ("Quantity", "Unit Price", "Amount"))
    assert _exact(native["Unit Price"], 2) == line["unit_price"]
    assert _exact(native["Amount"], 2) == line["amount"]
    assert SHEET_LINES.to_canonical(native) == {k: v for k, v in line.items() if v is not None}
    for name, mapping in LINE_MAPPINGS.items():
        written = mapping.to_native(line)
        back = mapping.to_canonical(json.loads(json.dumps(written)))  # as an API sends it
        wanted = {k: v for k, v in line.items() if k in mapping.readable and k in written}
        assert {k: back.get(k) for k in wanted} == wanted, name


@given(line=line_values(), data=st.data())
def test_lines_cross_from_hcp_to_the_sheet_and_back(
    line: dict[str, Any], data: st.DataObject
) -> None:
    hcp = LINE_MAPPINGS["housecallpro"]
    hcp_line = json.loads(json.dumps(hcp.to_native(line)))
    row = SHEET_LINES.to_native(hcp.to_canonical(hcp_line))
    units = round(Decimal(line["quantity"]) * QUANTITY_SCALE)
    row["Quantity"] = data.draw(st.just(row["Quantity"]) | typed_quantity(units), label="typed")
    again = hcp.to_native(SHEET_LINES.to_canonical(row))
    assert {k: again[k] for k in hcp_line} == hcp_line


@settings(max_examples=max(10, _PROFILE.max_examples // 2))
@given(lines=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**7)), min_size=1,
                      max_size=6))  # fmt: skip
def test_sandbox_invoices_bill_their_lines_exactly(lines: list[tuple[int, int]]) -> None:
    """Lines written through ``bulk_update`` make the job's invoice's subtotal their amounts'
    exact sum, its tax 8.25 % of the taxable ones (half to even) and its amount the two."""
    from syncengine.connectors.housecallpro.sandbox_lines import bulk_update

    state = SandboxState(api_key="k")
    state.load(
        {
            "customers": [{"id": "cus_1", "first_name": "Ann"}],
            "jobs": [{"id": "job_1", "customer_id": "cus_1"}],
            "invoices": [{"id": "inv_1", "job_id": "job_1", "customer_id": "cus_1",
                          "amount": 0, "status": "sent"}],
        },
        source="test",
    )  # fmt: skip
    body = [
        {"name": f"L{n}", "quantity": json.loads(quantity_text(units)), "unit_price": price,
         "taxable": n % 2 == 0}
        for n, (units, price) in enumerate(lines)
    ]  # fmt: skip
    bulk_update(state, "job_1", {"line_items": body})
    invoice = state.get_invoice("inv_1")
    assert invoice is not None
    amounts = [exact_amount(units, price) for units, price in lines]
    taxable = sum(a for n, a in enumerate(amounts) if n % 2 == 0)
    assert invoice["subtotal"] == sum(amounts)
    assert invoice["tax_amount"] == round(Fraction(taxable * 825, 10_000))
    assert invoice["amount"] == invoice["subtotal"] + invoice["tax_amount"]
