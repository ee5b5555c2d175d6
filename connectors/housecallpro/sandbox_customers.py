"""Customers in the HCP sandbox: field checks, search text and realistic generated ones."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from syncengine.connectors.housecallpro.sandbox_fields import (
    EPOCH,
    Errors,
    Record,
    add_error,
    check_address,
    check_email,
    check_string,
    check_tags,
    format_timestamp,
    hex_id,
)

CUSTOMER_STRING_FIELDS = (
    "first_name",
    "last_name",
    "email",
    "mobile_number",
    "home_number",
    "work_number",
    "company",
    "lead_source",
)
CUSTOMER_NAME_FIELDS = ("first_name", "last_name", "email", "mobile_number", "company")
"""A customer needs at least one of these."""
CUSTOMER_SORT_FIELDS = ("created_at", "updated_at", "first_name", "last_name", "email")


def check_customer_fields(body: Mapping[str, Any]) -> tuple[Record, Errors]:
    """The writable customer fields present in ``body``, checked; unknown keys are dropped.

    Returns the patch and the errors found (all of them, not just the first). Addresses keep
    a client-sent ``id`` for the caller to honour or replace.
    """
    patch: Record = {}
    errors: Errors = {}
    for name in CUSTOMER_STRING_FIELDS:
        if name not in body:
            continue
        if name == "email":
            patch[name] = check_email(body[name], name, errors)
        else:
            patch[name] = check_string(body[name], name, errors)
    if "notifications_enabled" in body:
        flag = body["notifications_enabled"]
        if isinstance(flag, bool):
            patch["notifications_enabled"] = flag
        else:
            add_error(errors, "notifications_enabled", "must be true or false")
    if "tags" in body:
        tags = check_tags(body["tags"], "tags", errors)
        if tags is not None:
            patch["tags"] = tags
    if "addresses" in body:
        addresses = body["addresses"]
        if addresses is None:
            patch["addresses"] = []
        elif isinstance(addresses, list):
            checked = [check_address(a, f"addresses[{i}]", errors) for i, a in enumerate(addresses)]
            patch["addresses"] = [a for a in checked if a is not None]
        else:
            add_error(errors, "addresses", "must be an array of objects")
    return patch, errors


def has_name(record: Mapping[str, Any]) -> bool:
    return any(
        isinstance(record.get(name), str) and record[name].strip() for name in CUSTOMER_NAME_FIELDS
    )


def blank_customer(customer_id: str, timestamp: str) -> Record:
    """A customer with every field of the spec's ``Customer``, all absent."""
    return {
        "id": customer_id,
        "first_name": None,
        "last_name": None,
        "email": None,
        "mobile_number": None,
        "home_number": None,
        "work_number": None,
        "company": None,
        "notifications_enabled": False,
        "lead_source": None,
        "tags": [],
        "addresses": [],
        "created_at": timestamp,
        "updated_at": timestamp,
    }


def copy_customer(record: Record) -> Record:
    """A copy deep enough that the caller can change it without touching the store."""
    return {
        **record,
        "tags": list(record["tags"]),
        "addresses": [dict(a) for a in record["addresses"]],
    }


def customer_search_text(record: Record) -> str:
    """What ``q`` searches: names, email, mobile (as stored and as digits), streets, cities."""
    first, last = record.get("first_name") or "", record.get("last_name") or ""
    mobile = record.get("mobile_number") or ""
    parts = [first, last, f"{first} {last}", record.get("email") or "", mobile]
    parts.append("".join(c for c in mobile if c.isdigit()))
    for address in record.get("addresses") or []:
        parts.append(address.get("street") or "")
        parts.append(address.get("city") or "")
    return "\n".join(parts)


# ------------------------------------------------------------------------------ seed data

_FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Carlos", "Karen", "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Sandra", "Mark", "Ashley",
    "Wei", "Priya", "Luis", "Fatima", "Kevin", "Emily", "Brian", "Maria", "Jose", "Aisha",
    "Andrew", "Olivia",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Nguyen", "Patel", "Kim", "Chen",
)  # fmt: skip
_COMPANIES = (
    "Acme Property Management", "Blue Oak Realty", "Summit Dental Group", "Riverside Cafe",
    "Northwind Offices", "Greenleaf Apartments", "Cedar Point HOA", "Lakeside Storage",
    "Pioneer Auto Body", "Harbor View Hotel",
)  # fmt: skip
_CITIES = (
    ("Austin", "TX", "787"), ("Denver", "CO", "802"), ("Phoenix", "AZ", "850"),
    ("Raleigh", "NC", "276"), ("Portland", "OR", "972"), ("Columbus", "OH", "432"),
    ("Nashville", "TN", "372"), ("Tampa", "FL", "336"), ("Boise", "ID", "837"),
    ("Madison", "WI", "537"),
)  # fmt: skip
_STREETS = (
    "Oak", "Maple", "Cedar", "Pine", "Elm", "Lakeview", "Sunset", "Highland", "Willow", "Park",
    "Mill", "Ridge", "Meadow", "Church", "Spring",
)  # fmt: skip
_STREET_SUFFIXES = ("St", "Ave", "Rd", "Ln", "Dr", "Blvd", "Ct", "Way")
_TAGS = ("vip", "residential", "commercial", "maintenance-plan", "referral", "warranty")
_LEAD_SOURCES = ("Google", "Yelp", "Referral", "Facebook", "Angi", "Nextdoor", "Website")


def _phone(rng: random.Random, used: set[str]) -> str:
    """A unique 555 number in one of the formats people type: (555) 201-3344, 555-201-3344,
    +15552013344."""
    while True:
        exchange, line = rng.randint(200, 999), rng.randint(0, 9999)
        digits = f"555{exchange:03d}{line:04d}"
        if digits not in used:
            used.add(digits)
            break
    style = rng.randrange(3)
    if style == 0:
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    if style == 1:
        return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"
    return f"+1{digits}"


def _address(rng: random.Random, kind: str) -> Record:
    city, state, zip_prefix = rng.choice(_CITIES)
    line_2 = None
    if rng.random() < 0.1:
        line_2 = f"{rng.choice(('Apt', 'Suite', 'Unit'))} {rng.randint(1, 400)}"
    return {
        "id": hex_id(rng, "adr_"),
        "type": kind,
        "street": f"{rng.randint(100, 9999)} {rng.choice(_STREETS)} {rng.choice(_STREET_SUFFIXES)}",
        "street_line_2": line_2,
        "city": city,
        "state": state,
        "zip": f"{zip_prefix}{rng.randint(0, 99):02d}",
        "country": "US",
    }


def generate_customers(count: int, random_seed: int = 0) -> list[Record]:
    """``count`` realistic customers; the same arguments always give identical records."""
    rng = random.Random(random_seed)
    phones: set[str] = set()
    customers: list[Record] = []
    created = EPOCH
    for n in range(1, count + 1):
        created += rng.randint(60, 3600)
        updated = created if rng.random() < 0.6 else created + rng.randint(60, 90 * 86400)
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        record = blank_customer(hex_id(rng, "cus_"), format_timestamp(created))
        record["updated_at"] = format_timestamp(updated)
        record["first_name"], record["last_name"] = first, last
        if rng.random() < 0.92:
            record["email"] = f"{first}.{last}{n}@example.com".lower()
        if rng.random() < 0.9:
            record["mobile_number"] = _phone(rng, phones)
        if rng.random() < 0.2:
            record["home_number"] = _phone(rng, phones)
        if rng.random() < 0.15:
            record["work_number"] = _phone(rng, phones)
        if rng.random() < 0.25:
            record["company"] = rng.choice(_COMPANIES)
        record["notifications_enabled"] = rng.random() < 0.7
        if rng.random() < 0.6:
            record["lead_source"] = rng.choice(_LEAD_SOURCES)
        record["tags"] = rng.sample(_TAGS, rng.choice((0, 0, 1, 1, 2)))
        addresses = []
        if rng.random() < 0.85:
            addresses.append(_address(rng, "service"))
        if rng.random() < 0.25:
            addresses.append(_address(rng, "billing"))
        record["addresses"] = addresses
        customers.append(record)
    return customers
