"""Money round-trips exactly, as integers, through every path it takes.

Amounts are 0 to 10^10 cents, and their negatives (refunds, credit notes). The paths:

- the ``cents`` transform at 0 to 4 decimal places, both ways: the text it writes reads back
  as the same integer; what a person types (``1,234.50``, ``$12``, ``12.5``, ``(3.00)``,
  ``-$7``) reads as exactly the amount it shows; a workbook's number cell (a float of whole
  cents) too; more decimals than the places is an error, never a rounding;
- the spreadsheet's invoice and payment mappings (``Amount``, ``Balance``): canonical cents
  -> text -> canonical cents;
- the Housecall Pro mappings (integer cents both ways, read-only balances and job totals);
- from one member's form to another's and back (HCP int -> sheet text -> HCP int);
- a real CSV folder through the spreadsheet connector: rows written, flushed, read back by a
  new connector instance; rows as a person typed them, rewritten by the sync and read back;
- a whole sync: a memory member (integer cents) and a CSV folder, both directions.

Every comparison is exact integer equality; nothing goes through binary floats. (The XLSX
round trip lives in ``tests/unit/test_xlsx_money.py``.)
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine import api
from syncengine.connector import ConnectorContext
from syncengine.connectors.memory import MemoryConnector
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions
from syncengine.mapping import EntityMapping, load_mapping
from syncengine.transforms import build_transform
from tests.csvfiles import read_csv, write_csv
from tests.helpers import memory_config

MAX = 10**10
PLACES = [0, 1, 2, 3, 4]

cents = st.integers(0, MAX) | st.sampled_from([0, 1, 9, 10, 99, 100, 101, 123450, MAX])
signed_cents = st.builds(lambda c, neg: -c if neg else c, cents, st.booleans())


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


@given(amount=signed_cents, balance=signed_cents)
def test_sheet_invoice_amounts_round_trip(amount: int, balance: int) -> None:
    native = SHEET_INVOICES.to_native({"amount": amount, "balance": balance})
    assert set(native) == {"Amount", "Balance"}
    assert all(isinstance(native[c], str) for c in ("Amount", "Balance"))
    assert _exact(native["Amount"], 2) == amount and _exact(native["Balance"], 2) == balance
    back = SHEET_INVOICES.to_canonical(SHEET_INVOICES.build_native(native))
    assert (back["amount"], back["balance"]) == (amount, balance)


@given(amount=signed_cents)
def test_sheet_payment_amounts_round_trip(amount: int) -> None:
    native = SHEET_PAYMENTS.to_native({"amount": amount})
    assert isinstance(native["Amount"], str) and _exact(native["Amount"], 2) == amount
    assert SHEET_PAYMENTS.to_canonical(native)["amount"] == amount


@given(data=st.data(), amount=signed_cents, balance=signed_cents)
def test_sheet_reads_typed_amounts_exactly(data: st.DataObject, amount: int, balance: int) -> None:
    row = {"Amount": data.draw(typed(amount, 2)), "Balance": data.draw(typed(balance, 2))}
    record = SHEET_INVOICES.to_canonical(row)
    assert (record["amount"], record["balance"]) == (amount, balance)
    payment = SHEET_PAYMENTS.to_canonical({"Amount": row["Amount"]})
    assert payment["amount"] == amount


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
