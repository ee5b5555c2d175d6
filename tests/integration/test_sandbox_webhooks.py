"""The HCP sandbox sends HCP-shaped, signed webhooks for every change (issue 13).

A small real HTTP receiver on a loopback port records what arrives. Most tests run the
sandbox in-process (``create_app(webhooks=Webhooks(...))`` behind ``SyncASGITransport``; its
sender still POSTs over real HTTP); one runs ``syncengine sandbox`` as a process.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.connectors.housecallpro import webhooks
from syncengine.connectors.housecallpro.sandbox import (
    SyncASGITransport,
    Webhooks,
    WebhookSender,
    create_app,
)
from syncengine.errors import ConfigError
from tests.integration.conftest import CliResult, assert_clean_exit, cli_env, start_sandbox

pytestmark = pytest.mark.integration

KEY = "test-key"
SECRET = "whsec-test-0123456789"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
WAIT = 20.0
"""Seconds a test waits for deliveries at most (generous: the machine is shared)."""


# ------------------------------------------------------------------------------ the receiver


@dataclass
class Delivery:
    headers: dict[str, str]
    """Keyed in lower case."""
    body: bytes
    status: int
    """What the receiver answered."""

    @property
    def signed(self) -> bool:
        return webhooks.SIGNATURE_HEADER in self.headers

    def payload(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST. It answers 500 to the first
    ``fail_first`` signed ones (``always_fail``: to all), and while ``hold`` is cleared it
    keeps signed requests waiting before it answers."""

    def __init__(self, *, fail_first: int = 0, always_fail: bool = False) -> None:
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = 0
        """Signed requests that reached the receiver, answered or still held."""
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(headers)
                with receiver._changed:  # recorded before the sender hears the answer
                    receiver.deliveries.append(Delivery(headers, body, status))
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hcp/webhooks"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, headers: dict[str, str]) -> int:
        if webhooks.SIGNATURE_HEADER not in headers:
            return 200
        with self._changed:
            self.arrived += 1
            self._changed.notify_all()
        self.hold.wait(WAIT)
        with self._changed:
            if self.always_fail:
                return 500
            if self.fail_first > 0:
                self.fail_first -= 1
                return 500
        return 200

    def events(self) -> list[Delivery]:
        """The signed deliveries that were accepted (2xx), in the order they came."""
        with self._changed:
            return [d for d in self.deliveries if d.signed and d.status < 300]

    def names(self) -> list[str]:
        return [d.payload()["event"] for d in self.events()]

    def wait_for(self, count: int, *, accepted_only: bool = True) -> list[Delivery]:
        """Wait until ``count`` signed deliveries came (accepted ones only by default)."""

        def enough() -> bool:
            found = [d for d in self.deliveries if d.signed]
            if accepted_only:
                found = [d for d in found if d.status < 300]
            return len(found) >= count

        with self._changed:
            assert self._changed.wait_for(enough, WAIT), self.deliveries
        return self.events()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


# ------------------------------------------------------------------------ the sandbox, in-process


@dataclass
class Box:
    client: httpx.Client
    sender: WebhookSender

    def flush(self) -> None:
        assert self.sender.flush(WAIT), self.sender.stats()

    def ok(self, response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json() if response.content else None


@pytest.fixture
def sandbox() -> Iterator[Callable[..., Box]]:
    """``sandbox(url, seed=..., random_seed=..., **webhook settings)``: an in-process sandbox
    whose webhooks go to ``url`` (first retry after 20 ms); stopped after the test."""
    made: list[Box] = []

    def make(url: str, *, seed: int = 3, random_seed: int = 0, **settings: Any) -> Box:
        settings.setdefault("first_retry", 0.02)
        app = create_app(
            KEY, seed=seed, random_seed=random_seed, webhooks=Webhooks(url, SECRET, **settings)
        )
        client = httpx.Client(
            transport=SyncASGITransport(app),
            base_url="http://sandbox",
            headers={"Authorization": f"Token {KEY}"},
            timeout=WAIT,
        )
        box = Box(client, app.state.webhooks)
        made.append(box)
        return box

    yield make
    for box in made:
        box.sender.close(timeout=1.0)  # first: it ends any request a delivery holds up
        box.client.close()
    assert "sandbox-webhooks" not in [t.name for t in threading.enumerate()], "a sender leaked"


def first_customer(box: Box) -> dict[str, Any]:
    customers = box.ok(box.client.get("/customers", params={"sort_direction": "asc"}))
    return dict(customers["customers"][0])


def genuine(delivery: Delivery) -> None:
    """Signed with the secret, over exactly this body, a moment ago; sent as JSON."""
    refusal = webhooks.check(SECRET, delivery.headers, delivery.body, now=time.time(), tolerance=60)
    assert refusal is None
    assert delivery.headers[webhooks.TIMESTAMP_HEADER].isdigit()
    assert delivery.headers["content-type"] == "application/json"


# ----------------------------------------------------------------------------------- tests


def test_a_customer_update_sends_one_signed_customer_updated(
    receiver: Receiver, sandbox: Callable[..., Box]
) -> None:
    box = sandbox(receiver.url)
    customer = first_customer(box)
    box.ok(box.client.put(f"/customers/{customer['id']}", json={"company": "gate code 1234"}))
    box.flush()

    [delivery] = receiver.events()
    genuine(delivery)
    payload = delivery.payload()
    assert set(payload) == {"event", "event_occurred_at", "company_id", "customer"}
    assert payload["event"] == "customer.updated"
    assert TIMESTAMP.match(payload["event_occurred_at"])
    assert uuid.UUID(payload["company_id"]).version == 4
    now = box.ok(box.client.get(f"/customers/{customer['id']}"))
    assert payload["customer"] == now
    assert payload["event_occurred_at"] == now["updated_at"]
    info = webhooks.describe(payload)
    assert (info.record_id, info.entities) == (customer["id"], ("customers",))


def test_the_verification_ping_comes_first_and_unsigned(
    receiver: Receiver, sandbox: Callable[..., Box]
) -> None:
    box = sandbox(receiver.url)
    box.ok(box.client.post("/customers", json={"first_name": "Ada"}), 201)
    box.flush()

    first = receiver.deliveries[0]
    assert webhooks.is_ping(first.headers, first.body)
    assert webhooks.SIGNATURE_HEADER not in first.headers
    assert webhooks.TIMESTAMP_HEADER not in first.headers
    assert [d.signed for d in receiver.deliveries] == [False, True]
    assert box.sender.stats()["ping"] == "delivered"


def test_creates_changes_deletes_and_payments_send_their_events_in_order(
    receiver: Receiver, sandbox: Callable[..., Box]
) -> None:
    box = sandbox(receiver.url, seed=0)
    c = box.client
    customer = box.ok(c.post("/customers", json={"first_name": "Ada", "last_name": "Ng"}), 201)
    job = box.ok(c.post("/jobs", json={"customer_id": customer["id"]}), 201)
    spare = box.ok(c.post("/jobs", json={"customer_id": customer["id"]}), 201)
    invoice = box.ok(
        c.post("/invoices", json={"job_id": job["id"], "amount": 10000, "status": "sent"}), 201
    )
    other = box.ok(c.post("/invoices", json={"customer_id": customer["id"], "amount": 500}), 201)
    box.ok(c.put(f"/jobs/{job['id']}", json={"description": "Fix the boiler"}))
    box.ok(c.put(f"/jobs/{job['id']}", json={"work_status": "complete"}))
    box.ok(c.put(f"/jobs/{spare['id']}", json={"work_status": "pro_canceled"}))
    box.ok(c.post(f"/_sandbox/invoices/{invoice['id']}/payments", json={"amount": 4000}), 201)
    box.ok(c.post(f"/_sandbox/invoices/{invoice['id']}/payments", json={"amount": 6000}), 201)
    box.ok(c.put(f"/_sandbox/invoices/{other['id']}", json={"amount": 700}))
    voided = box.ok(c.put(f"/_sandbox/invoices/{other['id']}", json={"status": "voided"}))
    box.ok(c.put(f"/_sandbox/invoices/{other['id']}", json={"due_at": "2030-01-01T00:00:00Z"}))
    spare_before = box.ok(c.get(f"/jobs/{spare['id']}"))
    assert c.delete(f"/jobs/{spare['id']}").status_code == 204
    customer_before = box.ok(c.get(f"/customers/{customer['id']}"))
    assert c.delete(f"/customers/{customer['id']}").status_code == 204
    box.flush()

    assert receiver.names() == [
        "customer.created",
        "job.created",
        "job.created",
        "invoice.created",
        "invoice.created",
        "job.updated",
        "job.completed",
        "job.canceled",
        "invoice.payment.succeeded",
        "invoice.payment.succeeded",
        "invoice.paid",
        "invoice.amount_updated",
        "invoice.voided",
        "job.deleted",
        "customer.deleted",
    ]
    events = receiver.events()
    for delivery in events:
        genuine(delivery)
    payloads = [d.payload() for d in events]
    assert payloads[0]["customer"]["id"] == customer["id"]
    assert payloads[1]["job"]["id"] == job["id"]
    assert payloads[3]["invoice"]["id"] == invoice["id"]
    # the first payment: the invoice as GET showed it then, its payment nested
    first_paid = payloads[8]["invoice"]
    assert first_paid["id"] == invoice["id"]
    assert first_paid["outstanding_balance"] == 6000
    assert [p["amount"] for p in first_paid["payments"]] == [4000]
    # the second settles it: both events carry the invoice as GET returns it now
    now = box.ok(c.get(f"/invoices/{invoice['id']}"))
    assert payloads[9]["invoice"] == payloads[10]["invoice"] == now
    assert now["status"] == "paid" and [p["amount"] for p in now["payments"]] == [4000, 6000]
    assert payloads[11]["invoice"]["amount"] == 700
    assert payloads[12]["invoice"] == voided
    assert payloads[13]["job"] == spare_before
    assert payloads[14]["customer"] == customer_before
    stamps = [p["event_occurred_at"] for p in payloads]
    assert stamps == sorted(stamps)


def test_a_payment_event_shows_the_invoice_with_the_current_options(
    receiver: Receiver, sandbox: Callable[..., Box]
) -> None:
    box = sandbox(receiver.url, seed=0)
    c = box.client
    customer = box.ok(c.post("/customers", json={"first_name": "Ada"}), 201)
    invoice = box.ok(c.post("/invoices", json={"customer_id": customer["id"], "amount": 900}), 201)
    box.ok(c.put("/_sandbox/options", json={"nest_payments": False, "live_invoices": True}))
    box.ok(c.post(f"/_sandbox/invoices/{invoice['id']}/payments", json={"amount": 100}), 201)
    box.flush()

    payment = receiver.events()[-1].payload()
    assert payment["event"] == "invoice.payment.succeeded"
    assert payment["invoice"] == box.ok(c.get(f"/invoices/{invoice['id']}"))
    assert "payments" not in payment["invoice"] and "updated_at" not in payment["invoice"]


def test_seeding_reset_and_options_send_nothing(
    receiver: Receiver, sandbox: Callable[..., Box]
) -> None:
    box = sandbox(receiver.url, seed=20)
    customer = first_customer(box)
    box.ok(box.client.put(f"/customers/{customer['id']}", json={"company": "x"}))
    box.flush()
    assert receiver.names() == ["customer.updated"]

    box.ok(box.client.post("/_sandbox/reset"))
    box.ok(box.client.put("/_sandbox/options", json={"nest_payments": False}))
    box.flush()
    assert receiver.names() == ["customer.updated"]
    assert box.sender.stats()["sent"] == 1


def test_failed_deliveries_are_retried_until_the_receiver_says_2xx(
    sandbox: Callable[..., Box],
) -> None:
    receiver = Receiver(fail_first=3)
    try:
        box = sandbox(receiver.url)
        customer = first_customer(box)
        box.ok(box.client.put(f"/customers/{customer['id']}", json={"company": "retry me"}))
        box.flush()
        signed = [d for d in receiver.deliveries if d.signed]
        assert [d.status for d in signed] == [500, 500, 500, 200]
        assert len({d.body for d in signed}) == 1, "every attempt sends the same body"
        [delivery] = receiver.events()
        genuine(delivery)
        stats = box.sender.stats()
        assert (stats["sent"], stats["retried"], stats["failed"]) == (1, 3, 0)
    finally:
        receiver.close()


def test_an_event_is_given_up_after_its_attempts(sandbox: Callable[..., Box]) -> None:
    receiver = Receiver(always_fail=True)
    try:
        box = sandbox(receiver.url, attempts=3)
        customer = first_customer(box)
        box.ok(box.client.put(f"/customers/{customer['id']}", json={"company": "lost"}))
        box.ok(box.client.put(f"/customers/{customer['id']}", json={"company": "lost too"}))
        box.flush()
        assert len([d for d in receiver.deliveries if d.signed]) == 6
        stats = box.sender.stats()
        assert (stats["sent"], stats["retried"], stats["failed"]) == (0, 4, 2)
        assert stats["pending"] == 0
    finally:
        receiver.close()


def test_drop_rate_one_sends_nothing_and_counts_the_drops(
    receiver: Receiver, sandbox: Callable[..., Box]
) -> None:
    box = sandbox(receiver.url, drop_rate=1.0)
    for n in range(5):
        box.ok(box.client.post("/customers", json={"first_name": f"Dropped {n}"}), 201)
    box.flush()

    assert receiver.events() == []
    assert [d.signed for d in receiver.deliveries] == [False], "only the ping"
    counters = box.ok(box.client.get("/_sandbox/webhooks"))
    assert counters == {
        "enabled": True,
        "sent": 0,
        "dropped": 5,
        "failed": 0,
        "retried": 0,
        "pending": 0,
        "ping": "delivered",
    }


def test_a_partial_drop_rate_drops_some_the_same_ones_for_the_same_seed(
    sandbox: Callable[..., Box],
) -> None:
    delivered = []
    for _run in range(2):
        receiver = Receiver()
        try:
            box = sandbox(receiver.url, drop_rate=0.2, random_seed=11)
            for n in range(50):
                box.ok(box.client.post("/customers", json={"first_name": f"C{n}"}), 201)
            box.flush()
            stats = box.sender.stats()
            assert 0 < stats["dropped"] < 25, stats
            assert stats["sent"] + stats["dropped"] == 50
            delivered.append([d.payload()["customer"]["first_name"] for d in receiver.events()])
        finally:
            receiver.close()
    assert delivered[0] == delivered[1]


def test_a_stuck_receiver_never_holds_up_the_api(
    receiver: Receiver, sandbox: Callable[..., Box]
) -> None:
    box = sandbox(receiver.url, timeout=3 * WAIT)  # no POST given up while the receiver holds it
    box.flush()  # the ping is through before the receiver sticks
    receiver.hold.clear()
    customer = first_customer(box)
    try:
        for n in range(5):
            box.ok(box.client.put(f"/customers/{customer['id']}", json={"company": f"n{n}"}))
        # no clock: an API that waited for its delivery (or for a delivery's timeout) would
        # have sent each update's event before answering, so that all five had reached the
        # receiver by now; the sender is still stuck on the first, the rest wait behind it
        with receiver._changed:
            assert receiver._changed.wait_for(lambda: receiver.arrived >= 1, WAIT)
        assert receiver.arrived == 1, f"{receiver.arrived} deliveries went out as the API answered"
        assert receiver.events() == []
        assert box.sender.stats()["pending"] == 5
    finally:
        receiver.hold.set()
    box.flush()
    assert [d.payload()["customer"]["company"] for d in receiver.events()] == [
        f"n{n}" for n in range(5)
    ]


def test_a_receiver_that_is_down_never_fails_the_api(sandbox: Callable[..., Box]) -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there any more
    # no clock: with the retries an hour away, an API that waited for its deliveries could
    # not have answered yet, and the events wait for their retry, neither sent nor given up
    waiting = sandbox(url, attempts=2, first_retry=3600.0)
    customer = first_customer(waiting)
    for n in range(3):
        waiting.ok(waiting.client.put(f"/customers/{customer['id']}", json={"company": f"n{n}"}))
    stats = waiting.sender.stats()
    assert (stats["sent"], stats["failed"], stats["pending"]) == (0, 0, 3), stats

    box = sandbox(url, attempts=2)
    customer = first_customer(box)
    for n in range(3):
        box.ok(box.client.put(f"/customers/{customer['id']}", json={"company": f"n{n}"}))
    box.flush()
    stats = box.sender.stats()
    assert (stats["sent"], stats["failed"], stats["retried"], stats["ping"]) == (
        0,
        3,
        3,
        "failed",
    )


def test_the_counters_are_not_in_the_request_log(
    receiver: Receiver, sandbox: Callable[..., Box]
) -> None:
    box = sandbox(receiver.url)
    box.ok(box.client.get("/_sandbox/webhooks"))
    assert box.ok(box.client.get("/_sandbox/requests")) == {"requests": []}


def test_a_sandbox_without_webhooks_says_so() -> None:
    app = create_app(KEY)
    assert app.state.webhooks is None
    with httpx.Client(transport=SyncASGITransport(app), base_url="http://sandbox") as client:
        counters = client.get("/_sandbox/webhooks").json()
    assert counters["enabled"] is False and counters["sent"] == 0


def test_bad_webhook_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        Webhooks("ftp://example.com/hook", "", drop_rate=1.5)
    text = str(caught.value.problems)
    assert "webhook_url" in text and "webhook_secret" in text and "webhook_drop_rate" in text
    assert SECRET not in repr(Webhooks("http://127.0.0.1:1/x", SECRET))


# ------------------------------------------------------------------------------------ the CLI


def test_a_sandbox_process_sends_signed_webhooks(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HCP_WEBHOOK_SECRET", SECRET)  # the secret from the environment
    box = start_sandbox(tmp_path / "sandbox", "--webhook-url", receiver.url, seed=3)
    try:
        customer = box.customers()[0]
        box.update_customer(customer["id"], {"company": "from a process"})
        [delivery] = receiver.wait_for(1)
        genuine(delivery)
        payload = delivery.payload()
        assert payload["event"] == "customer.updated"
        assert payload["customer"] == box.customer(customer["id"])
        assert webhooks.is_ping(receiver.deliveries[0].headers, receiver.deliveries[0].body)
        counters = httpx.get(f"{box.base_url}/_sandbox/webhooks", timeout=WAIT).json()
        assert (counters["sent"], counters["ping"]) == (1, "delivered")
        assert all("/_sandbox" not in r["path"] for r in box.requests())
    finally:
        box.stop()
    assert SECRET not in box.server.output()


def test_a_process_with_a_drop_rate_of_one_sends_only_the_ping(
    receiver: Receiver, tmp_path: Path
) -> None:
    box = start_sandbox(
        tmp_path / "sandbox",
        "--webhook-url",
        receiver.url,
        "--webhook-secret",
        SECRET,
        "--webhook-drop-rate",
        "1",
        seed=3,
    )
    try:
        customer = box.customers()[0]
        box.update_customer(customer["id"], {"company": "dropped"})
        counters = httpx.get(f"{box.base_url}/_sandbox/webhooks", timeout=WAIT).json()
        assert counters["dropped"] == 1
    finally:
        box.stop()
    assert [d.signed for d in receiver.deliveries] == [False]
    assert SECRET not in box.server.output()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--webhook-url", "http://127.0.0.1:9/hook"], "--webhook-url needs a signing secret"),
        (
            ["--webhook-url", "ftp://example.com", "--webhook-secret", SECRET],
            "must be an http:// or https:// URL",
        ),
        (
            ["--webhook-url", "http://127.0.0.1:9/x", "--webhook-drop-rate", "1.5"],
            "--webhook-drop-rate must be between 0 and 1",
        ),
    ],
)
def test_bad_webhook_options_are_usage_errors(
    cli: Callable[..., CliResult], flags: list[str], message: str
) -> None:
    env = {k: v for k, v in cli_env().items() if k != "HCP_WEBHOOK_SECRET"}
    result = cli("sandbox", "--port", "0", *flags, env=env, timeout=60)
    assert_clean_exit(result, 2)
    assert "usage error" in result.stderr and message in result.stderr, str(result)
    assert SECRET not in result.output
