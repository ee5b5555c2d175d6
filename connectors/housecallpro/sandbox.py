"""A stateful local emulator of the Housecall Pro API, for the demo, the tests and the benchmarks.

It speaks the contract in ``spec/housecallpro-openapi.yaml`` and what the live API is known to
do (``spec/HCP-REAL-API-NOTES.md``)::

    GET    /customers                 page, page_size (max 200), q, sort_by, sort_direction
    POST   /customers                 201 + the record
    GET    /customers/{id}            200 / 404 {"error": {"message": "customer not found"}}
    PUT    /customers/{id}            partial update; ``addresses`` replaces the list
    DELETE /customers/{id}            204

    GET    /jobs                      page, page_size, sort_by (created_at, updated_at,
                                      scheduled_start, scheduled_end), sort_direction,
                                      customer_id, employee_ids[], work_status[],
                                      scheduled_start_min/max, scheduled_end_min/max
    POST   /jobs                      201; the customer as ``customer_id`` (live) or the spec's
                                      ``customer: {"id": ...}``
    GET    /jobs/{id}                 the spec's Job: nested ``customer``, totals of its invoices
    PUT    /jobs/{id}                 partial update; ``schedule`` key by key (null clears)
    DELETE /jobs/{id}                 204; 422 while the job has invoices

    GET    /invoices                  page, page_size, sort_by (amount, created_at, due_amount,
                                      due_at, invoice_number, paid_at, sent_at, status,
                                      updated_at), sort_direction, status[], customer_uuid[],
                                      created_at_min/max, due_at_min/max, paid_at_min/max
    POST   /invoices                  201; amount (integer cents), subtotal and tax_amount
                                      (amount = subtotal + tax_amount; the one left out
                                      follows, none given: untaxed), status, customer_id /
                                      job_id (must exist), invoice_number (unique), due_at
    GET    /invoices/{id}             200 / 404
    GET    /invoices/{id}/payments    the invoice's payments in the list envelope

    GET    /jobs/{id}/line_items      the job's lines, in order, in the list envelope
    POST   /jobs/{id}/line_items      201 + one new line
    PUT    /jobs/{id}/line_items/bulk_update
                                      {"line_items": [...]}: lines with a ``uuid`` changed,
                                      the others created; the job's first invoice's totals
                                      follow (``sandbox_lines``)

There is no ``PUT /invoices/{id}`` and no way to create a payment, as in the API: unknown
routes and methods get the live API's HTML 404 page. Array parameters go as ``name[]=v``; a
bare ``name=v`` gets the live API's ``422 {"errors": {"name": "must be an array"}}``. Invalid
bodies and parameters get ``422 {"errors": {field: [messages]}}``.

Authentication is ``Authorization: Token KEY`` or ``Bearer KEY`` (401 ``{"message":
"Unauthorized"}`` otherwise).

Live-API emulation (``create_app`` / ``serve`` arguments, ``SandboxState`` attributes):

- ``nest_payments`` (default **on**): invoices carry their payments as the live API nests
  them, ``payments: [{id, status, payment_method, amount, note, paid_at, category}]`` — a
  property the spec's ``Invoice`` does not list and allows — plus each one's
  ``refunded_amount`` (a name assumed, not confirmed live);
- ``live_invoices`` (default off): invoices without ``customer_id`` and ``updated_at``, as
  live (the customer is reached through the job). Off by default because an invoice created
  without a job then has no visible customer at all.

Knobs (all deterministic given ``random_seed``), for every API route: ``latency_ms`` per
request, ``error_rate`` (injected 500s that never apply the write), ``rate_limit`` (a token
bucket; 429 with ``Retry-After: 1``). Every API request is logged. Unauthenticated helper
endpoints for tests and demos (neither logged nor throttled):

    GET    /_sandbox/health                        {"ok": true}
    GET    /_sandbox/requests                      {"requests": [{method, path, query, status}]}
    DELETE /_sandbox/requests                      clear that log
    POST   /_sandbox/reset                         restore the seeded (or loaded) data and
                                                   the options the sandbox started with
    GET    /_sandbox/options                       {"nest_payments": …, "live_invoices": …}
    PUT    /_sandbox/options                       change them (for a sandbox in another
                                                   process)
    GET    /_sandbox/faults                        {"error_rate": …}
    PUT    /_sandbox/faults                        change it while the sandbox runs (e.g.
                                                   {"error_rate": 1}: every API request
                                                   answers 500 until set back to 0)
    POST   /_sandbox/invoices/{id}/payments        record a payment: {amount, payment_method,
                                                   status, note, processed_at}; updates the
                                                   invoice's balance (and status: paid) -> 201
    PUT    /_sandbox/invoices/{id}                 change status, amount (or subtotal,
                                                   tax_amount), due_at or invoice_number
                                                   as a person in HCP would
    POST   /_sandbox/payments/{id}/refund          refund a succeeded payment: {amount}
                                                   (cents; omitted: all that is left of
                                                   it) -> 200 + the payment (same id). Its
                                                   refunded_amount adds up, never past its
                                                   amount (422 {"errors": {"amount": […]}}
                                                   otherwise, or for a payment that did not
                                                   succeed); refunded in full, its status is
                                                   refunded. The invoice's balance goes up
                                                   by the refund (paid -> sent: owing
                                                   again) and its updated_at moves
    GET    /_sandbox/webhooks                      {"enabled", "sent", "dropped", "failed",
                                                   "retried", "pending", "ping"}

Webhooks (``create_app(webhooks=Webhooks(url, secret))``; ``syncengine sandbox --webhook-url
URL --webhook-secret S``): every change made through the API or the ``/_sandbox/`` endpoints
is POSTed to the URL as HCP sends it, ``{"event", "event_occurred_at", "company_id",
<prefix>: record}``, signed with the ``api-timestamp`` and ``api-signature`` headers
(``webhooks.sign``). The record is what ``GET`` returns at that moment (for a delete: what it
returned just before), under the event's prefix. The events:

    POST   /customers, PUT, DELETE /customers/{id}  customer.created, .updated, .deleted
    POST   /jobs, DELETE /jobs/{id}                  job.created, job.deleted
    PUT    /jobs/{id}                                job.completed when the work status
                                                     becomes complete or completed_unrated,
                                                     job.canceled when it becomes
                                                     user_canceled or pro_canceled, else
                                                     job.updated
    POST   /invoices                                 invoice.created
    PUT    /_sandbox/invoices/{id}                   invoice.amount_updated when the amount
                                                     changes, then invoice.sent, .paid,
                                                     .voided or .canceled when the status
                                                     becomes that one; nothing for a change of
                                                     due_at or invoice_number alone, or back to
                                                     draft (HCP names no such event)
    POST   /_sandbox/invoices/{id}/payments          invoice.payment.succeeded (.failed for a
                                                     failed payment, nothing for pending or
                                                     refunded), then invoice.paid when it
                                                     settles the invoice; the record is the
                                                     invoice, its payments nested as the API
                                                     shows them with the current options
    POST   /_sandbox/payments/{id}/refund            invoice.refund.succeeded (only: the
                                                     invoice it reopens is not sent again)

Each event is one POST, sent in the order of the changes; a change may send two events (a
payment that settles its invoice). A change to an invoice sends no job event, although the
job's totals change. ``POST /_sandbox/reset``, ``PUT /_sandbox/options``, ``--data`` and
``--seed`` send nothing. Deliveries run in a thread of their own (``WebhookSender``), never
in an API call: an event is retried after a connection error or an answer other than 2xx, 5
attempts in all, waiting 0.25 s before the first retry and twice as long before each next
one, and then given up (logged). ``drop_rate`` (``--webhook-drop-rate``) drops that share of
events on purpose, chosen by a generator seeded from ``random_seed``. At the start the sender
POSTs HCP's unsigned ``{"foo": "bar"}`` once, as HCP does when the URL is saved (a failure is
only logged). ``company_id`` is a UUID fixed by ``random_seed``.

``seed=N`` generates N customers and, for about three quarters of them, jobs, invoices (paid,
partly paid, open, draft, voided) and payments: about one invoice per customer and two
payments per invoice (see ``sandbox_seed``). The data lives in a :class:`SandboxState`
(``app.state.sandbox``). :class:`SyncASGITransport` lets a synchronous ``httpx.Client`` talk
to the app in-process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hmac
import json
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncengine.connectors.housecallpro import sandbox_lines
from syncengine.connectors.housecallpro.sandbox_customers import (
    CUSTOMER_SORT_FIELDS,
    generate_customers,
)
from syncengine.connectors.housecallpro.sandbox_data import check_data, load_data_file
from syncengine.connectors.housecallpro.sandbox_fields import (
    Errors,
    ValidationFailed,
    add_error,
    check_timestamp,
    wire,
)
from syncengine.connectors.housecallpro.sandbox_records import (
    INVOICE_SORT_FIELDS,
    INVOICE_STATUSES,
    JOB_SORT_FIELDS,
    JOB_WORK_STATUSES,
)
from syncengine.connectors.housecallpro.sandbox_state import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Clock,
    Collection,
    Refused,
    SandboxState,
    TokenBucket,
    generate_data,
)
from syncengine.connectors.housecallpro.sandbox_webhooks import Webhooks, WebhookSender
from syncengine.errors import ConfigError, UnavailableError, UsageError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Clock",
    "Collection",
    "SandboxState",
    "SyncASGITransport",
    "TokenBucket",
    "WebhookSender",
    "Webhooks",
    "check_data",
    "create_app",
    "generate_customers",
    "generate_data",
    "load_data_file",
    "serve",
]

# ------------------------------------------------------------------------------ the app

_NOT_FOUND_PAGE = """<!DOCTYPE html>
<html>
<head><title>Page not found (404)</title></head>
<body>
<h1>Page not found</h1>
<p>The page you requested does not exist.</p>
</body>
</html>
"""

Endpoint = Callable[[Request], Awaitable[Response]]
ParamErrors = dict[str, Any]
"""Field -> messages, or the live API's bare string for an array parameter sent bare."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def _invalid(errors: Errors | ParamErrors) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=422)


def _authorized(header: str | None, api_key: str) -> bool:
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("token", "bearer"):
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


async def _json_object(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# -------------------------------------------------------------------------- list parameters


def _list_params(
    params: QueryParams, errors: ParamErrors, sort_fields: tuple[str, ...]
) -> dict[str, Any]:
    """``page``, ``page_size``, ``sort_by`` and ``sort_direction``, checked into ``errors``."""
    values: dict[str, Any] = {}
    for name, default in (("page", 1), ("page_size", DEFAULT_PAGE_SIZE)):
        raw = params.get(name)
        if raw is None or raw == "":
            values[name] = default
            continue
        try:
            number = int(raw)
        except ValueError:
            add_error(errors, name, "must be an integer")
            continue
        if number < 1:
            add_error(errors, name, "must be greater than 0")
        values[name] = number
    sort_by = params.get("sort_by") or "created_at"
    if sort_by not in sort_fields:
        add_error(errors, "sort_by", f"must be one of {', '.join(sort_fields)}")
    values["sort_by"] = sort_by
    direction = (params.get("sort_direction") or "desc").lower()
    if direction not in ("asc", "desc"):
        add_error(errors, "sort_direction", "must be asc or desc")
    values["sort_direction"] = direction
    return values


def _array_param(
    params: QueryParams, name: str, errors: ParamErrors, choices: tuple[str, ...] = ()
) -> list[str]:
    """The values of ``name[]=…``; a bare ``name=…`` is the live API's 422."""
    if name in params:
        errors[name] = "must be an array"
        return []
    values = [v for v in params.getlist(f"{name}[]") if v != ""]
    for value in values:
        if choices and value not in choices:
            add_error(errors, f"{name}[]", f"{value!r} is not one of {', '.join(choices)}")
    return values


def _time_params(
    params: QueryParams, names: tuple[str, ...], errors: ParamErrors
) -> dict[str, Any]:
    """``<name>_min`` / ``<name>_max`` bounds in the stored timestamp form."""
    values: dict[str, Any] = {}
    for name in names:
        for bound in ("min", "max"):
            key = f"{name}_{bound}"
            raw = params.get(key)
            if raw:
                found: Errors = {}
                values[key] = check_timestamp(raw, key, found)
                for field, messages in found.items():
                    for message in messages:
                        add_error(errors, field, message)
    return values


def _job_query(params: QueryParams) -> tuple[dict[str, Any], ParamErrors]:
    errors: ParamErrors = {}
    values = _list_params(params, errors, JOB_SORT_FIELDS)
    values["customer_id"] = params.get("customer_id") or None
    values["employee_ids"] = _array_param(params, "employee_ids", errors)
    values["work_status"] = _array_param(params, "work_status", errors, JOB_WORK_STATUSES)
    values.update(_time_params(params, ("scheduled_start", "scheduled_end"), errors))
    return values, errors


def _invoice_query(params: QueryParams) -> tuple[dict[str, Any], ParamErrors]:
    errors: ParamErrors = {}
    values = _list_params(params, errors, INVOICE_SORT_FIELDS)
    values["status"] = _array_param(params, "status", errors, INVOICE_STATUSES)
    values["customer_uuid"] = _array_param(params, "customer_uuid", errors)
    values.update(_time_params(params, ("created_at", "due_at", "paid_at"), errors))
    return values, errors


def _customer_query(params: QueryParams) -> tuple[dict[str, Any], ParamErrors]:
    errors: ParamErrors = {}
    values = _list_params(params, errors, CUSTOMER_SORT_FIELDS)
    values["q"] = params.get("q") or None
    return values, errors


# ------------------------------------------------------------------------------ routes


def _guard(state: SandboxState) -> Callable[[Endpoint], Endpoint]:
    def api(endpoint: Endpoint) -> Endpoint:
        """Auth, rate limit and fault injection in front of an API endpoint, in that order."""

        async def guarded(request: Request) -> Response:
            if not _authorized(request.headers.get("authorization"), state.api_key):
                return JSONResponse({"message": "Unauthorized"}, status_code=401)
            if not state.take_token():
                response = _error(429, "rate limit exceeded")
                response.headers["Retry-After"] = "1"
                return response
            if state.inject_fault():
                return _error(500, "internal server error (injected)")
            return await endpoint(request)

        return guarded

    return api


Write = Callable[[dict[str, str], dict[str, Any]], Any]
"""(path parameters, JSON body) -> the record written, or None when the target is missing."""


def _writer(
    write: Write, *, status: int = 200, missing: str = "", empty_ok: bool = False
) -> Endpoint:
    """An endpoint that hands the path parameters and the JSON body to ``write``: 422 on a
    body that is not a JSON object (with ``empty_ok``, no body at all is ``{}``) or on
    ``ValidationFailed``, 404 ``missing`` when ``write`` returns None."""

    async def endpoint(request: Request) -> Response:
        empty = empty_ok and not (await request.body()).strip()
        body = {} if empty else await _json_object(request)
        if body is None:
            return _invalid({"body": ["must be a JSON object"]})
        try:
            record = write(request.path_params, body)
        except ValidationFailed as exc:
            return _invalid(exc.errors)
        if record is None:
            return _error(404, missing)
        return JSONResponse(wire(record), status_code=status)

    return endpoint


def _customer_routes(state: SandboxState, api: Callable[[Endpoint], Endpoint]) -> list[Route]:
    async def list_customers(request: Request) -> Response:
        values, errors = _customer_query(request.query_params)
        if errors:
            return _invalid(errors)
        return JSONResponse(wire(state.list_customers(**values)))

    async def get_customer(request: Request) -> Response:
        record = state.get_customer(request.path_params["customer_id"])
        if record is None:
            return _error(404, "customer not found")
        return JSONResponse(wire(record))

    def update(path: dict[str, str], body: dict[str, Any]) -> Any:
        return state.update_customer(path["customer_id"], body)

    async def delete_customer(request: Request) -> Response:
        if not state.delete_customer(request.path_params["customer_id"]):
            return _error(404, "customer not found")
        return Response(status_code=204)

    create = _writer(lambda _path, body: state.create_customer(body), status=201)
    return [
        Route("/customers", api(list_customers), methods=["GET"]),
        Route("/customers", api(create), methods=["POST"]),
        Route("/customers/{customer_id}", api(get_customer), methods=["GET"]),
        Route(
            "/customers/{customer_id}",
            api(_writer(update, missing="customer not found")),
            methods=["PUT"],
        ),
        Route("/customers/{customer_id}", api(delete_customer), methods=["DELETE"]),
    ]


def _job_routes(state: SandboxState, api: Callable[[Endpoint], Endpoint]) -> list[Route]:
    async def list_jobs(request: Request) -> Response:
        values, errors = _job_query(request.query_params)
        if errors:
            return _invalid(errors)
        return JSONResponse(state.list_jobs(**values))

    async def get_job(request: Request) -> Response:
        record = state.get_job(request.path_params["job_id"])
        if record is None:
            return _error(404, "job not found")
        return JSONResponse(record)

    def update(path: dict[str, str], body: dict[str, Any]) -> Any:
        return state.update_job(path["job_id"], body)

    async def delete_job(request: Request) -> Response:
        try:
            deleted = state.delete_job(request.path_params["job_id"])
        except Refused as exc:
            return _error(422, str(exc))
        if not deleted:
            return _error(404, "job not found")
        return Response(status_code=204)

    create = _writer(lambda _path, body: state.create_job(body), status=201)
    return [
        Route("/jobs", api(list_jobs), methods=["GET"]),
        Route("/jobs", api(create), methods=["POST"]),
        Route("/jobs/{job_id}", api(get_job), methods=["GET"]),
        Route("/jobs/{job_id}", api(_writer(update, missing="job not found")), methods=["PUT"]),
        Route("/jobs/{job_id}", api(delete_job), methods=["DELETE"]),
    ]


def _invoice_routes(state: SandboxState, api: Callable[[Endpoint], Endpoint]) -> list[Route]:
    async def list_invoices(request: Request) -> Response:
        values, errors = _invoice_query(request.query_params)
        if errors:
            return _invalid(errors)
        return JSONResponse(state.list_invoices(**values))

    async def get_invoice(request: Request) -> Response:
        record = state.get_invoice(request.path_params["invoice_id"])
        if record is None:
            return _error(404, "invoice not found")
        return JSONResponse(record)

    async def list_payments(request: Request) -> Response:
        errors: ParamErrors = {}
        values = _list_params(request.query_params, errors, ("created_at",))
        if errors:
            return _invalid(errors)
        body = state.list_payments(
            request.path_params["invoice_id"], page=values["page"], page_size=values["page_size"]
        )
        if body is None:
            return _error(404, "invoice not found")
        return JSONResponse(body)

    create = _writer(lambda _path, body: state.create_invoice(body), status=201)
    return [
        Route("/invoices", api(list_invoices), methods=["GET"]),
        Route("/invoices", api(create), methods=["POST"]),
        Route("/invoices/{invoice_id}", api(get_invoice), methods=["GET"]),
        Route("/invoices/{invoice_id}/payments", api(list_payments), methods=["GET"]),
    ]


def _line_item_routes(state: SandboxState, api: Callable[[Endpoint], Endpoint]) -> list[Route]:
    async def list_lines(request: Request) -> Response:
        errors: ParamErrors = {}
        values = _list_params(request.query_params, errors, ("created_at",))
        if errors:
            return _invalid(errors)
        body = sandbox_lines.list_lines(
            state,
            request.path_params["job_id"],
            page=values["page"],
            page_size=values["page_size"],
        )
        if body is None:
            return _error(404, "job not found")
        return JSONResponse(body)

    def create(path: dict[str, str], body: dict[str, Any]) -> Any:
        return sandbox_lines.create_line(state, path["job_id"], body)

    def bulk(path: dict[str, str], body: dict[str, Any]) -> Any:
        return sandbox_lines.bulk_update(state, path["job_id"], body)

    return [
        Route("/jobs/{job_id}/line_items", api(list_lines), methods=["GET"]),
        Route(
            "/jobs/{job_id}/line_items",
            api(_writer(create, status=201, missing="job not found")),
            methods=["POST"],
        ),
        Route(
            "/jobs/{job_id}/line_items/bulk_update",
            api(_writer(bulk, missing="job not found")),
            methods=["PUT"],
        ),
    ]


def _sandbox_routes(state: SandboxState, sender: WebhookSender | None) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def webhooks(request: Request) -> Response:
        if sender is None:
            counts = dict.fromkeys(("sent", "dropped", "failed", "retried", "pending"), 0)
            return JSONResponse({"enabled": False, **counts, "ping": "off"})
        return JSONResponse({"enabled": True, **sender.stats()})

    async def list_requests(request: Request) -> Response:
        return JSONResponse({"requests": state.requests()})

    async def clear_requests(request: Request) -> Response:
        state.clear_requests()
        return JSONResponse({"ok": True})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def options(request: Request) -> Response:
        return JSONResponse(state.options())

    async def faults(request: Request) -> Response:
        return JSONResponse(state.faults())

    def record_payment(path: dict[str, str], body: dict[str, Any]) -> Any:
        return state.record_payment(path["invoice_id"], body)

    def change_invoice(path: dict[str, str], body: dict[str, Any]) -> Any:
        return state.change_invoice(path["invoice_id"], body)

    def refund(path: dict[str, str], body: dict[str, Any]) -> Any:
        return state.refund_payment(path["payment_id"], body)

    return [
        Route("/_sandbox/health", health, methods=["GET"]),
        Route("/_sandbox/webhooks", webhooks, methods=["GET"]),
        Route("/_sandbox/requests", list_requests, methods=["GET"]),
        Route("/_sandbox/requests", clear_requests, methods=["DELETE"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/options", options, methods=["GET"]),
        Route(
            "/_sandbox/options",
            _writer(lambda _path, body: state.set_options(body)),
            methods=["PUT"],
        ),
        Route("/_sandbox/faults", faults, methods=["GET"]),
        Route(
            "/_sandbox/faults",
            _writer(lambda _path, body: state.set_faults(body)),
            methods=["PUT"],
        ),
        Route(
            "/_sandbox/invoices/{invoice_id}/payments",
            _writer(record_payment, status=201, missing="invoice not found"),
            methods=["POST"],
        ),
        Route(
            "/_sandbox/invoices/{invoice_id}",
            _writer(change_invoice, missing="invoice not found"),
            methods=["PUT"],
        ),
        Route(
            "/_sandbox/payments/{payment_id}/refund",
            _writer(refund, missing="payment not found", empty_ok=True),  # all that is left
            methods=["POST"],
        ),
    ]


async def _html_not_found(request: Request, exc: Exception) -> Response:
    return HTMLResponse(_NOT_FOUND_PAGE, status_code=404)


class _LogAndDelay:
    """Outermost middleware: adds ``latency_ms`` and logs every non-``/_sandbox/`` request
    with the status it got."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.state.latency_ms > 0:
                await anyio.sleep(self.state.latency_ms / 1000)
            await self.app(scope, receive, send_and_note)
        finally:
            self.state.log_request(
                scope["method"], scope["path"], scope["query_string"].decode("latin-1"), status
            )


def create_app(
    api_key: str,
    *,
    seed: int | None = None,
    latency_ms: int = 0,
    error_rate: float = 0.0,
    rate_limit: float | None = None,
    data_file: str | None = None,
    random_seed: int = 0,
    nest_payments: bool = True,
    live_invoices: bool = False,
    webhooks: Webhooks | None = None,
) -> Starlette:
    """The sandbox as an ASGI app; its ``SandboxState`` is ``app.state.sandbox``.

    ``seed`` is the number of generated customers (none when ``None``), each with generated
    jobs, invoices and payments; ``data_file`` loads a ``dump()`` instead. ``nest_payments``
    and ``live_invoices`` emulate the live API's invoice shape (see the module docstring).
    Bad arguments or a bad data file raise ``ConfigError``.

    With ``webhooks`` every change is sent to its URL by a started ``WebhookSender``,
    ``app.state.webhooks`` (None without): whoever made the app closes it
    (``app.state.webhooks.close()``) when done with it.
    """
    if not api_key:
        raise ConfigError("the sandbox needs a non-empty API key", location="sandbox.api_key")
    state = SandboxState(
        api_key=api_key,
        seed=seed,
        data_file=data_file,
        random_seed=random_seed,
        latency_ms=latency_ms,
        error_rate=error_rate,
        rate_limit=rate_limit,
        nest_payments=nest_payments,
        live_invoices=live_invoices,
    )
    sender = None
    if webhooks is not None:
        sender = WebhookSender(webhooks, random_seed=random_seed)
        state.listener = sender.publish
        sender.start()
    api = _guard(state)
    app = Starlette(
        routes=[
            *_sandbox_routes(state, sender),
            *_customer_routes(state, api),
            *_job_routes(state, api),
            *_invoice_routes(state, api),
            *_line_item_routes(state, api),
        ],
        middleware=[Middleware(_LogAndDelay, state=state)],
        exception_handlers={404: _html_not_found, 405: _html_not_found},
    )
    app.router.redirect_slashes = False
    app.state.sandbox = state
    app.state.webhooks = sender
    return app


# ------------------------------------------------------------------------------ serving


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    api_key: str,
    seed: int | None = None,
    latency_ms: int = 0,
    error_rate: float = 0.0,
    rate_limit: float | None = None,
    data_file: str | None = None,
    random_seed: int = 0,
    nest_payments: bool = True,
    live_invoices: bool = False,
    webhooks: Webhooks | None = None,
) -> None:
    """Run the sandbox with uvicorn until interrupted (SIGINT/SIGTERM); with ``webhooks``,
    the events still waiting then get two seconds to be delivered.

    Prints ``sandbox listening on http://HOST:PORT`` once it accepts connections; with
    ``port=0`` the line carries the port the system chose. A port outside 0..65535 or a host
    that names no interface is a UsageError; a port that is taken an UnavailableError.
    """
    sock = listening_socket(host, port)  # before the data is generated: fail fast
    app = create_app(
        api_key,
        seed=seed,
        latency_ms=latency_ms,
        error_rate=error_rate,
        rate_limit=rate_limit,
        data_file=data_file,
        random_seed=random_seed,
        nest_payments=nest_payments,
        live_invoices=live_invoices,
        webhooks=webhooks,
    )
    # This process exists to serve the seeded data: keep it out of the garbage collector's
    # full passes (a million long-lived objects would make the first requests pause).
    gc.freeze()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    try:
        _AnnouncingServer(config).run(sockets=[sock])
    finally:
        if app.state.webhooks is not None:
            app.state.webhooks.close(timeout=2.0)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (uvicorn listens on it)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: use a port from 1 to 65535, or 0 for any free one")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"--host {host!r}: {exc.strerror}; use an address such as 127.0.0.1"
        ) from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if ":" in host else host
        raise UnavailableError(
            f"cannot listen on {shown}:{port}: {exc.strerror or exc}; stop "
            "what uses that port, or choose another with --port (0: any free one)"
        ) from None
    return sock


class _AnnouncingServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        bound = self.servers[0].sockets[0].getsockname() if self.servers else None
        port = bound[1] if bound else self.config.port
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        sys.stdout.write(f"sandbox listening on http://{shown}:{port}\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------ in-process


class SyncASGITransport(httpx.BaseTransport):
    """Lets a synchronous ``httpx.Client`` call an ASGI app in-process.

    One private event loop runs in a daemon thread for the transport's life; each request is
    handed to it with ``run_coroutine_threadsafe``. Safe to use from several threads.
    ``close()`` (called by ``Client.close()``) stops the loop; a later request starts a new one.
    """

    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self._inner = httpx.ASGITransport(app=app, client=client)
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="sandbox-asgi-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        future = asyncio.run_coroutine_threadsafe(self._call(request), self._running_loop())
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            status, headers, content = future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise httpx.ReadTimeout(
                "the ASGI app did not answer in time", request=request
            ) from None
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _call(self, request: httpx.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self._inner.handle_async_request(request)
        content = await response.aread()
        return response.status_code, response.headers.raw, content

    def close(self) -> None:
        with self._guard:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
