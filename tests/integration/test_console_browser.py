"""The web console in a real headless Chromium (Debian's ``chromium`` driven by Playwright
through ``executable_path``; no browser is downloaded): sign in, pause, resume and run now,
settle conflicts (the next sync writes the chosen values to every member), link a possible
duplicate, approve a held delete and restore another, and a preview whose field diff is the
one ``sync --dry-run --json`` gives.

One console server for the module and one browser for the session. Members are CSV folders
(no sandbox needed). With ``SYNCENGINE_SCREENSHOTS=DIR`` the main pages are saved there as
PNGs (the README's screenshots: ``SYNCENGINE_SCREENSHOTS=docs/console``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.render import show_value
from tests.console_support import (
    PASSWORD,
    ConsoleServer,
    add_users,
    console_config,
    serve,
)
from tests.csvfiles import CSV_HEADER, read_csv, write_csv
from tests.tools import tool_missing

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SYNCENGINE = Path(sys.executable).parent / "syncengine"

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # reported by the browser fixture: a failure under REQUIRE_TOOLS
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session (the system's: never a downloaded one)."""
    if sync_playwright is None:
        tool_missing("the Python package playwright is not installed (pip install -e '.[test]')")
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not executable:
        tool_missing("Chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


PIPELINES: dict[str, dict[str, Any]] = {
    "ops": {},
    "conf": {"conflicts": ["manual"]},
    "dup": {},
    "del": {"deletes": "approve = true"},
    "prev": {},
}


class Site:
    """The console under test: its server, config and folder."""

    def __init__(self, server: ConsoleServer, path: Path) -> None:
        self.server = server
        self.url = server.url
        self.path = path
        self.folder = path.parent

    def config(self) -> Config:
        return load_config(self.path)

    def csv(self, member: str) -> Path:
        return self.folder / member / "customers.csv"

    def write(self, member: str, rows: list[dict[str, str]]) -> None:
        (self.folder / member).mkdir(exist_ok=True)
        write_csv(self.csv(member), rows, list(rows[0]) if "Sync ID" in rows[0] else CSV_HEADER)

    def edit(self, member: str, email: str, **cells: str) -> None:
        rows = read_csv(self.csv(member))
        for row in rows:
            if row["Email"] == email:
                row.update(cells)
        write_csv(self.csv(member), rows, list(rows[0]))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("console-browser")
    path = console_config(folder, PIPELINES)
    add_users(path, "anna")
    server = serve(path)
    try:
        yield Site(server, path)
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    """A signed-in page (a fresh browser context: its own cookies)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.goto(site.url + "/")
    expect(tab).to_have_url(site.url + "/login")
    tab.get_by_label("User name").fill("anna")
    tab.get_by_label("Password").fill(PASSWORD)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("heading", name="Overview")).to_be_visible()
    yield tab
    context.close()


def shot(page: Page, name: str) -> None:
    """Save the page as ``NAME.png`` under ``SYNCENGINE_SCREENSHOTS`` when it is set."""
    folder = os.environ.get("SYNCENGINE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def nav(page: Page, name: str) -> None:
    """Follow a link of the page's navigation."""
    page.get_by_role("navigation", name="Pages").get_by_role("link", name=name, exact=True).click()


def customers(*people: tuple[str, str, str]) -> list[dict[str, str]]:
    return [{"First Name": f, "Last Name": last, "Email": e} for f, last, e in people]


def test_sign_in_then_pause_resume_and_run_now(browser: Browser, site: Site) -> None:
    site.write("ops-a", customers(("Ada", "Lovelace", "ada@example.com")))
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.goto(site.url + "/runs")
    expect(tab).to_have_url(site.url + "/login?next=%2Fruns")
    shot(tab, "login")
    tab.get_by_label("User name").fill("anna")
    tab.get_by_label("Password").fill("not the password")
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("alert")).to_contain_text("Wrong user name or password")
    tab.get_by_label("Password").fill(PASSWORD)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("heading", name="Runs")).to_be_visible()  # where it was going

    nav(tab, "Overview")
    tab.get_by_label("Reason to pause ops").fill("books closing")
    tab.get_by_role("button", name="Pause ops").click()
    expect(tab.get_by_role("status")).to_contain_text("ops is paused")
    paused = api.status(site.config(), "ops")[0].paused
    assert paused is not None and paused["reason"] == "books closing"
    tab.get_by_role("button", name="Resume ops").click()
    expect(tab.get_by_role("status")).to_contain_text("ops resumed")
    assert api.status(site.config(), "ops")[0].paused is None

    tab.get_by_role("button", name="Run ops now").click()
    expect(tab.get_by_role("status")).to_contain_text("A run of ops started")
    deadline = time.monotonic() + 60
    while not api.runs(site.config(), "ops"):
        assert time.monotonic() < deadline, "the run started from the console never finished"
        time.sleep(0.05)
    runner = site.server.app.state.console.runner
    runner.join(60)
    assert [r["outcome"] for r in api.runs(site.config(), "ops")] == ["ok"]
    assert [r["Email"] for r in read_csv(site.csv("ops-b"))] == ["ada@example.com"]
    tab.reload()
    shot(tab, "overview")
    nav(tab, "Runs")
    expect(tab.get_by_role("table").first).to_contain_text("ops-b")
    shot(tab, "runs")
    context.close()


def test_conflicts_are_settled_in_the_browser_and_the_next_sync_writes_them(
    page: Page, site: Site
) -> None:
    site.write("conf-a", customers(("Grace", "Hopper", "grace@example.com")))
    cfg = site.config()
    api.sync(cfg, pipeline="conf")
    site.edit("conf-a", "grace@example.com", **{"Last Name": "Hopper-Murray", "Company": "Navy"})
    site.edit("conf-b", "grace@example.com", **{"Last Name": "Murray", "Company": "Harvard"})
    api.sync(cfg, pipeline="conf")
    parked = {c.field: c.id for c in api.list_conflicts(cfg, "conf")}
    assert set(parked) == {"last_name", "company"}

    nav(page, "Conflicts")
    expect(page.locator(f"#conflict-{parked['last_name']}")).to_contain_text("Hopper-Murray")
    shot(page, "conflicts")
    page.get_by_role(
        "button", name=f"Take conf-b's value for conflict {parked['last_name']}"
    ).click()
    expect(page.get_by_role("status")).to_contain_text(f"Conflict {parked['last_name']} settled")
    page.get_by_label("Or type the value").fill("US Navy")
    page.get_by_role("button", name="Use this value").click()
    expect(page.get_by_role("status")).to_contain_text(f"Conflict {parked['company']} settled")
    expect(page.get_by_text("No open conflicts.")).to_be_visible()

    api.sync(cfg, pipeline="conf")
    for member in ("conf-a", "conf-b"):
        (row,) = read_csv(site.csv(member))
        assert (row["Last Name"], row["Company"]) == ("Murray", "US Navy"), member
    assert api.list_conflicts(cfg, "conf") == []


def test_a_possible_duplicate_is_linked(page: Page, site: Site) -> None:
    site.write("dup-a", customers(("Alan", "Turing", "alan@example.com")))
    cfg = site.config()
    api.sync(cfg, pipeline="dup")
    rows = read_csv(site.csv("dup-b"))
    rows.append({**rows[0], "Sync ID": "", "Mobile": "+44 20 7946 0018"})  # typed in again
    write_csv(site.csv("dup-b"), rows, list(rows[0]))
    api.sync(cfg, pipeline="dup")
    (item,) = api.list_review(cfg, "dup")
    (candidate,) = item.candidates

    nav(page, "Review queue")
    card = page.locator(f"#review-{item.id}")
    expect(card).to_contain_text("possible duplicate")
    shot(page, "review")
    card.get_by_role("button", name=f"Link item {item.id} to").click()
    expect(page.get_by_role("status")).to_contain_text("will be linked")
    expect(page.get_by_text("Nothing to review.")).to_be_visible()
    (decided,) = api.list_review(cfg, "dup", status=None)
    assert (decided.status, decided.hub_key, decided.decided_by) == (
        "linked",
        candidate.hub_key,
        "anna",
    )
    assert any(e.action == "review.link" and e.actor == "anna" for e in api.list_audit(cfg))


def test_a_held_delete_is_approved_and_another_restored(page: Page, site: Site) -> None:
    site.write(
        "del-a",
        customers(
            ("Ada", "L", "ada@example.com"),
            ("Bob", "B", "bob@example.com"),
            ("Cy", "C", "cy@example.com"),
        ),
    )
    cfg = site.config()
    api.sync(cfg, pipeline="del")
    rows = read_csv(site.csv("del-b"))
    write_csv(site.csv("del-b"), [r for r in rows if r["Email"] == "cy@example.com"], list(rows[0]))
    api.sync(cfg, pipeline="del")
    held = {d.label: d.id for d in api.list_held_deletes(cfg, "del")}
    assert len(held) == 2
    ada = next(k for k in held if "ada@" in k)
    bob = next(k for k in held if "bob@" in k)

    nav(page, "Deletes")
    expect(page.locator(f"#held-{held[bob]}")).to_contain_text("del-b")
    shot(page, "deletes")
    page.get_by_role("button", name=f"Approve the delete of {bob}").click()
    expect(page.get_by_role("status")).to_contain_text("Approved")
    page.get_by_role("button", name=f"Restore {ada} on del-b").click()
    expect(page.get_by_role("status")).to_contain_text("Restored")
    expect(page.get_by_text("No deletes are waiting.")).to_be_visible()

    api.sync(cfg, pipeline="del")
    assert sorted(r["Email"] for r in read_csv(site.csv("del-a"))) == [
        "ada@example.com",
        "cy@example.com",
    ]
    assert sorted(r["Email"] for r in read_csv(site.csv("del-b"))) == [
        "ada@example.com",
        "cy@example.com",
    ]


def test_the_preview_shows_the_field_diff_of_sync_dry_run_json(page: Page, site: Site) -> None:
    site.write(
        "prev-a",
        customers(
            ("Katherine", "Johnson", "kj@example.com"), ("Dorothy", "Vaughan", "dv@example.com")
        ),
    )
    api.sync(site.config(), pipeline="prev")
    site.edit("prev-a", "kj@example.com", **{"Last Name": "Goble Johnson", "Company": "NASA"})
    site.write(
        "prev-a",
        [
            *read_csv(site.csv("prev-a")),
            {
                "Sync ID": "",
                "First Name": "Mary",
                "Last Name": "Jackson",
                "Email": "mj@example.com",
            },
        ],
    )
    done = subprocess.run(
        [str(SYNCENGINE), "sync", "--dry-run", "--json", "-c", str(site.path), "-p", "prev"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    planned = json.loads(done.stdout)
    (update,) = [c for c in planned["changes"] if c["op"] == "update"]
    assert update["member"] == "prev-b"
    assert set(update["fields"]) == {"last_name", "company"}

    nav(page, "Preview")
    page.get_by_label("Pipeline").select_option("prev")
    page.get_by_role("button", name="Run a preview").click()
    summary = page.get_by_role("table", name="What prev would do")
    counts = planned["entities"]["customers"]["prev-b"]
    expect(summary.get_by_role("row").nth(2)).to_contain_text("prev-b")
    cells = summary.get_by_role("row").nth(2).get_by_role("cell")
    assert cells.nth(2).inner_text() == str(counts["create"])  # Create
    assert cells.nth(3).inner_text() == str(counts["update"] - counts["link"])  # Update
    shot(page, "preview")

    page.get_by_label("Operation").select_option("update")
    page.get_by_role("button", name="Filter").click()
    changes = page.get_by_role("table", name="change(s)")
    rows = changes.locator("tbody tr")
    expect(rows).to_have_count(2)
    for i, (name, diff) in enumerate(sorted(update["fields"].items())):
        row = rows.nth(i).get_by_role("cell")
        assert row.nth(1).inner_text() == update["record"]
        assert row.nth(2).inner_text() == "prev-b"
        assert row.nth(4).inner_text() == name
        assert row.nth(5).inner_text() == show_value(diff["before"], "customers", name)
        assert row.nth(6).inner_text() == show_value(diff["after"], "customers", name)
    assert [show_value(update["fields"]["company"]["after"])] == ["'NASA'"]
    # nothing was written
    assert len(read_csv(site.csv("prev-b"))) == 2


def test_the_other_pages_render_for_the_readme(page: Page, site: Site) -> None:
    for link, heading, name in (
        ("Skipped writes", "Skipped writes and waiting records", "skipped"),
        ("Reconcile", "Reconcile report", "reconcile"),
        ("Audit log", "Audit log", "audit"),
    ):
        nav(page, link)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        shot(page, name)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    nav(page, "Overview")
    shot(page, "overview-phone")
