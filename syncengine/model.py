"""The canonical schema: the fields each entity has inside the engine, and their normal forms.

A canonical record is a flat ``dict[str, Any]`` keyed by canonical field names. Nested
things are flattened with dots (``addresses.service.city``) so that the three-way merge works
field by field. Values are always in normal form:

- ``str``: stripped; empty strings become ``None`` (an empty cell and a missing value agree)
- ``email``: stripped and lower-cased
- ``phone``: E.164 (``+15551234567``) where parseable, else the stripped original
- ``bool``: ``True`` / ``False``
- ``tags``: a sorted list without duplicates (a set with a stable order)
- ``datetime``: ISO 8601 in UTC with a ``Z`` suffix, seconds precision
- ``cents``: ``int``
- ``decimal``: an exact decimal number as canonical text, ``"1.5"``, ``"2"``, ``"-0.25"``: no
  exponent, no ``+``, no trailing zeros after the point, ``"0"`` for zero, at most the field's
  ``places`` decimal places (4 for a line item's ``quantity``; more is a bad value, never
  rounded). Text, not ``Decimal`` nor ``float``: it is what JSON holds exactly, so the state
  store (``jsoncodec``), the native and canonical hashes and every comparison see the same
  value whatever member it came from (``1.50`` typed in a sheet and ``1.5`` sent by an API are
  one value). ``decimal_value`` gives the ``Decimal`` to compute with.
- ``enum``: one of the field's ``choices``, lower-case with ``_`` for spaces and hyphens
  (``"In Progress"`` is ``in_progress``); anything else is a bad value
- ``ref``: the hub key of a record of the entity the field ``ref``ers to. A mapping reads a
  member's native form of the reference (its native id, or a human key such as the customer's
  email with ``ref_by``) and the engine resolves it through the link table or the hub.

Integrator fields ``custom.<name>`` are strings unless a transform gives another type.

Money below the total: an invoice's ``subtotal`` and ``tax_amount`` are held where a member
gives them (``amount`` is their sum there; ``reconcile-report`` checks it, a read does not
refuse it), and a payment's ``refunded_amount`` is what was given back of it, from 0 up to its
``amount``: a refund changes the payment, it is never a payment of its own. A member's record
that breaks such a rule between its own fields (``EntitySpec.checks``) is a record-level
problem naming the field, never a crash.

Line items (``line_items``) are an invoice's lines: what was sold (``name``, ``description``,
``kind``), how much (``quantity``, a ``decimal``) at what ``unit_price`` (cents), what it cost
the business (``unit_cost``), whether it is ``taxable``, and its ``amount`` in cents, which is
``quantity × unit_price`` rounded half to even (``line_amount``; like an invoice's totals it is
held as a member gives it, and ``reconcile-report`` checks it). ``position`` is the line's
place on its invoice (1, 2, …). A line has no match key; a lost state store finds its copies by
invoice, position and name (``relink_keys``).

Metadata fields (``created_at``, ``updated_at``) are read for the ``newest`` conflict rule and
shown in diffs, but they are never merged or written to another member.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import phonenumbers

FieldType = Literal[
    "str", "email", "phone", "bool", "tags", "datetime", "cents", "int", "enum", "ref", "decimal"
]

Record = dict[str, Any]
"""A canonical record: canonical field name -> normal-form value."""

DELETED = "_deleted"
"""Marks a hub record deleted while some member still holds it (see reconcile)."""

UNSEEN = "_unseen"
"""In a link's last-seen record: the fields whose value on the member the sync does not
know (a column the sheet lacked while the record, or that field, could not be written);
their last-seen values, where known, stay beside. A value read there later is no change of
the member's when it is empty, the last-seen value or the base's (see reconcile)."""


def unseen_in(last_seen: Mapping[str, Any] | None) -> frozenset[str]:
    """The fields a link's last-seen record marks ``UNSEEN`` (none without a record)."""
    return frozenset(last_seen.get(UNSEEN) or ()) if last_seen is not None else frozenset()


class FieldProblem(NamedTuple):
    """A canonical field whose value a record's other fields rule out, and why."""

    field: str
    message: str


RecordCheck = Callable[[Record], list[FieldProblem]]
"""A rule between the fields of one canonical record: the fields that break it, or none."""


@dataclass(frozen=True)
class Derived:
    """A field that follows others (a line's ``amount`` follows its quantity and unit price):
    when a merge takes a change of one of ``sources`` and no member changed ``field``, the
    new base's ``field`` is ``compute`` of the new base (None: left as it was), so every member
    is written the same value at once rather than when the member that computes it is read
    again."""

    field: str
    sources: tuple[str, ...]
    compute: Callable[[Record], Any]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType = "str"
    meta: bool = False
    """Metadata: read, shown, used by ``newest``; never merged or written."""
    choices: tuple[str, ...] = ()
    """``enum`` fields: the values allowed, in normal form."""
    ref: str = ""
    """``ref`` fields: the entity referred to."""
    label: str = ""
    """How a person calls the field in messages (``payment status``); defaults to the name."""
    aliases: tuple[tuple[str, str], ...] = ()
    """``enum`` fields: other words for a choice, read as it (``("gratuity", "tip")``)."""
    places: int = 4
    """``decimal`` fields: the most decimal places a value may have."""

    def normalise(self, value: Any) -> Any:
        """The normal form of a value of this field. Raises ``ValueError`` on bad input."""
        if self.type == "enum":
            return norm_enum(value, self.choices, self.label or self.name, dict(self.aliases))
        if self.type == "decimal":
            return norm_decimal(value, self.places, self.label or self.name)
        return NORMALISERS[self.type](value)


@dataclass(frozen=True)
class EntitySpec:
    name: str
    fields: tuple[FieldSpec, ...]
    match_keys: tuple[str, ...] = ()
    """Default fields used to link a new record to an existing one, in order of preference."""
    relink_keys: tuple[tuple[str, ...], ...] = ()
    """Field combinations that also link a new record when the state knows nothing of a
    member's records (a lost or restored state store, a member joining): every field holds a
    value and they agree, and only one record on each side has them (``match``)."""
    sorted_by: tuple[str, ...] = ()
    """For an entity without a match key: fields that together tell that rows were sorted
    without their id column (a row took another record's values while that record's own row
    changed too: ``integrity.hold_swapped_identities``)."""
    depends_on: tuple[str, ...] = ()
    """Entities a pipeline must sync with this one (its required references)."""
    checks: tuple[RecordCheck, ...] = ()
    """Rules between a record's own fields that every member's record must keep (checked
    when a member's record is read; a field a member does not give is not checked)."""
    derived: tuple[Derived, ...] = ()
    """Fields that follow others in a merge (``Derived``)."""
    required: tuple[str, ...] = ()
    """Fields a record must hold wherever a member's mapping reads them: a blank one is that
    record's problem (a line without a quantity or a price), never a value to clear."""
    belongs_to: str = ""
    """The reference every record of the entity is part of (a payment's invoice): a record
    a member gives without it, where the member's mapping reads it, is that record's problem
    (a totals row typed under the payments), never a record of its own."""
    assigned: tuple[str, ...] = ()
    """Fields a member that owns them (reads, never takes) may set itself when it takes a
    write (a line's place on its job): what it answers there is its own change, synced to
    the others by the next run, not taken for what it already agreed with."""
    by_name: dict[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    def field_spec(self, name: str) -> FieldSpec | None:
        """The spec of a canonical field; ``custom.*`` fields are accepted as strings."""
        spec = self.by_name.get(name)
        if spec is None and name.startswith("custom.") and len(name) > len("custom."):
            return FieldSpec(name, "str")
        return spec

    def is_meta(self, name: str) -> bool:
        spec = self.by_name.get(name)
        return bool(spec and spec.meta)

    @property
    def refs(self) -> dict[str, str]:
        """Reference fields -> the entity each refers to."""
        return {f.name: f.ref for f in self.fields if f.type == "ref"}


ADDRESS_TYPES = ("service", "billing")
ADDRESS_PARTS = ("street", "street_line_2", "city", "state", "zip", "country")

CUSTOMER = EntitySpec(
    name="customers",
    fields=(
        FieldSpec("first_name"),
        FieldSpec("last_name"),
        FieldSpec("email", "email"),
        FieldSpec("mobile_number", "phone"),
        FieldSpec("home_number", "phone"),
        FieldSpec("work_number", "phone"),
        FieldSpec("company"),
        FieldSpec("notifications_enabled", "bool"),
        FieldSpec("lead_source"),
        FieldSpec("tags", "tags"),
        *(
            FieldSpec(f"addresses.{kind}.{part}")
            for kind in ADDRESS_TYPES
            for part in ADDRESS_PARTS
        ),
        FieldSpec("created_at", "datetime", meta=True),
        FieldSpec("updated_at", "datetime", meta=True),
    ),
    match_keys=("email", "mobile_number"),
    relink_keys=(
        ("first_name", "last_name", "addresses.service.street", "addresses.service.city"),
        # a customer with no address on one side: a full name unique on both sides
        ("first_name", "last_name"),
    ),
)

JOB_STATUSES = (
    # the spec's enum, then what the live API sends ("needs scheduling", "complete rated")
    "unscheduled",
    "scheduled",
    "in_progress",
    "complete",
    "completed_unrated",
    "user_canceled",
    "pro_canceled",
    "needs_scheduling",
    "complete_rated",
    "complete_unrated",
)
INVOICE_STATUSES = ("draft", "open", "sent", "paid", "voided", "canceled")
"""The spec's enum plus ``open``, which the live API sends for unpaid invoices."""
PAYMENT_METHODS = ("cash", "check", "credit_card", "ach", "other")
PAYMENT_STATUSES = ("succeeded", "pending", "failed", "refunded")

JOB = EntitySpec(
    name="jobs",
    fields=(
        FieldSpec("customer", "ref", ref="customers"),
        FieldSpec("description"),
        FieldSpec("work_status", "enum", choices=JOB_STATUSES, label="job status"),
        FieldSpec("scheduled_start", "datetime"),
        FieldSpec("scheduled_end", "datetime"),
        FieldSpec("total_amount", "cents"),
        FieldSpec("outstanding_balance", "cents"),
        FieldSpec("notes"),
        FieldSpec("tags", "tags"),
        FieldSpec("created_at", "datetime", meta=True),
        FieldSpec("updated_at", "datetime", meta=True),
    ),
    depends_on=("customers",),
)

INVOICE = EntitySpec(
    name="invoices",
    fields=(
        FieldSpec("invoice_number"),
        FieldSpec("customer", "ref", ref="customers"),
        FieldSpec("job", "ref", ref="jobs"),
        FieldSpec("status", "enum", choices=INVOICE_STATUSES, label="invoice status"),
        FieldSpec("amount", "cents"),
        # what the amount is made of, where a member gives it: amount = subtotal + tax_amount
        FieldSpec("subtotal", "cents"),
        FieldSpec("tax_amount", "cents"),
        FieldSpec("balance", "cents"),
        FieldSpec("due_at", "datetime"),
        # the invoice's date: part of the books, so synced (HCP sets it, a sheet shows it)
        FieldSpec("created_at", "datetime"),
        FieldSpec("updated_at", "datetime", meta=True),
    ),
    match_keys=("invoice_number",),
    depends_on=("customers",),  # and jobs, where the pipeline syncs them
    # HCP dates an invoice created elsewhere and computes its balance: what it answers is
    # what every member shows next (a date typed into the books cannot be kept in HCP)
    assigned=("balance", "created_at"),
)


def check_refund(record: Record) -> list[FieldProblem]:
    """A payment's ``refunded_amount`` is at least 0 and at most its ``amount``: more than
    was paid cannot be given back. Not checked where the member gives no refund, or no
    amount to hold it against; a payment of a negative amount (a credit) refunds nothing."""
    refunded = record.get("refunded_amount")
    if not isinstance(refunded, int) or refunded == 0:
        return []
    if refunded < 0:
        return [
            FieldProblem(
                "refunded_amount",
                f"refunded {_dollars(refunded)} is negative: enter what was given back as a "
                "positive amount (or 0)",
            )
        ]
    amount = record.get("amount")
    if isinstance(amount, int) and refunded > amount:
        return [
            FieldProblem(
                "refunded_amount",
                f"refunded {_dollars(refunded)} is more than the payment's amount "
                f"{_dollars(amount)}: a refund is at most the payment it gives back",
            )
        ]
    return []


def _dollars(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    units, fraction = divmod(abs(cents), 100)
    return f"{sign}${units:,}.{fraction:02d}"


PAYMENT = EntitySpec(
    name="payments",
    fields=(
        FieldSpec("invoice", "ref", ref="invoices"),
        FieldSpec("amount", "cents"),
        # what was given back of it (0 .. amount): a refund is a change of the payment
        FieldSpec("refunded_amount", "cents"),
        FieldSpec("method", "enum", choices=PAYMENT_METHODS, label="payment method"),
        FieldSpec("status", "enum", choices=PAYMENT_STATUSES, label="payment status"),
        FieldSpec("paid_at", "datetime"),
        FieldSpec("note"),
    ),
    # no match key: two payments of one amount on one invoice are common. A lost state
    # store still finds each one's copies when the whole combination is unique.
    relink_keys=(
        ("invoice", "amount", "paid_at", "method"),
        # a method corrected on one side since the last sync
        ("invoice", "amount", "paid_at"),
        # a date corrected too (a mistyped Sync ID and a date fixed in the same edit)
        ("invoice", "amount"),
    ),
    sorted_by=("invoice", "amount"),
    depends_on=("invoices",),
    belongs_to="invoice",
    checks=(check_refund,),
)

LINE_KINDS = ("labor", "materials", "discount", "tip", "other")
"""What a line sells. HCP's own enumeration is UNCONFIRMED: ``labor`` is seen live,
materials, discounts and gratuities are reported by integrators; the aliases below read the
words they are reported under. A kind none of these names is a bad value (the line is reported
and left alone), never guessed."""
LINE_KIND_ALIASES = (
    ("labour", "labor"),
    ("material", "materials"),
    ("gratuity", "tip"),
    ("tips", "tip"),
    ("discounts", "discount"),
)
QUANTITY_PLACES = 4
"""A line's quantity has at most this many decimal places (1.5 hours, 0.25 gallons)."""

LINE_ITEM = EntitySpec(
    name="line_items",
    fields=(
        FieldSpec("invoice", "ref", ref="invoices"),
        FieldSpec("job", "ref", ref="jobs"),
        FieldSpec("name"),
        FieldSpec("description"),
        FieldSpec("kind", "enum", choices=LINE_KINDS, label="line kind", aliases=LINE_KIND_ALIASES),
        FieldSpec("quantity", "decimal", places=QUANTITY_PLACES, label="quantity"),
        FieldSpec("unit_price", "cents"),
        FieldSpec("unit_cost", "cents"),
        FieldSpec("taxable", "bool"),
        # quantity x unit_price, rounded half to even (line_amount): reconcile-report checks it
        FieldSpec("amount", "cents"),
        FieldSpec("service_item_id"),
        FieldSpec("position", "int"),
    ),
    # no match key: two lines of one name on one invoice are common (two visits' labour)
    relink_keys=(
        ("invoice", "position", "name"),
        # a member that does not hold positions (a sheet keeps them as the order of its rows)
        ("invoice", "name", "quantity", "unit_price"),
        ("invoice", "name"),
    ),
    # and jobs, where the pipeline syncs them: dependency_order follows the job reference,
    # and a pipeline without jobs drops it (a line is found through its invoice)
    depends_on=("invoices",),
    required=("quantity", "unit_price"),
    derived=(Derived("amount", ("quantity", "unit_price"), lambda r: _line_amount_of(r)),),
    assigned=("position",),  # HCP puts a line created elsewhere at the end of its job
)

ENTITIES: dict[str, EntitySpec] = {e.name: e for e in (CUSTOMER, JOB, INVOICE, PAYMENT, LINE_ITEM)}


def entity_spec(name: str) -> EntitySpec:
    try:
        return ENTITIES[name]
    except KeyError:
        known = ", ".join(sorted(ENTITIES))
        raise KeyError(f"unknown entity {name!r}; known entities: {known}") from None


def dependency_order(names: Iterable[str]) -> list[str]:
    """Entities ordered so that each comes after the ones it references."""
    wanted = list(dict.fromkeys(names))
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for dep in (*ENTITIES[name].depends_on, *ENTITIES[name].refs.values()):
            if dep in wanted:
                visit(dep)
        ordered.append(name)

    for name in wanted:
        visit(name)
    return ordered


# ---------------------------------------------------------------------------------- normal forms

DEFAULT_REGION = "US"


def norm_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def norm_email(value: Any) -> str | None:
    text = norm_str(value)
    return text.lower() if text else None


def norm_phone(value: Any, region: str = DEFAULT_REGION) -> str | None:
    text = norm_str(value)
    if text is None:
        return None
    if text.startswith("+") and text[1:].isdigit() and 8 <= len(text) <= 16:
        return text  # already E.164: skip the ~20 µs parse
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return text
    if not phonenumbers.is_possible_number(parsed):
        return text
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


_TRUE = {"true", "yes", "y", "1", "on", "t"}
_FALSE = {"false", "no", "n", "0", "off", "f"}


def norm_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    text = str(value).strip().lower()
    if not text:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a yes/no value (use one of: yes, no, true, false, 1, 0)")


def norm_tags(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    tags = sorted({str(t).strip() for t in items if str(t).strip()})
    return tags or None


_CANONICAL_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
"""The canonical text of a date-time (``2026-01-02T03:04:05Z``), as far as its shape goes."""


def parse_datetime(value: Any) -> dt.datetime | None:
    """A timezone-aware datetime from a datetime, a date or ISO 8601 text (naive = UTC)."""
    if value is None:
        return None
    if type(value) is str and _CANONICAL_DATETIME.fullmatch(value):
        return _from_canonical(value)  # the common case, without the strip and rewrite below
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _from_canonical(text: str) -> dt.datetime:
    """The UTC datetime of text shaped as ``_CANONICAL_DATETIME`` (Python 3.11 reads its Z as
    UTC); ValueError when no such date-time exists, worded as ``parse_datetime`` words it."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date-time") from None


def norm_datetime(value: Any) -> str | None:
    """The canonical text of a date-time (``2026-01-02T03:04:05Z``: UTC, whole seconds) from
    what ``parse_datetime`` reads. Text already in that form is returned as it is once it is
    known to be a real date-time (most values are: every member sends them so)."""
    if type(value) is str and _CANONICAL_DATETIME.fullmatch(value):
        _from_canonical(value)  # raises on a date-time that does not exist (2026-02-30)
        return value
    moment = parse_datetime(value)
    if moment is None:
        return None
    return _canonical_datetime(moment.astimezone(dt.UTC))


def _canonical_datetime(moment: dt.datetime) -> str:
    """``moment``'s fields as ``YYYY-MM-DDTHH:MM:SSZ`` (its zone is not looked at). The year
    always has four digits: ``strftime`` wrote year 999 as ``999-…`` on Linux, which no
    reader takes back."""
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def norm_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None


def norm_enum(
    value: Any,
    choices: tuple[str, ...],
    what: str = "value",
    aliases: Mapping[str, str] | None = None,
) -> str | None:
    text = norm_str(value)
    if text is None:
        return None
    word = re.sub(r"[\s\-]+", "_", text.lower())
    if aliases:
        word = aliases.get(word, word)
    for choice in choices:
        if choice == word:
            # the choice itself, not the text just made: every record holding it shares one
            # string (200,000 payments of a first sync kept two copies each until written)
            return choice
    raise ValueError(f"{value!r} is not a known {what} (use one of: {', '.join(choices)})")


_EXACT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
"""Enough digits for any quantity and any quantity times an amount in cents: exact."""
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)


def norm_decimal(value: Any, places: int = QUANTITY_PLACES, what: str = "number") -> str | None:
    """The canonical text of an exact decimal (see the module docstring): from a ``Decimal``,
    an ``int``, a ``float`` (by its shortest repr, which is the number a person or an API
    wrote) or plain text (``"1.50"``, ``"-2"``, ``".5"``; no thousands separators: the
    ``decimal`` transform reads those). More than ``places`` decimal places is a
    ``ValueError``, never a rounding."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a {what}")
    if isinstance(value, decimal.Decimal):
        number = value
    elif isinstance(value, int):
        return str(value)
    elif isinstance(value, float):
        number = decimal.Decimal(repr(value))
    else:
        text = str(value).strip()
        if not text:
            return None
        if not _DECIMAL_TEXT.fullmatch(text):
            raise ValueError(f"{value!r} is not a {what} (write it as 1.5, 2 or -0.25)")
        number = decimal.Decimal(text)
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a {what}")
    exponent = number.normalize(_EXACT).as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise ValueError(f"{value!r} has more than {places} decimal places")
    return decimal_text(number)


def decimal_text(number: decimal.Decimal) -> str:
    """``number`` as canonical text: fixed point, no trailing zeros, ``0`` for any zero."""
    if number.is_zero():
        return "0"
    return format(number.normalize(_EXACT), "f")


def decimal_value(value: str | int | decimal.Decimal) -> decimal.Decimal:
    """The ``Decimal`` of a canonical ``decimal`` value (exact)."""
    return value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))


def _line_amount_of(record: Record) -> int | None:
    """A canonical line's amount from its quantity and unit price (None without both)."""
    quantity, unit_price = record.get("quantity"), record.get("unit_price")
    if quantity is None or not isinstance(unit_price, int) or isinstance(unit_price, bool):
        return None
    return line_amount(quantity, unit_price)


def line_amount(quantity: str | int | decimal.Decimal, unit_price: int) -> int:
    """A line's amount in cents: ``quantity × unit_price``, rounded half to even (a cent
    exactly halfway goes to the even cent: 1.5 × 3 = 4.5 -> 4, 2.5 × 3 = 7.5 -> 8), so that
    every member computing it from the same quantity and price gets the same cents."""
    if type(quantity) is str and quantity.isascii() and quantity.isdigit():
        return int(quantity) * unit_price  # a whole quantity: no rounding to do
    product = _EXACT.multiply(decimal_value(quantity), decimal.Decimal(unit_price))
    whole = product.quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_EVEN, context=_EXACT)
    return int(whole)


NORMALISERS: dict[str, Callable[[Any], Any]] = {
    "str": norm_str,
    "email": norm_email,
    "phone": norm_phone,
    "bool": norm_bool,
    "tags": norm_tags,
    "datetime": norm_datetime,
    "cents": norm_int,
    "int": norm_int,
    "ref": norm_str,
    "decimal": norm_decimal,
}


def normalise(spec: EntitySpec, name: str, value: Any) -> Any:
    """The normal form of one canonical field's value. Raises ``ValueError`` on bad input."""
    fspec = spec.field_spec(name)
    if fspec is None or (fspec.type == "str" and not isinstance(value, str | type(None))):
        # custom fields carrying transformed non-strings (numbers, bools, lists) keep their type
        return norm_str(value) if isinstance(value, str) else value
    return fspec.normalise(value)
