"""Round trips: native -> canonical -> native -> canonical is a fixed point, for every built-in
transform and every built-in mapping file.

The first read may lose information (a date-only column drops the time, stray spaces go), so
the property is about the second canonical value, not the second native one.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import zoneinfo
from decimal import Decimal
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine import model
from syncengine.errors import RecordError
from syncengine.mapping import load_mapping, load_mapping_file
from syncengine.transforms import build_transform, known_transforms

SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow])

# -------------------------------------------------------------------------------- strategies

PHONE_REGIONS = ["US", "CA", "GB", "DE", "FR", "AU", "IN", "MX", "IT", "JP", "BR", "SH"]
PHONE_STYLES = [
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.RFC3966,
]


def _example(region: str, style: int, kind: int) -> str:
    number = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(
        region
    )
    assert number is not None
    return str(phonenumbers.format_number(number, style))


real_phones = st.builds(
    _example,
    st.sampled_from(PHONE_REGIONS),
    st.sampled_from(PHONE_STYLES),
    st.sampled_from(
        [
            phonenumbers.PhoneNumberType.MOBILE,
            phonenumbers.PhoneNumberType.FIXED_LINE,
            phonenumbers.PhoneNumberType.TOLL_FREE,
        ]
    ),
)
us_phones = st.from_regex(
    r"\A(\+1|1)?[ .-]?\(?[2-9][0-9]{2}\)?[ .-]?[2-9][0-9]{2}[ .-]?[0-9]{4}"
    r"( ?(x|ext\.?) ?[0-9]{1,4})?\Z"
)
plus_phones = st.builds(
    lambda code, rest: f"+{code}{rest}",
    st.integers(1, 999),
    st.from_regex(r"\A[0-9 ()-]{0,16}\Z"),
)
phone_junk = st.text(alphabet="0123456789 +-().xext#*", max_size=22)
phones = st.one_of(real_phones, us_phones, plus_phones, phone_junk, st.text(max_size=20))

emails = st.one_of(
    st.emails(),
    st.emails().map(lambda e: f"  {e.upper()} "),
    st.text(max_size=30),
)
texts = st.text(max_size=30)
maybe = st.one_of(st.none(), st.just(""), st.just("   "))


@st.composite
def quantities(draw: st.DrawFn, *, grouped: bool = True) -> Any:
    """Quantities of up to 4 decimal places in the forms people and programs write them
    (``grouped``: thousands separators too, which a member reading quantities through a
    transform takes, and one holding them as plain decimals refuses as not a quantity)."""
    scaled = draw(st.integers(-(10**12), 10**12))
    number = Decimal(scaled).scaleb(-4)
    style = draw(st.integers(0, 4))
    if style == 0:
        return format(number, "f")
    if style == 1 and grouped:
        return f"{number:,f}"
    if style == 2:
        return number
    if style == 3:
        return float(number)
    return f" {number.normalize():f} "


@st.composite
def amounts(draw: st.DrawFn) -> Any:
    """Amounts of 0 to 10^10 cents in the forms people and programs write them."""
    cents = draw(st.integers(0, 10**10))
    negative = draw(st.booleans()) and cents > 0
    units, fraction = divmod(cents, 100)
    grouped = f"{units:,}"
    style = draw(st.integers(0, 6))
    if style == 0:
        text = f"{units}.{fraction:02d}"
    elif style == 1:
        text = f"{units}.{fraction:02d}".rstrip("0").rstrip(".") if fraction else f"{units}"
    elif style == 2:
        text = f"{grouped}.{fraction:02d}"
    elif style == 3:
        text = f"${grouped}.{fraction:02d}"
    elif style == 4:
        return Decimal(cents).scaleb(-2) * (-1 if negative else 1)
    elif style == 5 and not fraction:
        return -units if negative else units
    else:
        text = f" $ {units}.{fraction:02d} "
    if negative:
        text = draw(st.sampled_from([f"-{text.strip()}", f"({text.strip()})"]))
    return text


def _casing(words: list[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda word, style, pad: (
            pad + (word, word.upper(), word.lower(), word.title())[style] + pad
        ),
        st.sampled_from(words),
        st.integers(0, 3),
        st.sampled_from(["", " ", "  "]),
    )


@st.composite
def delimited(draw: st.DrawFn, sep: str) -> str:
    items = draw(st.lists(st.text(max_size=12).filter(lambda t: sep not in t), max_size=6))
    joiner = draw(st.sampled_from([sep, f"{sep} ", f" {sep} "]))
    return joiner.join(items)


UTC = dt.UTC
moments = st.datetimes(
    min_value=dt.datetime(1900, 1, 2), max_value=dt.datetime(2199, 12, 30), timezones=st.just(UTC)
)


def formatted_moments(fmt: str, zone: str) -> st.SearchStrategy[Any]:
    tz = zoneinfo.ZoneInfo(zone)
    as_text = moments.map(lambda m: m.astimezone(tz).strftime(fmt))
    as_objects = moments.map(lambda m: m.astimezone(tz).replace(tzinfo=None))
    return st.one_of(as_text, as_objects, moments.map(lambda m: m.date()))


MAP_VALUES = {"Active": "active", "On Hold": "paused", "Closed": "closed", "1": "one"}

TRANSFORM_CASES: list[tuple[Any, st.SearchStrategy[Any]]] = [
    ("phone", phones),
    ({"name": "phone", "format": "national"}, phones),
    ({"name": "phone", "format": "international"}, phones),
    ({"name": "phone", "format": "national", "region": "GB"}, phones),
    ("email", emails),
    ("lower", texts),
    ("upper", texts),
    ("strip", texts),
    ("str", st.one_of(texts, st.integers())),
    (
        "int",
        st.one_of(st.integers(), st.integers().map(str), st.integers().map(lambda i: f"{i}.0")),
    ),
    ("cents", amounts()),
    ("decimal", quantities()),
    ({"name": "decimal", "as_number": True}, quantities()),
    ({"name": "cents", "places": 3}, amounts()),
    ("list", st.one_of(delimited(","), texts, st.lists(texts, max_size=5))),
    ({"name": "list", "sep": ";"}, st.one_of(delimited(";"), texts)),
    ("bool", st.one_of(_casing(["yes", "no", "true", "false", "1", "0"]), st.booleans())),
    ({"name": "bool", "true": "Y", "false": "N"}, _casing(["y", "n", "yes", "no"])),
    ({"name": "map", "values": MAP_VALUES}, _casing(list(MAP_VALUES))),
    (
        {"name": "map", "values": MAP_VALUES, "unknown": "keep"},
        st.one_of(_casing(["active"]), texts),
    ),
    ("date", formatted_moments("%Y-%m-%d", "UTC")),
    (
        {"name": "date", "timezone": "America/New_York"},
        formatted_moments("%Y-%m-%d", "America/New_York"),
    ),
    (
        {"name": "date", "format": "%m/%d/%Y %H:%M", "timezone": "America/New_York"},
        formatted_moments("%m/%d/%Y %H:%M", "America/New_York"),
    ),
    (
        {"name": "date", "format": "%d.%m.%Y %H:%M:%S", "timezone": "Australia/Lord_Howe"},
        formatted_moments("%d.%m.%Y %H:%M:%S", "Australia/Lord_Howe"),
    ),
    (
        {"name": "date", "format": "%Y-%m-%dT%H:%M:%S%z", "timezone": "Europe/Berlin"},
        formatted_moments("%Y-%m-%dT%H:%M:%S%z", "Europe/Berlin"),
    ),
]


def _case_id(case: tuple[Any, Any]) -> str:
    spec = case[0]
    if isinstance(spec, str):
        return spec
    return "-".join(str(v) for v in spec.values() if not isinstance(v, dict))


def test_every_built_in_transform_has_a_round_trip_case() -> None:
    covered = {spec if isinstance(spec, str) else spec["name"] for spec, _ in TRANSFORM_CASES}
    assert set(known_transforms()) <= covered


@pytest.mark.parametrize(("spec", "natives"), TRANSFORM_CASES, ids=map(_case_id, TRANSFORM_CASES))
@SETTINGS
@given(data=st.data())
def test_transform_round_trip_is_a_fixed_point(
    spec: Any, natives: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    transform = build_transform(spec, "test")
    native = data.draw(natives, label="native")
    first = transform.read(native)
    written = transform.write(first)
    second = transform.read(written)
    assert second == first, (native, first, written)
    assert transform.write(second) == written


# ----------------------------------------------------------------------------- mapping files


def _address(kind: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": kind},
        optional={
            "id": st.text(min_size=1, max_size=8),
            **{part: st.one_of(texts, maybe) for part in model.ADDRESS_PARTS},
        },
    )


iso_moments = st.one_of(
    moments.map(lambda m: m.isoformat()),
    moments.map(lambda m: m.strftime("%Y-%m-%dT%H:%M:%SZ")),
    moments.map(lambda m: m.astimezone(zoneinfo.ZoneInfo("America/Chicago")).isoformat()),
)

hcp_customers = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=10)},
    optional={
        "first_name": st.one_of(texts, maybe),
        "last_name": st.one_of(texts, maybe),
        "email": st.one_of(emails, maybe),
        "mobile_number": st.one_of(phones, maybe),
        "home_number": st.one_of(phones, maybe),
        "work_number": st.one_of(phones, maybe),
        "company": st.one_of(texts, maybe),
        "notifications_enabled": st.one_of(st.booleans(), st.none()),
        "lead_source": st.one_of(texts, maybe),
        "tags": st.one_of(st.lists(texts, max_size=5), st.none()),
        "addresses": st.lists(
            _address(st.sampled_from(["service", "billing", "other"])), max_size=4
        ),
        "created_at": st.one_of(iso_moments, st.none()),
        "updated_at": st.one_of(iso_moments, st.none()),
        "unmapped": st.integers(),
    },
)

spreadsheet_rows = st.fixed_dictionaries(
    {"Sync ID": st.one_of(st.just(""), st.uuids().map(str))},
    optional={
        "First Name": st.one_of(texts, maybe),
        "Last Name": st.one_of(texts, maybe),
        "Email": st.one_of(emails, maybe),
        "Mobile": st.one_of(phones, maybe),
        "Home Phone": st.one_of(phones, maybe),
        "Work Phone": st.one_of(phones, maybe),
        "Company": st.one_of(texts, maybe),
        "Tags": st.one_of(delimited(","), texts, maybe),
        "Street": st.one_of(texts, maybe),
        "City": st.one_of(texts, maybe),
        "State": st.one_of(texts, maybe),
        "Zip": st.one_of(texts, maybe),
        "Notes": texts,
    },
)


# Invoices, payments and jobs. References are plain strings at mapping level: the member's id
# of the record referred to (HCP ``cus_…``, memory ``m12``), or with ``ref_by`` a field of it
# (the sheet's ``Customer Email``, ``Invoice #``); the engine resolves them, not the mapping.


def hcp_ids(prefix: str) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789abcdef", min_size=6, max_size=32).map(
        lambda h: f"{prefix}_{h}"
    )


def enum_words(choices: tuple[str, ...]) -> st.SearchStrategy[str]:
    """An enum value as a person or an API writes it: ``in_progress``, ``In Progress``,
    ``IN-PROGRESS``, `` complete rated ``."""
    return st.builds(
        lambda word, sep, style, pad: (
            pad
            + (str.lower, str.upper, str.title, str.capitalize)[style](word.replace("_", sep))
            + pad
        ),
        st.sampled_from(choices),
        st.sampled_from(["_", " ", "-", "  "]),
        st.integers(0, 3),
        st.sampled_from(["", " ", "  "]),
    )


def exact_words(choices: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(choices)


hcp_cents = st.one_of(st.integers(-(10**10), 10**10), st.none())
hcp_moments = st.one_of(iso_moments, st.none())
names = st.one_of(texts, maybe)

hcp_address = st.fixed_dictionaries(
    {"id": hcp_ids("adr"), "type": st.sampled_from(["service", "billing"])},
    optional={part: st.one_of(texts, maybe) for part in model.ADDRESS_PARTS},
)

hcp_jobs = st.fixed_dictionaries(
    {"id": hcp_ids("job")},
    optional={
        "customer_id": st.one_of(hcp_ids("cus"), maybe),
        "description": names,
        # the spec's enum (in_progress) and the live API's (in progress, complete rated)
        "work_status": st.one_of(
            exact_words(model.JOB_STATUSES),
            exact_words(model.JOB_STATUSES).map(lambda w: w.replace("_", " ")),
            st.none(),
        ),
        "schedule": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "scheduled_start": hcp_moments,
                    "scheduled_end": hcp_moments,
                    "arrival_window": st.integers(0, 600),
                },
            ),
        ),
        "total_amount": hcp_cents,
        "outstanding_balance": hcp_cents,
        "notes": names,
        "tags": st.one_of(st.lists(texts, max_size=5), st.none()),
        "created_at": hcp_moments,
        "updated_at": hcp_moments,
        # unmapped: kept as they are
        "invoice_number": st.from_regex(r"\A[0-9]{1,6}\Z"),
        "address": hcp_address,
        "work_timestamps": st.fixed_dictionaries(
            {},
            optional={
                "on_my_way_at": hcp_moments,
                "started_at": hcp_moments,
                "completed_at": hcp_moments,
            },
        ),
        "assigned_employees": st.lists(
            st.fixed_dictionaries({"id": hcp_ids("pro"), "first_name": texts}), max_size=2
        ),
    },
)

hcp_invoices = st.fixed_dictionaries(
    {"id": st.one_of(hcp_ids("inv"), st.uuids().map(str))},
    optional={
        "invoice_number": st.one_of(st.from_regex(r"\A[0-9]{1,7}(-[0-9]{1,2})?\Z"), names),
        "customer_id": st.one_of(hcp_ids("cus"), maybe),
        "job_id": st.one_of(hcp_ids("job"), maybe),
        "status": st.one_of(exact_words(model.INVOICE_STATUSES), st.none()),
        "amount": hcp_cents,
        "subtotal": hcp_cents,
        "tax_amount": hcp_cents,
        "outstanding_balance": hcp_cents,
        "due_at": hcp_moments,
        "created_at": hcp_moments,
        # unmapped (the live API's extras)
        "due_amount": hcp_cents,
        "sent_at": hcp_moments,
        "paid_at": hcp_moments,
    },
)

CENTS = build_transform("cents", "the sheet's money")
"""How the spreadsheet mappings read an amount cell."""


def refunds_within(entity: str, refund: str, amount: str, read: Any = None) -> Any:
    """A map for drawn payments: a refund their own amount rules out (above it, or below 0:
    a record-level problem, ``model.check_refund``) is left out, since these records must
    read; the rest keep whatever form they were drawn in."""

    def value(raw: Any) -> Any:
        try:
            return model.norm_int(read(raw) if read is not None and raw not in (None, "") else raw)
        except (ValueError, TypeError):
            return None

    def keep(record: dict[str, Any]) -> dict[str, Any]:
        if entity != "payments" or refund not in record:
            return record
        canonical = {"refunded_amount": value(record[refund]), "amount": value(record.get(amount))}
        if model.check_refund(canonical):
            return {k: v for k, v in record.items() if k != refund}
        return record

    return keep


hcp_payments = st.fixed_dictionaries(
    {"id": hcp_ids("pmt"), "invoice_id": st.one_of(hcp_ids("inv"), st.uuids().map(str))},
    optional={
        "amount": hcp_cents,
        "refunded_amount": hcp_cents,
        "payment_method": st.one_of(exact_words(model.PAYMENT_METHODS), st.none()),
        "status": st.one_of(exact_words(model.PAYMENT_STATUSES), st.none()),
        "processed_at": hcp_moments,
        "note": names,
        "category": texts,  # unmapped (nested payments carry it)
    },
).map(refunds_within("payments", "refunded_amount", "amount"))


def sheet_dates(zone: str) -> st.SearchStrategy[Any]:
    """A date column as typed (the mapping's format) or as a workbook cell gives it."""
    return st.one_of(formatted_moments("%Y-%m-%d", zone), maybe)


def sheet_amounts() -> st.SearchStrategy[Any]:
    """An amount cell as typed ("1,234.50", "$12", "12.5", "(3.00)") or as a workbook gives
    it (an int, a float of whole cents)."""
    return st.one_of(
        amounts(),
        st.integers(-(10**10), 10**10).map(lambda c: c / 100),
        maybe,
    )


def sheet_invoices(zone: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"Sync ID": st.one_of(st.just(""), st.uuids().map(str))},
        optional={
            "Invoice #": st.one_of(st.from_regex(r"\A *[0-9]{1,7} *\Z"), names),
            "Customer Email": st.one_of(emails, maybe),
            "Status": st.one_of(enum_words(model.INVOICE_STATUSES), maybe),
            "Subtotal": sheet_amounts(),
            "Tax": sheet_amounts(),
            "Amount": sheet_amounts(),
            "Balance": sheet_amounts(),
            "Due Date": sheet_dates(zone),
            "Created": sheet_dates(zone),
            "Notes": texts,  # a column of the bookkeeper's own
        },
    )


def sheet_payments(zone: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"Sync ID": st.one_of(st.just(""), st.uuids().map(str))},
        optional={
            "Invoice #": st.one_of(st.from_regex(r"\A *[0-9]{1,7} *\Z"), names),
            "Amount": sheet_amounts(),
            "Refunded": sheet_amounts(),
            "Method": st.one_of(enum_words(model.PAYMENT_METHODS), maybe),
            "Status": st.one_of(enum_words(model.PAYMENT_STATUSES), maybe),
            "Date": sheet_dates(zone),
            "Checked": st.sampled_from(["", "x", "yes"]),
        },
    ).map(refunds_within("payments", "Refunded", "Amount", CENTS.read))


line_kinds = st.one_of(
    enum_words(model.LINE_KINDS), st.sampled_from([a for a, _ in model.LINE_KIND_ALIASES])
)
hcp_quantities = st.one_of(
    st.integers(-(10**6), 10**6),
    st.integers(-(10**10), 10**10).map(lambda q: float(Decimal(q).scaleb(-4))),
    st.none(),
)

hcp_lines = st.fixed_dictionaries(
    {"uuid": st.uuids().map(str), "job_id": hcp_ids("job"), "position": st.integers(1, 500)},
    optional={
        "invoice_id": st.one_of(hcp_ids("inv"), st.uuids().map(str)),
        "name": names,
        "description": names,
        "kind": st.one_of(line_kinds, st.none()),
        "quantity": hcp_quantities,
        "unit_price": hcp_cents,
        "unit_cost": hcp_cents,
        "taxable": st.one_of(st.booleans(), st.none()),
        "amount": hcp_cents,
        "service_item_id": st.one_of(hcp_ids("mat"), st.none()),
        "service_item_type": texts,  # unmapped
    },
)


def sheet_lines() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"Sync ID": st.one_of(st.just(""), st.uuids().map(str))},
        optional={
            "Invoice #": st.one_of(st.from_regex(r"\A *[0-9]{1,7} *\Z"), names),
            "Item": names,
            "Description": names,
            "Kind": st.one_of(line_kinds, maybe),
            "Quantity": st.one_of(quantities(), maybe),
            "Unit Price": sheet_amounts(),
            "Unit Cost": sheet_amounts(),
            "Taxable": st.one_of(_casing(["yes", "no", "true", "false", "1", "0"]), maybe),
            "Amount": sheet_amounts(),
            "Checked": st.sampled_from(["", "x"]),  # a column of the bookkeeper's own
        },
    )


rest_lines = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(1, 10**6), st.uuids().map(str))},
    optional={
        "invoiceId": st.one_of(st.integers(1, 10**6).map(str), st.none()),
        "name": names,
        "description": names,
        "kind": st.one_of(line_kinds, st.none()),
        "quantity": st.one_of(quantities(), st.none()),
        "unitPrice": hcp_cents,
        "unitCost": hcp_cents,
        "taxable": st.one_of(st.booleans(), st.none()),
        "amount": hcp_cents,
        "serviceItemId": names,
        "position": st.one_of(st.integers(1, 500), st.none()),
    },
)


rest_customers = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(1, 10**6), st.uuids().map(str))},
    optional={
        "firstName": names,
        "lastName": names,
        "email": st.one_of(emails, maybe),
        "phone": st.one_of(phones, maybe),
        "company": names,
        "tags": st.one_of(st.lists(texts, max_size=5), st.none()),
        "address": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {}, optional={k: names for k in ("street", "city", "state", "zip", "country")}
            ),
        ),
        "updatedAt": hcp_moments,
        "vip": st.booleans(),  # unmapped
    },
)

# records of a CRM that nests its fields under "properties" (mappings/rest/crm-properties.toml)
crm_properties_contacts = st.fixed_dictionaries(
    {
        "id": st.integers(1, 10**9).map(str),
        "properties": st.fixed_dictionaries(
            {},
            optional={
                **{
                    key: names
                    for key in ("firstname", "lastname", "company", "address", "city", "state")
                },
                "zip": names,
                "email": st.one_of(emails, maybe),
                "phone": st.one_of(phones, maybe),
                "hs_object_id": st.integers(1, 10**9).map(str),  # the CRM's own, unmapped
                "lifecyclestage": texts,  # unmapped
            },
        ),
    },
    optional={"updatedAt": hcp_moments, "createdAt": hcp_moments, "archived": st.booleans()},
)

memory_ids = st.one_of(st.from_regex(r"\A[mt][0-9]{1,5}\Z"), st.uuids().map(lambda u: u.hex))


def _memory_value(spec: model.FieldSpec) -> st.SearchStrategy[Any]:
    by_type: dict[str, st.SearchStrategy[Any]] = {
        "str": texts,
        "email": emails,
        "phone": phones,
        "bool": st.one_of(st.booleans(), _casing(["yes", "no", "true", "false"])),
        "tags": st.one_of(st.lists(texts, max_size=5), delimited(",")),
        "datetime": iso_moments,
        "cents": st.one_of(
            st.integers(-(10**10), 10**10),
            st.integers(-(10**10), 10**10).map(str),
            st.integers(-(10**10), 10**10).map(lambda c: f" {c} "),
        ),
        "enum": enum_words(spec.choices),
        "ref": memory_ids,
        "decimal": quantities(grouped=False),
        "int": st.one_of(st.integers(-(10**6), 10**6), st.integers(1, 999).map(str)),
    }
    return st.one_of(by_type[spec.type], maybe)


def memory_records(entity: str) -> st.SearchStrategy[dict[str, Any]]:
    """A memory member's record: native names are the canonical names, of every type."""
    mapping = load_mapping("memory", entity)
    spec = mapping.entity
    fields = {}
    for f in mapping.fields:
        fspec = spec.field_spec(f.canonical)
        assert fspec is not None
        fields[f.native] = _memory_value(fspec)
    return st.fixed_dictionaries({}, optional=fields).map(
        refunds_within(entity, "refunded_amount", "amount")
    )


MappingCase = tuple[str, str, str | None, st.SearchStrategy[dict[str, Any]]]
"""(connector type, entity, the member's timezone option, native records)."""

# built-in mapping files that are starting points rather than defaults: file name -> entity
STARTING_POINTS = {("rest", "crm-properties"): "customers"}

MAPPING_CASES: list[MappingCase] = [
    ("housecallpro", "customers", None, hcp_customers),
    ("housecallpro", "jobs", None, hcp_jobs),
    ("housecallpro", "invoices", None, hcp_invoices),
    ("housecallpro", "payments", None, hcp_payments),
    ("housecallpro", "line_items", None, hcp_lines),
    ("rest", "line_items", None, rest_lines),
    ("spreadsheet", "line_items", None, sheet_lines()),
    ("rest", "customers", None, rest_customers),
    ("rest", "crm-properties", None, crm_properties_contacts),
    ("spreadsheet", "customers", None, spreadsheet_rows),
    ("spreadsheet", "invoices", None, sheet_invoices("UTC")),
    ("spreadsheet", "invoices", "America/Chicago", sheet_invoices("America/Chicago")),
    ("spreadsheet", "payments", None, sheet_payments("UTC")),
    ("spreadsheet", "payments", "Australia/Lord_Howe", sheet_payments("Australia/Lord_Howe")),
    *(
        ("memory", entity, None, memory_records(entity))
        for entity in ("customers", "jobs", "invoices", "payments", "line_items")
    ),
]


def _mapping_case_id(case: MappingCase) -> str:
    connector, entity, zone, _ = case
    return f"{connector}-{entity}" + (f"-{zone}" if zone else "")


@pytest.mark.parametrize(
    ("connector", "entity", "zone", "natives"),
    MAPPING_CASES,
    ids=map(_mapping_case_id, MAPPING_CASES),
)
@SETTINGS
@given(data=st.data())
def test_mapping_round_trip_is_a_fixed_point(
    connector: str,
    entity: str,
    zone: str | None,
    natives: st.SearchStrategy[dict[str, Any]],
    data: st.DataObject,
) -> None:
    if (connector, entity) in STARTING_POINTS:
        path = importlib.resources.files("syncengine.mappings") / connector / f"{entity}.toml"
        with importlib.resources.as_file(path) as file:
            mapping = load_mapping_file(
                file, entity=STARTING_POINTS[connector, entity], timezone=zone
            )
    else:
        mapping = load_mapping(connector, entity, timezone=zone)
    native = data.draw(natives, label="native")
    snapshot = repr(native)

    try:
        first = mapping.to_canonical(native)
    except RecordError as exc:
        # a line drawn without a quantity or a price, a payment whose invoice cell is blank:
        # that record's problem, refused, never read as a value cleared
        # (``EntitySpec.required``, ``EntitySpec.belongs_to``)
        owner = mapping.entity.belongs_to
        assert (mapping.entity.required and "every line needs one" in str(exc)) or (
            owner and f"every {mapping.entity.name[:-1]} belongs to" in str(exc)
        ), exc
        return
    patch = mapping.to_native(first)
    updated = mapping.apply_patch(native, patch)
    second = mapping.to_canonical(updated)
    assert second == first, (patch, updated)
    assert repr(native) == snapshot  # the input is never mutated

    # a record created from the canonical values alone reads back the same written fields
    created = mapping.build_native(patch)
    third = mapping.to_canonical(created)
    writable = mapping.writable
    assert {k: third.get(k) for k in writable} == {k: first.get(k) for k in writable}

    # and writing again changes nothing
    assert mapping.to_native(second) == patch


def test_every_built_in_mapping_file_has_a_round_trip_case() -> None:
    root = importlib.resources.files("syncengine.mappings")
    files = {
        (folder.name, file.name.removesuffix(".toml"))
        for folder in root.iterdir()
        if folder.is_dir()
        for file in folder.iterdir()
        if file.name.endswith(".toml")
    }
    assert files
    assert files <= {(c, e) for c, e, _, _ in MAPPING_CASES}
