"""The sandbox's webhooks: what a change is called, and a sender that delivers it as HCP would.

``SandboxState`` tells a listener about every change made through the API or the
``/_sandbox/`` endpoints, with the record as ``GET`` would return it at that moment (see the
mapping of changes to event names in ``sandbox``'s module docstring; the ``*_events``
functions below decide it). :class:`WebhookSender` is that listener when the sandbox is given
:class:`Webhooks` settings: it wraps each change in HCP's envelope, drops a share of them on
purpose when asked, and POSTs the rest, signed with ``webhooks.sign``, from a thread of its
own, so an API call never waits for a delivery.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import structlog

from syncengine.connectors.housecallpro.sandbox_fields import Record
from syncengine.connectors.housecallpro.sandbox_records import JOB_DONE
from syncengine.connectors.housecallpro.webhooks import (
    PING,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from syncengine.errors import ConfigError, Problem

log = structlog.get_logger("syncengine.sandbox")

Listener = Callable[[str, Record, str], None]
"""(event name, the record as GET returns it now, when it happened): what the state calls,
while it holds its lock, for every change."""

JOB_CANCELED = ("user_canceled", "pro_canceled")
INVOICE_STATUS_EVENTS: Mapping[str, str] = {
    "sent": "invoice.sent",
    "paid": "invoice.paid",
    "voided": "invoice.voided",
    "canceled": "invoice.canceled",
}
"""The event of an invoice that takes each status (HCP names none for going back to draft)."""
PAYMENT_EVENTS: Mapping[str, str] = {
    "succeeded": "invoice.payment.succeeded",
    "failed": "invoice.payment.failed",
}
"""The event of a payment recorded with each status (HCP names none for the others)."""
REFUND_EVENT = "invoice.refund.succeeded"
QUEUE_LIMIT = 10_000
"""Events waiting for delivery at most; more are counted as failed (and logged)."""


# ----------------------------------------------------------------------------- event names


def job_update_event(before: Record, after: Record) -> str:
    """A job's change: ``job.completed`` or ``job.canceled`` when its work status has just
    become one of those, ``job.updated`` otherwise (one event per change)."""
    status = after["work_status"]
    if status != before["work_status"]:
        if status in JOB_DONE:
            return "job.completed"
        if status in JOB_CANCELED:
            return "job.canceled"
    return "job.updated"


def invoice_change_events(before: Record, after: Record) -> list[str]:
    """An invoice's change, in this order: ``invoice.amount_updated`` when its amount
    changed, then ``invoice.<status>`` when its status changed to sent, paid, voided or
    canceled. None for a change of only its due date or number: HCP names no such event."""
    events = []
    if after["amount"] != before["amount"]:
        events.append("invoice.amount_updated")
    if after["status"] != before["status"] and after["status"] in INVOICE_STATUS_EVENTS:
        events.append(INVOICE_STATUS_EVENTS[after["status"]])
    return events


def payment_events(payment: Record, before: Record, after: Record) -> list[str]:
    """A payment recorded on an invoice: ``invoice.payment.succeeded`` (or ``.failed``),
    then ``invoice.paid`` when the payment settled the invoice."""
    events = []
    if payment["status"] in PAYMENT_EVENTS:
        events.append(PAYMENT_EVENTS[payment["status"]])
    if after["status"] != before["status"] and after["status"] in INVOICE_STATUS_EVENTS:
        events.append(INVOICE_STATUS_EVENTS[after["status"]])
    return events


def refund_events() -> list[str]:
    """A payment refunded in part or in full: ``invoice.refund.succeeded`` about its invoice,
    and nothing else. The invoice it reopens is not sent again, so no ``invoice.sent``;
    HCP names no event for a payment's own change."""
    return [REFUND_EVENT]


# -------------------------------------------------------------------------------- settings


def company_id_for(random_seed: int) -> str:
    """The sandbox's company id: a UUID fixed by the random seed."""
    bits = random.Random(f"company:{random_seed}").getrandbits(128)
    return str(uuid.UUID(int=bits, version=4))


@dataclass(frozen=True)
class Webhooks:
    """Where and how the sandbox sends its webhooks.

    ``attempts`` POSTs at most per event (the first and its retries); the first retry waits
    ``first_retry`` seconds and each later one twice as long as the one before. ``timeout``
    bounds each POST. ``company_id`` defaults to one fixed by the sandbox's random seed.
    ``ping``: send HCP's unsigned ``{"foo": "bar"}`` once at the start.
    """

    url: str
    secret: str = field(repr=False)
    drop_rate: float = 0.0
    attempts: int = 5
    first_retry: float = 0.25
    timeout: float = 5.0
    company_id: str | None = None
    ping: bool = True

    def __post_init__(self) -> None:
        problems = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(
                Problem("sandbox.webhook_url", "must be an http:// or https:// URL with a host")
            )
        if not self.secret:
            problems.append(Problem("sandbox.webhook_secret", "must not be empty"))
        if not 0.0 <= self.drop_rate <= 1.0:
            problems.append(
                Problem(
                    "sandbox.webhook_drop_rate", f"must be between 0 and 1, not {self.drop_rate}"
                )
            )
        if self.attempts < 1:
            problems.append(Problem("sandbox.webhook_attempts", "must be 1 or more"))
        if self.first_retry < 0 or self.timeout <= 0:
            problems.append(
                Problem("sandbox.webhooks", "first_retry must be 0 or more, timeout positive")
            )
        if problems:
            raise ConfigError(problems)


# ---------------------------------------------------------------------------------- sender


@dataclass
class _Delivery:
    event: str
    payload: dict[str, Any]


_PING_ITEM = "ping"
_STOP = "stop"
PingState = Literal["off", "pending", "delivered", "failed"]


class WebhookSender:
    """Delivers the sandbox's events in the order of the changes, from a thread of its own.

    ``publish`` (the state's listener) never blocks and never raises: it decides whether the
    event is dropped on purpose (``drop_rate``, from a generator seeded by ``random_seed``),
    then queues it. The thread POSTs each event, retrying any answer other than 2xx and any
    connection error with exponential backoff, and gives up (logged, counted as failed) after
    ``attempts``. ``stats()`` counts what happened; ``flush()`` waits until everything
    published so far is done; ``close()`` stops the thread.
    """

    def __init__(
        self,
        settings: Webhooks,
        *,
        random_seed: int = 0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.company_id = settings.company_id or company_id_for(random_seed)
        self._now = now
        self._drops = random.Random(f"webhooks:{random_seed}")
        self._queue: queue.Queue[_Delivery | str] = queue.Queue()
        self._stopping = threading.Event()
        self._done = threading.Condition()
        self._accepted = 0
        """Items queued (the ping and events), guarded by ``_done``."""
        self._finished = 0
        self._counts = {"sent": 0, "dropped": 0, "failed": 0, "retried": 0}
        self._ping: PingState = "pending" if settings.ping else "off"
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sandbox-webhooks", daemon=True)

    # -- the caller's side

    def start(self) -> None:
        """Start the delivery thread; it sends the ping first (when asked)."""
        if self.settings.ping:
            self._enqueue(_PING_ITEM)
        self._thread.start()

    def publish(self, event: str, record: Record, occurred_at: str) -> None:
        """Queue ``event`` about ``record`` (the record as GET returns it now, never changed
        afterwards), or drop it on purpose. Never blocks, never raises."""
        try:
            with self._done:
                if self._closed:
                    self._counts["failed"] += 1
                    return
                if self.settings.drop_rate and self._drops.random() < self.settings.drop_rate:
                    self._counts["dropped"] += 1
                    return
                if self._accepted - self._finished >= QUEUE_LIMIT:
                    self._counts["failed"] += 1
                    log.warning("webhook event not queued: too many are waiting", webhook=event)
                    return
            prefix = event.split(".", 1)[0]
            payload = {
                "event": event,
                "event_occurred_at": occurred_at,
                "company_id": self.company_id,
                prefix: record,
            }
            self._enqueue(_Delivery(event, payload))
        except Exception as exc:  # a webhook must never fail the change it reports
            log.error("webhook event not queued", webhook=event, error=_describe(exc))

    def stats(self) -> dict[str, Any]:
        """``sent`` (delivered: the receiver said 2xx), ``dropped`` (on purpose), ``failed``
        (given up), ``retried`` (POSTs repeated), ``pending`` (not done yet) and ``ping``
        (off, pending, delivered or failed)."""
        with self._done:
            pending = self._accepted - self._finished
            if self._ping == "pending":
                pending -= 1
            return {**self._counts, "pending": max(pending, 0), "ping": self._ping}

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event published so far is delivered or given up; False when
        ``timeout`` seconds passed first."""
        with self._done:
            target = self._accepted
            return self._done.wait_for(lambda: self._finished >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Give the waiting events up to ``timeout`` seconds, then stop: what is still
        waiting is counted as failed (and logged), events published later too."""
        with self._done:
            if self._closed:
                return
        if self._thread.is_alive():
            self.flush(timeout)
        with self._done:
            self._closed = True
        self._stopping.set()
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(self.settings.timeout + 1.0)

    # -- the thread's side

    def _enqueue(self, item: _Delivery | str) -> None:
        with self._done:
            self._accepted += 1
        self._queue.put(item)

    def _run(self) -> None:
        abandoned = 0
        with httpx.Client(timeout=self.settings.timeout, follow_redirects=False) as client:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                try:
                    if isinstance(item, _Delivery):
                        if self._stopping.is_set():
                            abandoned += 1
                            self._count("failed")
                        else:
                            self._deliver(client, item)
                    elif not self._stopping.is_set():
                        self._send_ping(client)
                except Exception as exc:
                    log.error("webhook delivery failed unexpectedly", error=_describe(exc))
                    if isinstance(item, _Delivery):
                        self._count("failed")
                finally:
                    with self._done:
                        self._finished += 1
                        self._done.notify_all()
        if abandoned:
            log.warning(f"{abandoned} webhook event(s) not delivered: the sandbox stopped")

    def _count(self, name: str) -> None:
        with self._done:
            self._counts[name] += 1

    def _send_ping(self, client: httpx.Client) -> None:
        """HCP's verification request: unsigned, one attempt; a failure is only logged."""
        body = json.dumps(PING).encode()
        problem = self._post(client, body, {"Content-Type": "application/json"})
        with self._done:
            self._ping = "failed" if problem else "delivered"
        if problem:
            log.warning(
                "webhook verification ping not accepted", url=self.settings.url, problem=problem
            )

    def _deliver(self, client: httpx.Client, delivery: _Delivery) -> None:
        """POST one event until the receiver says 2xx, at most ``attempts`` times, each time
        signed with the moment it is sent; waits between attempts end early on ``close``."""
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
        problem = None
        made = 0
        for attempt in range(self.settings.attempts):
            if attempt:
                if self._stopping.wait(self.settings.first_retry * 2 ** (attempt - 1)):
                    break
                self._count("retried")
            timestamp = str(int(self._now()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self.settings.secret, timestamp, body),
            }
            problem = self._post(client, body, headers)
            made += 1
            if problem is None:
                self._count("sent")
                return
        self._count("failed")
        log.warning(
            "webhook event not delivered",
            webhook=delivery.event,
            attempts=made,
            problem=problem if made == self.settings.attempts else "the sandbox stopped",
        )

    def _post(self, client: httpx.Client, body: bytes, headers: dict[str, str]) -> str | None:
        """What went wrong with one POST, or None when the receiver answered 2xx."""
        try:
            response = client.post(self.settings.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return _describe(exc)
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


def _describe(exc: BaseException) -> str:
    """An error in one line, without a traceback (whose variables could show the secret)."""
    return f"{type(exc).__name__}: {exc}"
