"""The daemon's webhook receiver: ``POST /webhooks/hcp/{connector}``.

A delivery is checked in this order, and the first check it fails decides the answer::

    no housecallpro connector of that name with a webhook_secret    404  unknown_connector
    a body over 1 MiB                                               413  too_large
    HCP's unsigned verification ping {"foo": "bar"}                 200  (ignored)
    a missing or wrong api-signature                                401  signature
    an api-timestamp further than webhook_tolerance from now        401  stale
    a Content-Type other than application/json                      415  content_type
    an empty body, or not JSON                                      400  not_json
    JSON that is no event (no "event" name)                         400  not_event
    the state store cannot take it                                  503  store_failed
    stored (or a redelivery of a stored body)                       200

Only a delivery that passed every check is stored, in the state store's inbox, and only once
it is committed does the sender get its 200: a daemon killed after the answer still has the
event. A refusal stores nothing and is counted in ``/metrics`` by reason
(``syncengine_webhook_refused_total``). Nothing here logs a header, a body or the secret.

``receive`` is the whole decision, without HTTP: the server (``server.py``) hands it the
connector name from the path, the headers and the body it read.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import SecretStr

from syncengine.config import Config
from syncengine.connectors.housecallpro import webhooks as hcp
from syncengine.errors import SyncEngineError
from syncengine.events import InboxEvent
from syncengine.metrics import Metrics
from syncengine.state import StateStore

__all__ = ["MAX_BODY", "PATH_PREFIX", "Answer", "WebhookReceiver"]

log = structlog.get_logger("syncengine.daemon")

MAX_BODY = 1024 * 1024
"""The largest body taken (1 MiB)."""
PATH_PREFIX = "/webhooks/hcp/"


@dataclass(frozen=True)
class Answer:
    """What the receiver answers a delivery."""

    status: int
    body: dict[str, Any]
    reason: str
    """stored, duplicate, ping, or why it was refused (the metric's label)."""
    event: InboxEvent | None = field(default=None, compare=False)
    """The event stored (None for anything else)."""


def _refused(status: int, reason: str, message: str) -> Answer:
    return Answer(status, {"error": message}, reason)


class WebhookReceiver:
    """Checks deliveries and stores the genuine ones (see the module docstring).
    ``config()`` is the daemon's current config; ``stored(event)`` is told of each event
    stored, after it was committed."""

    def __init__(
        self,
        config: Callable[[], Config],
        store: StateStore,
        metrics: Metrics,
        stored: Callable[[InboxEvent], None] = lambda event: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self.store = store
        self.metrics = metrics
        self._stored = stored
        self._clock = clock

    def receive(self, connector: str, headers: Mapping[str, str], body: bytes | None) -> Answer:
        """The answer to one delivery (``headers`` keyed in lower case; ``body`` None when
        it was larger than ``MAX_BODY`` and not read), after storing it if it is genuine."""
        answer = self._decide(connector, headers, body)
        if answer.reason in ("stored", "duplicate", "ping"):
            self.metrics.webhook_deliveries.labels(connector, answer.reason).inc()
        else:
            self.metrics.webhook_refused.labels(answer.reason).inc()
            log.info(
                "webhook delivery refused",
                connector=connector if answer.reason != "unknown_connector" else None,
                status=answer.status,
                reason=answer.reason,
            )
        if answer.event is not None:
            self._stored(answer.event)
        return answer

    def _decide(self, connector: str, headers: Mapping[str, str], body: bytes | None) -> Answer:
        options = self._options(connector)
        if options is None:
            return _refused(404, "unknown_connector", "no such webhook")
        if body is None or len(body) > MAX_BODY:
            return _refused(413, "too_large", f"the body is over {MAX_BODY} bytes")
        if hcp.is_ping(headers, body):
            return Answer(200, {"ok": True}, "ping")
        secret, tolerance = options
        why = hcp.check(secret, headers, body, now=self._clock(), tolerance=tolerance)
        if why == "signature":
            return _refused(401, "signature", "the signature does not verify")
        if why == "stale":
            return _refused(401, "stale", "the timestamp is too far from now")
        if not _is_json_type(headers.get("content-type", "")):
            return _refused(415, "content_type", "send Content-Type: application/json")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than parsed
            return _refused(400, "not_json", "the body is not JSON")
        try:
            info = hcp.describe(payload)
        except hcp.NotAnEvent as exc:
            return _refused(400, "not_event", str(exc))
        return self._store(connector, body, payload, info)

    def _store(self, connector: str, body: bytes, payload: Any, info: hcp.EventInfo) -> Answer:
        digest = hashlib.sha256(body).hexdigest()
        try:
            with self.store.transaction() as tx:
                event_id = tx.store_event(
                    connector=connector,
                    digest=digest,
                    event=info.event,
                    entities=info.entities,
                    record_id=info.record_id,
                    payload=payload,
                    occurred_at=info.occurred_at,
                )
        except SyncEngineError as exc:
            log.error("webhook event not stored: the state store failed", error=str(exc))
            return _refused(503, "store_failed", "the event could not be stored; send it again")
        if event_id is None:
            return Answer(200, {"ok": True, "duplicate": True}, "duplicate")
        event = InboxEvent(
            id=event_id,
            connector=connector,
            event=info.event,
            entities=info.entities,
            record_id=info.record_id,
            payload=payload,
            occurred_at=info.occurred_at,
            received_at=self._clock(),
        )
        log.debug(
            "webhook event stored", connector=connector, webhook_event=info.event, id=event_id
        )
        return Answer(200, {"ok": True, "id": event_id}, "stored", event)

    def _options(self, connector: str) -> tuple[str, float] | None:
        """The secret and tolerance of a housecallpro connector that takes webhooks."""
        cc = self._config().connectors.get(connector) if connector else None
        if cc is None or cc.type_name != "housecallpro":
            return None
        secret = getattr(cc.options, "webhook_secret", None)
        if not isinstance(secret, SecretStr) or not secret.get_secret_value():
            return None
        tolerance = getattr(cc.options, "webhook_tolerance", hcp.DEFAULT_TOLERANCE)
        return secret.get_secret_value(), float(tolerance)


def _is_json_type(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json"
