"""The web console's security over real HTTP (uvicorn on loopback, httpx): no anonymous
access, CSRF tokens on every POST, the sign-in rate limit, no secret on any page, the
security headers, the session cookie's flags, every action in the audit log, and the
accessibility basics (labelled controls, tables with headers).

One console server for the module (``console``); its pipelines sync CSV folders, so what a
test wrote stays for the next one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from syncengine import api
from syncengine.config import load_config
from syncengine.console.security import CSP
from tests.console_support import (
    API_KEY,
    PASSWORD,
    SESSION_SECRET,
    ConsoleServer,
    add_users,
    console_config,
    csrf_of,
    serve,
    signed_in_client,
)
from tests.csvfiles import CSV_HEADER, read_csv, write_csv

pytestmark = pytest.mark.integration

SECRET_ENV = "SYNCENGINE_TEST_CONSOLE_SECRET"


@dataclass
class Console:
    server: ConsoleServer
    config: Path
    url: str


def customer(first: str, last: str, email: str, company: str = "") -> dict[str, str]:
    return {"First Name": first, "Last Name": last, "Email": email, "Company": company}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    folder = tmp_path_factory.mktemp("console-http")
    os.environ[SECRET_ENV] = SESSION_SECRET
    path = console_config(
        folder,
        {
            "p": {"conflicts": ["manual"]},
            "g": {"deletes": "max_fraction = 0.3\nmin_count = 2"},
            "big": {},
        },
        console=f'secret_key = "${{{SECRET_ENV}}}"\ntrust_forwarded_proto = true',
    )
    (folder / "p-a").mkdir()
    (folder / "p-b").mkdir()
    write_csv(
        folder / "p-a" / "customers.csv",
        [
            customer("Ada", "Lovelace", "ada@example.com"),
            # a secret in a record: the page masks it, whatever shows it
            customer("Key", "Holder", "key@example.com", API_KEY),
        ],
        CSV_HEADER,
    )
    add_users(path, "anna", "mallory")
    server = serve(path)
    try:
        yield Console(server, path, server.url)
    finally:
        server.stop()
        os.environ.pop(SECRET_ENV, None)


@pytest.fixture
def anna(console: Console) -> Iterator[httpx.Client]:
    client = signed_in_client(console.url, "anna")
    yield client
    client.close()


PAGES = [
    "/",
    "/runs",
    "/preview",
    "/conflicts",
    "/review",
    "/deletes",
    "/skipped",
    "/reconcile",
    "/audit",
]
POSTS = [
    "/logout",
    "/pipelines/p/run",
    "/pipelines/p/pause",
    "/pipelines/p/resume",
    "/preview",
    "/conflicts/1/resolve",
    "/review/1/link",
    "/review/1/separate",
    "/deletes/1/approve",
    "/deletes/1/restore",
    "/deletes/batch",
]


def test_without_a_session_pages_lead_to_sign_in_and_actions_are_refused(
    console: Console,
) -> None:
    with httpx.Client(base_url=console.url) as anonymous:
        for path in PAGES:
            response = anonymous.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login"), path
        for path in POSTS:
            response = anonymous.post(path, data={"csrf": "x", "take": "a"})
            assert response.status_code == 401, path
        assert anonymous.get("/login").status_code == 200
        assert anonymous.get("/static/console.css").status_code == 200


def test_every_action_needs_the_sessions_csrf_token(console: Console, anna: httpx.Client) -> None:
    other = signed_in_client(console.url, "mallory")
    foreign = csrf_of(other.get("/").text)  # a real token, of another session
    other.close()
    for path in POSTS:
        for data in ({}, {"csrf": ""}, {"csrf": "forged-token-" + "x" * 32}, {"csrf": foreign}):
            response = anna.post(path, data={**data, "take": "p-a", "hub_key": "k"})
            assert response.status_code == 403, (path, data)
    # the sign-in form too
    with httpx.Client(base_url=console.url) as anonymous:
        response = anonymous.post("/login", data={"username": "anna", "password": PASSWORD})
        assert response.status_code == 403
    # nothing happened: the pipeline is not paused
    assert api.status(load_config(console.config), "p")[0].paused is None


def test_a_wrong_password_is_refused_and_repeated_tries_are_slowed(console: Console) -> None:
    with httpx.Client(base_url=console.url) as client:
        for _ in range(3):
            token = csrf_of(client.get("/login").text)
            response = client.post(
                "/login", data={"csrf": token, "username": "mallory", "password": "guess-guess"}
            )
            assert response.status_code == 401
            assert "Wrong user name or password" in response.text
        # the fourth try is refused without looking at the password, even the right one
        token = csrf_of(client.get("/login").text)
        response = client.post(
            "/login", data={"csrf": token, "username": "mallory", "password": PASSWORD}
        )
        assert response.status_code == 429
        assert "Too many failed sign-ins" in response.text
        assert "user" not in client.cookies.get("syncengine_console", "")  # not signed in
        assert client.get("/").status_code == 303
    # an unknown user is refused the same way as a wrong password
    with httpx.Client(base_url=console.url) as client:
        token = csrf_of(client.get("/login").text)
        response = client.post(
            "/login", data={"csrf": token, "username": "nobody", "password": PASSWORD}
        )
        assert response.status_code == 401


def test_the_session_cookie_is_httponly_samesite_and_secure_behind_tls(console: Console) -> None:
    with httpx.Client(base_url=console.url) as client:
        cookie = client.get("/login").headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback
    with httpx.Client(base_url=console.url, headers={"X-Forwarded-Proto": "https"}) as client:
        cookie = client.get("/login").headers["set-cookie"].lower()
        assert "httponly" in cookie and "; secure" in cookie


def test_security_headers_are_on_every_response(console: Console, anna: httpx.Client) -> None:
    responses = [anna.get(p) for p in PAGES]
    responses += [anna.get("/static/console.css"), anna.get("/no-such-page")]
    with httpx.Client(base_url=console.url) as anonymous:
        responses += [anonymous.get("/login"), anonymous.get("/")]
    for r in responses:
        assert r.headers["content-security-policy"] == CSP, r.url
        assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
    for r in responses:
        if r.headers.get("content-type", "").startswith("text/html"):
            assert "<script" not in r.text and "style=" not in r.text and "<style" not in r.text


def _all_pages(client: httpx.Client) -> dict[str, str]:
    pages = {p: client.get(p).text for p in PAGES}
    pages["/login"] = httpx.get(client.base_url.join("/login")).text
    token = csrf_of(pages["/"])
    preview = client.post("/preview", data={"csrf": token, "pipeline": "p"})
    assert preview.status_code == 303
    pages["preview result"] = client.get(preview.headers["location"]).text
    return pages


def test_no_page_shows_a_secret_from_the_config(console: Console, anna: httpx.Client) -> None:
    before = _all_pages(anna)  # the preview plans to create the record holding the key
    assert "key@example.com" in before["preview result"]
    assert "***" in before["preview result"]  # its company, masked
    api.sync(load_config(console.config), pipeline="p")  # runs and records to show
    after = _all_pages(anna)
    assert "Nothing to do" in after["preview result"]
    pages = {**{f"{k} (before the sync)": v for k, v in before.items()}, **after}
    for name, html in pages.items():
        assert API_KEY not in html, name
        assert SESSION_SECRET not in html, name
        assert PASSWORD not in html, name


def test_every_action_is_in_the_audit_log(console: Console, anna: httpx.Client) -> None:
    cfg = load_config(console.config)
    folder = console.config.parent
    api.sync(cfg, pipeline="p")
    # a conflict: both members change Ada's last name
    for side, name in (("a", "Byron"), ("b", "King")):
        path = folder / f"p-{side}" / "customers.csv"
        rows = read_csv(path)
        for row in rows:
            if row["Email"] == "ada@example.com":
                row["Last Name"] = name
        write_csv(path, rows, list(rows[0]))
    api.sync(cfg, pipeline="p")
    conflict = api.list_conflicts(cfg, "p")[0]

    token = csrf_of(anna.get("/").text)
    for action in ("pause", "resume"):
        assert anna.post(f"/pipelines/p/{action}", data={"csrf": token}).status_code == 303
    assert anna.post("/preview", data={"csrf": token, "pipeline": "p"}).status_code == 303
    response = anna.post(
        f"/conflicts/{conflict.id}/resolve",
        data={"csrf": token, "take": "typed", "value": "Ada K."},
    )
    assert response.status_code == 303
    assert anna.post("/logout", data={"csrf": token}).status_code == 303

    entries = api.list_audit(cfg, limit=100)
    done = {(e.actor, e.action) for e in entries}
    for action in (
        "console.sign_in",
        "pipeline.pause",
        "pipeline.resume",
        "pipeline.preview",
        "conflict.resolve",
        "console.sign_out",
    ):
        assert ("anna", action) in done, action
    resolved = next(e for e in entries if e.action == "conflict.resolve")
    assert resolved.after == {"take": "typed", "value": "Ada K."}
    assert resolved.before["values"] == {"p-a": "Byron", "p-b": "King"}
    # and the audit page shows them
    again = signed_in_client(console.url, "anna")
    page = again.get("/audit").text
    again.close()
    assert "conflict.resolve" in page and "pipeline.pause" in page


class _Controls(HTMLParser):
    """Form controls, labels and tables of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.tables = 0
        self.tables_with_th = 0
        self._in_table: list[bool] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append(a)
        if tag == "label" and a.get("for"):
            self.label_for.add(str(a["for"]))
        if tag == "table":
            self.tables += 1
            self._in_table.append(False)
        if tag == "th" and self._in_table:
            self._in_table[-1] = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._in_table:
            self.tables_with_th += self._in_table.pop()


def test_every_control_is_labelled_and_every_table_has_headers(
    console: Console, anna: httpx.Client
) -> None:
    pages = _all_pages(anna)
    checked_tables = 0
    for name, html in pages.items():
        found = _Controls()
        found.feed(html)
        for control in found.controls:
            labelled = control.get("aria-label") or control.get("id") in found.label_for
            assert labelled, (name, control)
        assert found.tables == found.tables_with_th, name
        checked_tables += found.tables
    assert checked_tables >= 4  # the pages had tables to check


def test_a_user_taken_out_of_the_users_file_is_signed_out(console: Console) -> None:
    from syncengine.console import auth

    add_users(console.config, "temp")
    client = signed_in_client(console.url, "temp")
    assert client.get("/").status_code == 200
    users = auth.load_users(auth.users_path(load_config(console.config)))
    del users.users["temp"]
    auth.save_users(users)
    response = client.get("/")
    assert response.status_code == 303 and "/login" in response.headers["location"]
    token = csrf_of(client.get("/login").text)
    assert client.post("/pipelines/p/pause", data={"csrf": token}).status_code == 401
    client.close()


def test_a_batch_a_delete_guard_stopped_is_explained_and_approved_whole(
    console: Console, anna: httpx.Client
) -> None:
    folder = console.config.parent
    people = [customer(n, "G", f"{n.lower()}@example.com") for n in ("Ann", "Ben", "Cat", "Dan")]
    (folder / "g-a").mkdir(exist_ok=True)
    write_csv(folder / "g-a" / "customers.csv", people, CSV_HEADER)
    cfg = load_config(console.config)
    api.sync(cfg, pipeline="g")
    rows = read_csv(folder / "g-b" / "customers.csv")
    write_csv(folder / "g-b" / "customers.csv", rows[:1], list(rows[0]))  # 3 of 4 gone
    (result,) = api.sync(cfg, pipeline="g")
    assert result.guard
    held = api.list_held_deletes(cfg, "g")
    assert len(held) == 3 and all(d.guard for d in held)

    page = anna.get("/deletes").text
    assert "stopped by a safety guard" in page and "Approve the batch of 3 deletes" in page
    token = csrf_of(page)
    one = anna.post(f"/deletes/{held[0].id}/approve", data={"csrf": token})
    assert one.status_code == 303  # refused: a guarded delete is approved with its batch
    assert "approve the whole batch" in anna.get("/deletes").text
    response = anna.post(
        "/deletes/batch", data={"csrf": token, "pipeline": "g", "entity": "customers"}
    )
    assert response.status_code == 303
    assert "No deletes are waiting" in anna.get("/deletes").text
    api.sync(cfg, pipeline="g")
    assert [r["Email"] for r in read_csv(folder / "g-a" / "customers.csv")] == [rows[0]["Email"]]
    actions = [(e.actor, e.action) for e in api.list_audit(cfg)]
    assert ("anna", "delete.approve_guarded") in actions


def test_a_large_preview_is_paged_and_filtered(console: Console, anna: httpx.Client) -> None:
    import re

    folder = console.config.parent
    people = [customer(f"P{i:03d}", "Big", f"p{i:03d}@example.com") for i in range(120)]
    (folder / "big-a").mkdir(exist_ok=True)
    write_csv(folder / "big-a" / "customers.csv", people, CSV_HEADER)
    token = csrf_of(anna.get("/preview").text)
    started = anna.post("/preview", data={"csrf": token, "pipeline": "big"})
    assert started.status_code == 303
    where = started.headers["location"]
    first = anna.get(where).text
    # summary first: 120 creates on big-b, 120 links on big-a
    assert first.index("What big would do") < first.index("change(s)")
    assert "480 change(s), page 1 of 5" in first  # 120 links + 120 creates x 3 fields
    assert first.count('<tr class="op-') == 100
    last = anna.get(where, params={"page": "5"}).text
    assert last.count('<tr class="op-') == 80 and 'rel="prev"' in last and 'rel="next"' not in last
    links = anna.get(where, params={"op": "link", "member": "big-a"}).text
    assert "120 change(s), page 1 of 2" in links
    assert set(re.findall(r'<tr class="op-(\w+)"', links)) == {"link"}
    assert (
        anna.get(where, params={"entity": "customers", "op": "delete"}).text.count(
            "No change matches this filter."
        )
        == 1
    )
    assert not (folder / "big-b" / "customers.csv").exists()  # a preview writes nothing


# ----------------------------------------------------------------------------- review fixes


def test_a_forged_user_name_is_recorded_cleaned(console: Console) -> None:
    forged = "root\x1b[31mRED\x1b[0m\nfake line: admin approved all"
    with httpx.Client(base_url=console.url) as client:
        token = csrf_of(client.get("/login").text)
        response = client.post(
            "/login", data={"csrf": token, "username": forged, "password": "guess-guess"}
        )
        assert response.status_code == 401
    failed = [
        e for e in api.list_audit(load_config(console.config), limit=500)
        if e.action == "console.sign_in_failed" and "RED" in e.actor
    ]  # fmt: skip
    assert failed, "the failed sign-in is audited"
    for entry in failed:
        assert "\x1b" not in entry.actor and "\n" not in entry.actor
        assert entry.actor.startswith("(not a user name: ") and "\\x1b" in entry.actor


def test_a_typed_conflict_answer_without_a_value_field_is_refused(
    console: Console, anna: httpx.Client
) -> None:
    token = csrf_of(anna.get("/").text)
    response = anna.post("/conflicts/1/resolve", data={"csrf": token, "take": "typed"})
    assert response.status_code == 400 and "no value" in response.text


def test_signing_out_ends_the_session_for_a_saved_cookie(console: Console) -> None:
    client = signed_in_client(console.url, "anna")
    saved = dict(client.cookies)
    token = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf": token}).status_code == 303
    client.close()
    with httpx.Client(base_url=console.url, cookies=saved) as replay:
        response = replay.get("/")
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
    again = signed_in_client(console.url, "anna")  # a new sign-in is a new session
    assert again.get("/").status_code == 200
    again.close()


def test_links_never_carry_the_requests_host(console: Console, anna: httpx.Client) -> None:
    with httpx.Client(base_url=console.url, headers={"Host": "evil.example"}) as client:
        page = client.get("/login").text
        assert "evil.example" not in page
        assert 'action="/login"' in page and 'href="/static/console.css"' in page
        assert client.get("/runs").headers["location"] == "/login?next=%2Fruns"
    anna.headers["Host"] = "evil.example"
    for path in PAGES:
        assert "evil.example" not in anna.get(path).text, path
    token = csrf_of(anna.get("/").text)
    response = anna.post("/pipelines/p/resume", data={"csrf": token})
    assert response.headers["location"] == "/"


def test_an_unknown_pipeline_and_an_overlong_pause_reason_are_said(
    console: Console, anna: httpx.Client
) -> None:
    response = anna.get("/runs", params={"pipeline": "nosuch"})
    assert response.status_code == 404 and "There is no pipeline nosuch" in response.text
    token = csrf_of(anna.get("/").text)
    response = anna.post("/pipelines/p/pause", data={"csrf": token, "reason": "x" * 501})
    assert response.status_code == 303
    assert "keep it under 500" in anna.get("/").text
    assert api.status(load_config(console.config), "p")[0].paused is None


def test_a_state_store_that_cannot_be_reached_is_said_on_every_page(tmp_path: Path) -> None:
    """PostgreSQL down while the console serves: sign-in, the pages and the actions answer
    503 naming the state store, never a 500 with a traceback, nor "never synced"."""
    path = console_config(tmp_path, {"p": {}})
    text = path.read_text(encoding="utf-8")
    down = "postgresql+psycopg://syncengine:pw@127.0.0.1:1/state"  # nothing listens there
    path.write_text(text.replace('url = "sqlite:///state.db"', f'url = "{down}"'), "utf-8")
    add_users(path, "anna")
    server = serve(path)
    try:
        client = httpx.Client(base_url=server.url, timeout=30.0)
        token = csrf_of(client.get("/login").text)
        signed = client.post(
            "/login", data={"csrf": token, "username": "anna", "password": PASSWORD}
        )
        page = signed  # a sign-in is audited: it needs the store
        assert page.status_code == 503, page.text
        assert "The state store cannot be used" in page.text
        assert "never synced" not in page.text and "Traceback" not in page.text
        assert "pw@" not in page.text  # the database URL's password stays masked
        client.close()
    finally:
        server.stop()
