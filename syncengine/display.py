"""How records and amounts are shown to people: in dry runs, messages and reports."""

from __future__ import annotations

from syncengine.model import Record


def format_cents(cents: int, symbol: str = "$") -> str:
    """Integer cents as currency for people: 123450 -> ``$1,234.50``."""
    sign = "-" if cents < 0 else ""
    units, fraction = divmod(abs(cents), 100)
    return f"{sign}{symbol}{units:,}.{fraction:02d}"


def label_of(record: Record | None, fallback: str) -> str:
    """A human name for a record in messages: name and email where known."""
    if not record:
        return fallback
    if record.get("invoice_number"):
        return f"invoice {record['invoice_number']}"
    if "amount" in record and "first_name" not in record:
        amount = record.get("amount")
        money = format_cents(amount) if isinstance(amount, int) else "?"
        when = str(record.get("paid_at") or record.get("scheduled_start") or "")[:10]
        return f"{money}{' on ' + when if when else ''} ({fallback})"
    name = " ".join(str(record[k]) for k in ("first_name", "last_name") if record.get(k))
    name = name or str(record.get("company") or "")
    email = record.get("email")
    if name and email:
        return f"{name} <{email}>"
    return name or str(email or fallback)
