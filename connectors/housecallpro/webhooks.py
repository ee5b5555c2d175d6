"""Housecall Pro webhooks: how a delivery is signed and checked, and what an event names.

What HCP sends (``spec/HCP-REAL-API-NOTES.md``, Webhooks)::

    POST <the URL saved in HCP>
    api-timestamp: 1764864000                      seconds since the epoch
    api-signature: hex(HMAC-SHA256(secret, api-timestamp + "." + raw body))
    {"event": "customer.updated", "event_occurred_at": "...Z", "company_id": "<uuid>",
     "customer": {...the whole record...}}

The record sits under a key named after the event's prefix (``customer``, ``job``,
``invoice``). When a person saves the URL in HCP, HCP sends an unsigned ``{"foo": "bar"}``
and wants a 2xx: ``is_ping`` tells it.

``check`` decides whether a delivery is genuine; ``describe`` what a genuine event is about.
Both are pure: the receiver (``syncengine.daemon.webhooks``) does the I/O, and the sandbox
signs its own deliveries with ``sign``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

SIGNATURE_HEADER = "api-signature"
TIMESTAMP_HEADER = "api-timestamp"
DEFAULT_TOLERANCE = 300.0
"""Seconds a delivery's timestamp may be from the receiver's clock, either way."""
PING = {"foo": "bar"}
"""The unsigned body HCP sends when the webhook URL is saved."""

ENTITIES_OF_PREFIX: Mapping[str, tuple[str, ...]] = {
    "customer": ("customers",),
    "job": ("jobs", "line_items"),
    "invoice": ("invoices", "payments"),
}
"""The canonical entities an event of each prefix may change (an invoice event may be about
its payments: ``invoice.payment.succeeded``, ``invoice.refund.succeeded``; a job event about
its line items, which HCP keeps on jobs and which are then read as any run reads them: one
request for the job list's first page, one per job changed)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``api-signature`` of ``body`` sent at ``timestamp`` (lower-case hex)."""
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


Refusal = Literal["signature", "stale"]


def check(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float,
) -> Refusal | None:
    """Why a delivery is refused, or None when it is genuine: its signature is the HMAC of
    this very body and timestamp under ``secret`` (compared in constant time, exactly as HCP
    writes it: lower-case hex), and its timestamp is within ``tolerance`` seconds of ``now``,
    in the past or the future. ``headers`` are keyed in lower case."""
    signature = headers.get(SIGNATURE_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    if not signature or not timestamp or not timestamp.isascii():
        return "signature"
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
        return "signature"
    sent = seconds(timestamp)
    if sent is None or abs(now - sent) > tolerance:
        return "stale"
    return None


def seconds(timestamp: str) -> float | None:
    """An ``api-timestamp`` as seconds since the epoch: whole or fractional seconds, or
    milliseconds (13 digits and more); None when it is not a number."""
    try:
        value = float(timestamp)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value / 1000.0 if value >= 1e11 else value


def is_ping(headers: Mapping[str, str], body: bytes) -> bool:
    """HCP's unsigned verification request: no signature and exactly ``{"foo": "bar"}``."""
    if headers.get(SIGNATURE_HEADER) or len(body) > 64:
        return False
    try:
        return bool(json.loads(body) == PING)
    except ValueError:
        return False


@dataclass(frozen=True)
class EventInfo:
    """What a genuine event is about."""

    event: str
    """``customer.updated``."""
    entities: tuple[str, ...]
    """The canonical entities it may change (none: an event syncengine does not sync)."""
    record_id: str | None
    """The HCP id of the record it names, when the payload gives one."""
    record: dict[str, Any] | None
    """The record as the payload carries it (under the key named after the prefix)."""
    occurred_at: str | None
    deleted: bool
    """The event says the record was deleted."""


class NotAnEvent(ValueError):
    """A body that is JSON but not an HCP event (no ``event`` name)."""


def describe(payload: Any) -> EventInfo:
    """What an event is about, from its parsed JSON; ``NotAnEvent`` when the body is no
    event at all."""
    if not isinstance(payload, dict):
        raise NotAnEvent("the body is not a JSON object")
    event = payload.get("event")
    if not isinstance(event, str) or not event.strip():
        raise NotAnEvent('the body has no "event" name')
    prefix = event.split(".", 1)[0]
    record = payload.get(prefix)
    record = record if isinstance(record, dict) else None
    record_id = record.get("id") if record is not None else None
    if record_id is None:
        record_id = payload.get(f"{prefix}_id")
    occurred = payload.get("event_occurred_at")
    return EventInfo(
        event=event,
        entities=ENTITIES_OF_PREFIX.get(prefix, ()),
        record_id=str(record_id) if isinstance(record_id, str | int) and record_id != "" else None,
        record=record,
        occurred_at=occurred if isinstance(occurred, str) else None,
        deleted=event.endswith(".deleted"),
    )
