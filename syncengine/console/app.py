"""The console's Starlette application: ``create_app(config_path, runner=...)``.

The daemon mounts it beside ``/healthz`` (passing a ``ConsoleRunner`` that asks its
scheduler to run a pipeline now); ``syncengine console`` serves it alone with uvicorn.
Every page needs a signed-in user but ``/login`` and ``/static``; every POST needs the
session's CSRF token; every action is recorded in the audit log as the signed-in user.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import jinja2
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from syncengine import api
from syncengine.config import Config
from syncengine.console import auth, views
from syncengine.console.preview import PAGE_SIZE, filter_rows, plan_rows, summary
from syncengine.console.security import (
    SecureCookies,
    SecurityHeaders,
    csrf_ok,
    csrf_token,
    is_public,
    route_path,
    signed_in,
)
from syncengine.errors import ConfigError, StateUnavailableError, SyncEngineError, UsageError
from syncengine.redact import Redactor, redact_text

__all__ = ["ConsoleRunner", "ThreadRunner", "create_app", "serve"]

log = structlog.get_logger("syncengine.console")
HERE = Path(__file__).parent
COOKIE = "syncengine_console"
PREVIEWS_KEPT = 8
MAX_REASON = 500
"""Characters a pause reason may have at most."""


class ConsoleRunner(Protocol):
    """Starts a run of a pipeline now; returns the sentence to show the person."""

    def run_now(self, pipeline: str) -> str: ...


class ThreadRunner:
    """``ConsoleRunner`` of a console served alone: runs ``api.sync`` for the pipeline in a
    background thread of this process. A paused pipeline, or one whose lease is held, is not
    started: the answer says so (and names who holds it)."""

    def __init__(self, load: Callable[[], Config]) -> None:
        self._load = load
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def run_now(self, pipeline: str) -> str:
        config = self._load()
        config.pipeline(pipeline)
        with self._lock:
            running = self._threads.get(pipeline)
            if running is not None and running.is_alive():
                return f"A run of {pipeline} started here is still going."
            status = api.status(config, pipeline)[0]
            if status.paused is not None:
                return f"{pipeline} is paused: resume it to run it."
            lease = status.lease
            if lease is not None and not lease.get("gone"):
                return f"{pipeline} is busy: {lease['by']}. Try again when it has finished."
            thread = threading.Thread(
                target=self._run,
                args=(config, pipeline),
                name=f"console-run-{pipeline}",
                daemon=True,
            )
            self._threads[pipeline] = thread
            thread.start()
        return f"A run of {pipeline} started; see Runs for its outcome."

    def join(self, timeout: float | None = None) -> None:
        """Wait for the runs started here (tests, shutdown)."""
        for thread in list(self._threads.values()):
            thread.join(timeout)

    @staticmethod
    def _run(config: Config, pipeline: str) -> None:
        try:
            api.sync(config, pipeline=pipeline)
        except SyncEngineError as exc:
            log.warning("console run failed", pipeline=pipeline, error=str(exc))
        except Exception:
            log.exception("console run failed", pipeline=pipeline)


@dataclass
class _Preview:
    """A dry run kept for paging and filtering."""

    pipeline: str
    made_at: dt.datetime
    user: str
    rows: list[Any]
    summary: list[Any]
    result_json: dict[str, Any]
    notes: list[str] = field(default_factory=list)


class _Console:
    """The state of one console app: the config (reloaded when its file changes), the
    users, the sign-in limiter, the runner and the dry runs kept."""

    def __init__(self, config_path: Path, runner: ConsoleRunner | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._mtime = 0.0
        self._lock = threading.Lock()
        self._users: auth.UsersFile | None = None
        self._users_mtime: tuple[int, int, int] = (0, 0, 0)
        self.config()  # a broken config fails at start, not on the first page
        self.runner: ConsoleRunner = runner or ThreadRunner(self.config)
        self.limiter = auth.LoginLimiter()
        self.previews: OrderedDict[str, _Preview] = OrderedDict()

    def config(self) -> Config:
        """The config, read again when its file changed."""
        with self._lock:
            mtime = self.config_path.stat().st_mtime
            if self._config is None or mtime != self._mtime:
                self._config = api.require_config(self.config_path)
                self._mtime = mtime
            return self._config

    def known_user(self, name: str, sid: str | None = None) -> bool:
        """Whether ``name`` is (still) in the users file (read again when it changed) and
        the session ``sid`` was not signed out."""
        path = auth.users_path(self.config())
        try:
            found = path.stat()
        except FileNotFoundError:
            return False
        mtime = (found.st_mtime_ns, found.st_size, found.st_ino)
        with self._lock:
            if self._users is None or self._users_mtime != mtime:
                self._users = auth.load_users(path)
                self._users_mtime = mtime
            if sid is not None and sid in self._users.revoked:
                return False
            return name in self._users.users

    def redactor(self) -> Redactor:
        """Masks every secret of the config in what a page shows."""
        return Redactor(self.config().secrets)

    def keep_preview(self, preview: _Preview) -> str:
        pid = uuid.uuid4().hex
        self.previews[pid] = preview
        while len(self.previews) > PREVIEWS_KEPT:
            self.previews.popitem(last=False)
        return pid


def safe_next(wanted: str) -> str:
    """Where to go after signing in: a path of the console, never another site (``//host``,
    ``/\\host``, a scheme, control characters all give ``/``)."""
    ok = (
        wanted.startswith("/")
        and not wanted.startswith(("//", "/\\"))
        and "\\" not in wanted
        and all(c.isprintable() for c in wanted)
    )
    return wanted if ok else "/"


def path_for(request: Request, name: str, /, **params: Any) -> str:
    """The path of the console's route ``name`` (with the prefix it is mounted at): never a
    URL with the request's Host header in it."""
    root: str = request.scope.get("root_path", "")
    return root + str(request.app.router.url_path_for(name, **params))


class _SignInRequired:
    """ASGI middleware: no anonymous access but to ``/login`` and ``/static``. A GET is sent
    to the sign-in page; anything else is answered 401. A session whose user is no longer
    in the users file has ended."""

    def __init__(self, app: ASGIApp, *, known: Callable[[str, str | None], bool]) -> None:
        self.app = app
        self.known = known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(route_path(scope)):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        user = signed_in(request)
        sid = request.session.get("sid")
        if user is not None and (
            not isinstance(sid, str) or not await run_in_threadpool(self.known, user, sid)
        ):
            request.session.clear()  # signed out, or a user no longer in the users file
            user = None
        if user is None:
            response: Response
            if request.method in ("GET", "HEAD"):
                login = path_for(request, "login")
                wanted = route_path(scope)
                query = "?" + urlencode({"next": wanted}) if wanted != "/" else ""
                response = RedirectResponse(login + query, status_code=303)
            else:
                response = HTMLResponse("<p>Sign in first.</p>", status_code=401)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


Handler = Callable[[Request], Awaitable[Response]]


def create_app(config_path: Path, *, runner: ConsoleRunner | None = None) -> Starlette:
    """The console for the config at ``config_path``. ``runner`` starts a pipeline for "Run
    now" (the daemon's scheduler); None runs it in a thread of this process."""
    console = _Console(Path(config_path), runner)
    config = console.config()
    problems = auth.console_problems(config)  # what `validate` refuses, the console does
    if problems:
        raise ConfigError(problems)
    auth.unknown_user_hash()  # made now: the first sign-in of an unknown name is not faster
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["csrf"] = csrf_token

    @jinja2.pass_context
    def url_for(context: dict[str, Any], name: str, /, **params: Any) -> str:
        return path_for(context["request"], name, **params)

    templates.env.globals["url_for"] = url_for
    templates.env.filters["when"] = views.when

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        flashes = request.session.pop("flash", []) if "user" in request.session else []
        context.update(user=signed_in(request), flashes=flashes, page_name=name)
        response: Response = templates.TemplateResponse(
            request, name + ".html", context, status_code
        )
        body = bytes(response.body)
        masked = console.redactor()(body.decode())
        if masked.encode() != body:  # never let a secret out, whatever showed it
            response = HTMLResponse(masked, status_code)
        return response

    def flash(request: Request, text: str, kind: str = "ok") -> None:
        request.session.setdefault("flash", []).append({"text": text, "kind": kind})

    def back(request: Request, name: str, **params: str) -> Response:
        return RedirectResponse(path_for(request, name, **params), status_code=303)

    def audit(
        user: str,
        action: str,
        target: str,
        before: Any = None,
        after: Any = None,
        pipeline: str | None = None,
    ) -> None:
        views.audit(console.config(), user, action, target, before, after, pipeline)

    async def checked_form(request: Request) -> FormData | Response:
        """The POSTed form, or the 403 of a request without the session's CSRF token."""
        form = await request.form()
        if not csrf_ok(request, form):
            return HTMLResponse(
                "<p>This form is out of date or did not come from the console. Go back, "
                "reload the page and try again.</p>",
                status_code=403,
            )
        return form

    # ------------------------------------------------------------------ sign-in

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page(request, "login", next=request.query_params.get("next", ""))
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        name = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        wanted = str(form.get("next", ""))
        client = request.client.host if request.client else "?"
        keys = [f"user:{name.lower()}", f"client:{client}"]
        # a name typed at sign-in is recorded as add-user allows them, else a placeholder
        # with a short repr: no control character or forged line reaches the audit log
        shown = name if auth.valid_name(name) else f"(not a user name: {name[:40]!r})"
        wait = console.limiter.wait(keys, time.monotonic())
        if wait > 0:
            audit(
                shown,
                "console.sign_in_refused",
                "console",
                None,
                {"client": client, "reason": "too many failed tries"},
            )
            return page(
                request,
                "login",
                429,
                next=wanted,
                username=name,
                error=f"Too many failed sign-ins. Wait {int(wait) + 1} seconds and try again.",
            )
        users = await run_in_threadpool(auth.load_users, auth.users_path(console.config()))
        ok = await run_in_threadpool(auth.check_password, users, name, password)
        if not ok:
            console.limiter.failed(keys, time.monotonic())
            audit(shown, "console.sign_in_failed", "console", None, {"client": client})
            return page(
                request,
                "login",
                401,
                next=wanted,
                username=name,
                error="Wrong user name or password.",
            )
        console.limiter.succeeded(keys)
        request.session.clear()  # a new session: nothing of the anonymous one is kept
        request.session.update(
            user=name,
            sid=secrets.token_urlsafe(24),
            csrf=secrets.token_urlsafe(32),
            since=dt.datetime.now(dt.UTC).isoformat(),
        )
        audit(name, "console.sign_in", "console", None, {"client": client})
        target = safe_next(wanted)
        root = request.scope.get("root_path", "")
        return RedirectResponse(root + target, status_code=303)

    async def logout(request: Request) -> Response:
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        user = signed_in(request) or "?"
        sid = request.session.get("sid")
        if isinstance(sid, str):  # ended for good: the cookie, if kept, is refused
            cfg = console.config()
            now = time.time()
            until = now + cfg.console.session_hours * 3600 + 60
            await run_in_threadpool(auth.revoke_session, cfg, sid, until, now)
        request.session.clear()
        audit(user, "console.sign_out", "console")
        return back(request, "login")

    # ------------------------------------------------------------------ pages

    async def overview(request: Request) -> Response:
        rows = await run_in_threadpool(views.overview, console.config())
        return page(request, "overview", pipelines=rows)

    async def pipeline_action(request: Request) -> Response:
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        name, action = request.path_params["name"], request.path_params["action"]
        user = signed_in(request) or "?"
        cfg = console.config()
        if name not in cfg.pipelines:
            return page(request, "error", 404, message=f"There is no pipeline {name}.")
        if action == "pause":
            reason = str(form.get("reason", "")).strip() or f"paused in the console by {user}"
            if len(reason) > MAX_REASON:
                flash(
                    request,
                    f"The reason has {len(reason)} characters; keep it under {MAX_REASON}. "
                    f"{name} was not paused.",
                    "error",
                )
                return back(request, "overview")
            reason = redact_text(reason, cfg.secrets)  # as the pause keeps it
            await run_in_threadpool(api.pause, cfg, name, reason)
            audit(user, "pipeline.pause", f"pipeline {name}", None, {"reason": reason}, name)
            flash(request, f"{name} is paused: no scheduled run starts until it is resumed.")
        elif action == "resume":
            lifted = await run_in_threadpool(api.resume, cfg, name)
            audit(user, "pipeline.resume", f"pipeline {name}", None, {"lifted": bool(lifted)}, name)
            flash(request, f"{name} resumed." if lifted else f"{name} was not paused.")
        elif action == "run":
            text = await run_in_threadpool(console.runner.run_now, name)
            audit(user, "pipeline.run_now", f"pipeline {name}", None, {"answer": text}, name)
            flash(request, text)
        else:
            return page(request, "error", 404, message=f"There is no action {action}.")
        return back(request, "overview")

    async def runs(request: Request) -> Response:
        cfg = console.config()
        chosen = request.query_params.get("pipeline") or None
        if chosen is not None and chosen not in cfg.pipelines:
            return page(request, "error", 404, message=f"There is no pipeline {chosen}.")
        history = await run_in_threadpool(views.runs, cfg, chosen)
        return page(request, "runs", runs=history, pipelines=list(cfg.pipelines), chosen=chosen)

    async def preview_start(request: Request) -> Response:
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        cfg = console.config()
        name = str(form.get("pipeline", ""))
        user = signed_in(request) or "?"
        if name not in cfg.pipelines:
            return page(request, "error", 404, message=f"There is no pipeline {name}.")
        try:
            results = await run_in_threadpool(lambda: api.sync(cfg, pipeline=name, dry_run=True))
        except SyncEngineError as exc:
            audit(user, "pipeline.preview", f"pipeline {name}", None, {"error": str(exc)}, name)
            flash(request, f"The preview of {name} could not run: {exc}", "error")
            return back(request, "preview")
        result = results[0]
        notes = [f"{o.plan.entity}: {n}" for o in result.outcomes for n in o.plan.notes]
        notes += [
            f"{o.plan.entity}: stopped by a safety guard: {o.plan.guard}"
            for o in result.outcomes
            if o.plan.guard
        ]
        pid = console.keep_preview(
            _Preview(
                name,
                dt.datetime.now(dt.UTC),
                user,
                plan_rows(result),
                summary(result),
                result.to_json(),
                notes,
            )
        )
        changes = {"changes": len(console.previews[pid].rows)}
        audit(user, "pipeline.preview", f"pipeline {name}", None, changes, name)
        return back(request, "preview_show", pid=pid)

    async def preview(request: Request) -> Response:
        cfg = console.config()
        return page(request, "preview", pipelines=list(cfg.pipelines), shown=None)

    async def preview_show(request: Request) -> Response:
        kept = console.previews.get(request.path_params["pid"])
        if kept is None:
            flash(request, "That preview is no longer kept; run it again.", "error")
            return back(request, "preview")
        q = request.query_params
        entity, member, op = q.get("entity", ""), q.get("member", ""), q.get("op", "")
        rows = filter_rows(kept.rows, entity=entity, member=member, op=op)
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        try:
            number = min(max(1, int(q.get("page", "1"))), pages)
        except ValueError:
            number = 1
        shown = rows[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        cfg = console.config()
        p = cfg.pipelines.get(kept.pipeline)
        problems = [
            {"entity": e, **pr}
            for e, counts in kept.result_json["entities"].items()
            for pr in counts.get("problems", [])
        ]

        def page_link(n: int) -> str:
            params = {k: v for k, v in (("entity", entity), ("member", member), ("op", op)) if v}
            return "?" + urlencode({**params, "page": str(n)})

        return page(
            request,
            "preview",
            pipelines=list(cfg.pipelines),
            shown=kept,
            pid=request.path_params["pid"],
            rows=shown,
            total=len(rows),
            number=number,
            pages=pages,
            page_link=page_link,
            entities=list(p.entities) if p else [],
            members=list(p.members) if p else [],
            ops=["create", "update", "link", "delete", "conflict", "skip"],
            entity=entity,
            member=member,
            op=op,
            problems=problems,
        )

    async def conflicts(request: Request) -> Response:
        items = await run_in_threadpool(views.conflicts, console.config())
        return page(request, "conflicts", conflicts=items)

    async def conflict_resolve(request: Request) -> Response:
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        cid = int(request.path_params["cid"])
        user = signed_in(request) or "?"
        take = str(form.get("take", ""))
        typed = form.get("value")
        if take == "typed" and typed is None:  # an empty field clears; no field is an error
            return page(
                request, "error", 400, message="The form sent no value to take; nothing changed."
            )
        try:
            row, value = await run_in_threadpool(
                views.resolve, console.config(), cid, take, typed if take == "typed" else None
            )
        except SyncEngineError as exc:
            flash(request, str(exc), "error")
            return back(request, "conflicts")
        audit(
            user,
            "conflict.resolve",
            f"conflict {cid} ({row.entity} {row.key} {row.field})",
            {"values": row.values, "base": row.base_value},
            {"take": take, "value": value},
            row.pipeline,
        )
        flash(request, f"Conflict {cid} settled; the next sync writes it to every member.")
        return back(request, "conflicts")

    async def skipped(request: Request) -> Response:
        items = await run_in_threadpool(views.skipped, console.config())
        return page(request, "skipped", pipelines=items)

    async def reconcile(request: Request) -> Response:
        try:
            reports = await run_in_threadpool(views.reconcile, console.config())
            error = ""
        except SyncEngineError as exc:
            reports, error = [], str(exc)
        return page(request, "reconcile", reports=reports, error=error)

    async def review(request: Request) -> Response:
        items = await run_in_threadpool(views.review_views, console.config())
        return page(request, "review", items=items)

    async def review_decide(request: Request) -> Response:
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        rid, choice = int(request.path_params["rid"]), request.path_params["choice"]
        user = signed_in(request) or "?"
        cfg = console.config()
        try:
            if choice == "link":
                hub_key = str(form.get("hub_key", ""))
                item = await run_in_threadpool(api.review_link, cfg, rid, hub_key, user)
                flash(request, f"{item.label} will be linked to that record by the next sync.")
            elif choice == "separate":
                item = await run_in_threadpool(api.review_separate, cfg, rid, user)
                flash(request, f"{item.label} is kept as a record of its own; not asked again.")
            else:
                return page(request, "error", 404, message=f"There is no choice {choice}.")
        except SyncEngineError as exc:
            flash(request, str(exc), "error")
        return back(request, "review")

    async def deletes(request: Request) -> Response:
        items = await run_in_threadpool(views.held_views, console.config())
        return page(request, "deletes", batches=items)

    async def delete_decide(request: Request) -> Response:
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        did, choice = int(request.path_params["did"]), request.path_params["choice"]
        user = signed_in(request) or "?"
        cfg = console.config()
        try:
            if choice == "approve":
                done = await run_in_threadpool(api.approve_delete, cfg, [did], user)
                if done[0].warning:  # still referred to: it will be given back
                    flash(request, f"Approved {done[0].label}, but {done[0].warning}.", "error")
                else:
                    flash(request, f"Approved: the next sync deletes {done[0].label}.")
            elif choice == "restore":
                done = await run_in_threadpool(api.restore_delete, cfg, [did], user)
                flash(
                    request,
                    f"Restored: the next sync gives {done[0].label} back to {done[0].member}.",
                )
            else:
                return page(request, "error", 404, message=f"There is no choice {choice}.")
        except SyncEngineError as exc:
            flash(request, str(exc), "error")
        return back(request, "deletes")

    async def delete_batch(request: Request) -> Response:
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        user = signed_in(request) or "?"
        pipeline, entity = str(form.get("pipeline", "")), str(form.get("entity", ""))
        try:
            done = await run_in_threadpool(
                api.approve_guarded, console.config(), pipeline, entity, user
            )
            flash(request, f"Approved the batch: the next sync deletes {len(done)} {entity}.")
        except SyncEngineError as exc:
            flash(request, str(exc), "error")
        return back(request, "deletes")

    async def audit_log(request: Request) -> Response:
        try:
            number = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            number = 1
        items = await run_in_threadpool(views.audit_entries, console.config(), number)
        return page(request, "audit", items=items, number=number, more=len(items) == 100)

    routes = [
        Route("/login", login, methods=["GET", "POST"], name="login"),
        Route("/logout", logout, methods=["POST"], name="logout"),
        Route("/", overview, name="overview"),
        Route(
            "/pipelines/{name}/{action:str}",
            pipeline_action,
            methods=["POST"],
            name="pipeline_action",
        ),
        Route("/runs", runs, name="runs"),
        Route("/preview", preview, name="preview"),
        Route("/preview", preview_start, methods=["POST"], name="preview_start"),
        Route("/preview/{pid}", preview_show, name="preview_show"),
        Route("/conflicts", conflicts, name="conflicts"),
        Route(
            "/conflicts/{cid:int}/resolve",
            conflict_resolve,
            methods=["POST"],
            name="conflict_resolve",
        ),
        Route("/skipped", skipped, name="skipped"),
        Route("/reconcile", reconcile, name="reconcile"),
        Route("/review", review, name="review"),
        Route(
            "/review/{rid:int}/{choice:str}", review_decide, methods=["POST"], name="review_decide"
        ),
        Route("/deletes", deletes, name="deletes"),
        Route("/deletes/batch", delete_batch, methods=["POST"], name="delete_batch"),
        Route(
            "/deletes/{did:int}/{choice:str}", delete_decide, methods=["POST"], name="delete_decide"
        ),
        Route("/audit", audit_log, name="audit"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SecureCookies, trust_forwarded_proto=config.console.trust_forwarded_proto),
        Middleware(
            SessionMiddleware,
            secret_key=auth.secret_key(config),
            session_cookie=COOKIE,
            max_age=int(config.console.session_hours * 3600),
            same_site="lax",
            https_only=False,
        ),
        Middleware(_SignInRequired, known=console.known_user),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # runs started here ("Run now" of a console served alone) may finish and commit
        if isinstance(console.runner, ThreadRunner):
            grace = console.config().daemon.shutdown_grace
            await run_in_threadpool(console.runner.join, grace)

    async def store_unusable(request: Request, exc: Exception) -> Response:
        """A page that needs the state store while it cannot be reached (a database down, a
        file deleted): said as such, never a 500 with a traceback."""
        message = console.redactor()(str(exc))
        log.warning("console: the state store cannot be used", path=request.url.path, error=message)
        return page(
            request,
            "error",
            503,
            title="The state store cannot be used",
            message=f"{message}. Nothing was changed; try again once it is back.",
        )

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={StateUnavailableError: store_unusable},
    )
    app.state.console = console
    return app


def serve(app: Starlette, host: str, port: int, *, announce: Callable[[str], None]) -> None:
    """Serve ``app`` with uvicorn on ``host``:``port`` until SIGINT or SIGTERM (port 0: a free
    one). The socket is bound first, so that a port in use is a UsageError before anything
    starts; ``announce`` is told the URL (with the real port) once it listens."""
    import socket

    import uvicorn

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, where = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
    except OSError as exc:
        raise UsageError(
            f"--http {host}:{port}: cannot listen there: {exc.strerror or exc}"
        ) from None
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_level="warning",
        proxy_headers=False,  # X-Forwarded-Proto is the console's own decision
        server_header=False,
    )
    server = uvicorn.Server(config)
    sock.listen(128)  # connections made from now on wait for uvicorn to take them
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    announce(f"http://{shown}:{bound_port}")
    server.run(sockets=[sock])
