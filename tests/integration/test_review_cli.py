"""The review queue, held deletes and the audit log through the ``syncengine`` command: the
console script as a subprocess, the Housecall Pro sandbox on loopback, the sheet and the state
store as real files. CLI actions are audited as the OS user."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.crashpoints import crash_at, mapping_overrides
from tests.csvfiles import read_csv, write_csv
from tests.holdpoints import plugin_env, start_held
from tests.integration.books import assert_nothing_planned
from tests.integration.conftest import (
    CLI_TIMEOUT,
    SYNCENGINE,
    CliResult,
    Sandbox,
    assert_clean_exit,
    cli_env,
    hcp_books_config,
)

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]


def _pair(
    cli: Cli, sandbox_factory: SandboxFactory, folder: Path, seed: int, deletes: str = ""
) -> tuple[Sandbox, Path]:
    box = sandbox_factory(seed=seed)
    extra = {"deletes": deletes} if deletes else {}
    path = hcp_books_config(folder, box.port, **extra)
    assert_clean_exit(cli("sync", "--config", path), 0)
    return box, path


def _json(result: CliResult) -> Any:
    assert_clean_exit(result, 0)
    return json.loads(result.stdout)


def _copy_a_row(folder: Path) -> dict[str, Any]:
    """Copy the first row with an e-mail to the end of the sheet, without its Sync ID."""
    csv_path = folder / "books" / "customers.csv"
    rows = read_csv(csv_path)
    original = next(r for r in rows if r["Email"])
    write_csv(csv_path, [*rows, {**original, "Sync ID": ""}])
    return original


def test_a_copied_row_kept_separate_is_created_once_and_never_asked_again(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box, config = _pair(cli, sandbox_factory, tmp_path, seed=3)
    original = _copy_a_row(tmp_path)
    parked = cli("sync", "--config", config)
    assert_clean_exit(parked, 1)
    assert len(box.customers()) == 3
    [item] = _json(cli("review", "list", "--config", config, "--json"))
    assert item["member"] == "books" and item["status"] == "open"
    assert "possible duplicate" in item["reason"]
    [candidate] = item["candidates"]
    assert candidate["hub_key"] == original["Sync ID"]
    assert set(candidate["members"]) == {"hcp", "books"}
    shown = cli("review", "list", "--config", config)
    assert_clean_exit(shown, 0)
    assert f"#{item['id']}" in shown.stdout and original["Sync ID"] in shown.stdout
    # the two columns of values are named: which side is the record, which the candidate
    assert "field: this record on books | the candidate" in shown.stdout, shown.stdout

    decided = _json(cli("review", "separate", str(item["id"]), "--config", config, "--json"))
    assert decided["status"] == "separate"
    assert_clean_exit(cli("sync", "--config", config), 0)
    emails = [c.get("email") for c in box.customers()]
    assert len(emails) == 4 and emails.count(original["Email"].lower()) == 2
    again = cli("sync", "--config", config, "--json")
    assert_clean_exit(again, 0)
    assert len(box.customers()) == 4
    assert _json(cli("review", "list", "--config", config, "--json")) == []
    [entry, *_] = _json(cli("audit", "--config", config, "--json"))
    assert (entry["actor"], entry["action"]) == (getpass.getuser(), "review.separate")
    assert entry["before"] == {"status": "open"} and entry["after"] == {"status": "separate"}


def test_a_copied_row_linked_to_its_original_is_left_alone_quietly(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box, config = _pair(cli, sandbox_factory, tmp_path, seed=3)
    original = _copy_a_row(tmp_path)
    assert_clean_exit(cli("sync", "--config", config), 1)
    [item] = _json(cli("review", "list", "--config", config, "--json"))
    wrong = cli("review", "link", str(item["id"]), "--to", "nope", "--config", config)
    assert_clean_exit(wrong, 2)
    assert "'nope' is not one of its candidates" in wrong.stderr
    linked = cli("review", "link", str(item["id"]), "--to", original["Sync ID"], "--config", config)
    assert_clean_exit(linked, 0)
    quiet = cli("sync", "--config", config, "--json")
    assert_clean_exit(quiet, 0)  # no duplicate planned, nothing reported
    assert len(box.customers()) == 3
    assert _json(cli("review", "list", "--config", config, "--json")) == []
    twice = cli("review", "link", str(item["id"]), "--to", original["Sync ID"], "--config", config)
    assert_clean_exit(twice, 2)
    assert "was already linked to" in twice.stderr


def test_held_deletes_are_approved_or_restored_from_the_cli(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box, config = _pair(
        cli, sandbox_factory, tmp_path, seed=6, deletes="propagate = true\napprove = true"
    )
    csv_path = tmp_path / "books" / "customers.csv"
    rows = read_csv(csv_path)
    gone_a, gone_b = rows[1], rows[4]
    write_csv(csv_path, [r for r in rows if r not in (gone_a, gone_b)])
    held = cli("sync", "--config", config, "--json")
    assert_clean_exit(held, 0)
    assert json.loads(held.stdout)["entities"]["customers"]["held_deletes"] == 2
    assert len(box.customers()) == 6
    status = cli("status", "--config", config)
    assert_clean_exit(status, 0)
    assert "deletes awaiting approval: 2 (syncengine deletes list)" in status.stdout
    listed = _json(cli("deletes", "list", "--config", config, "--json"))
    by_key = {h["hub_key"]: h for h in listed}
    assert set(by_key) == {gone_a["Sync ID"], gone_b["Sync ID"]}
    assert all(h["member"] == "books" and h["reach"] == ["hcp"] for h in listed)
    a, b = by_key[gone_a["Sync ID"]]["id"], by_key[gone_b["Sync ID"]]["id"]
    unknown = cli("deletes", "approve", str(a), "999", "--config", config)
    assert_clean_exit(unknown, 2)
    assert "no held delete with id 999" in unknown.stderr
    assert len(_json(cli("deletes", "list", "--config", config, "--json"))) == 2  # all or nothing
    assert_clean_exit(cli("deletes", "approve", str(a), "--config", config), 0)
    assert_clean_exit(cli("deletes", "restore", str(b), "--config", config), 0)
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert len(box.customers()) == 5  # a: deleted in HCP too
    ids = [r["Sync ID"] for r in read_csv(csv_path)]
    assert gone_b["Sync ID"] in ids and gone_a["Sync ID"] not in ids  # b: back in the sheet
    assert _json(cli("deletes", "list", "--config", config, "--json")) == []
    quiet = cli("sync", "--config", config, "--json")
    assert_clean_exit(quiet, 0)
    assert len(box.customers()) == 5 and len(read_csv(csv_path)) == 5
    actions = [e["action"] for e in _json(cli("audit", "--config", config, "--json"))]
    assert actions == ["delete.restore", "delete.approve"]


def test_a_guard_stopped_batch_is_approved_as_one(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box, config = _pair(cli, sandbox_factory, tmp_path, seed=10)
    csv_path = tmp_path / "books" / "customers.csv"
    rows = read_csv(csv_path)
    write_csv(csv_path, rows[5:])
    stopped = cli("sync", "--config", config)
    assert_clean_exit(stopped, 3)
    assert len(box.customers()) == 10
    listed = cli("deletes", "list", "--config", config)
    assert_clean_exit(listed, 0)
    assert "max_fraction" in listed.stdout
    assert "deletes approve --guarded hcp-books customers" in listed.stdout
    held = _json(cli("deletes", "list", "--config", config, "--json"))
    assert sorted(h["hub_key"] for h in held) == sorted(r["Sync ID"] for r in rows[:5])
    one = cli("deletes", "approve", str(held[0]["id"]), "--config", config)
    assert_clean_exit(one, 2)
    assert "--guarded" in one.stderr
    approved = cli("deletes", "approve", "--guarded", "hcp-books", "customers", "--config", config)
    assert_clean_exit(approved, 0)
    [entry, *_] = _json(cli("audit", "--config", config, "--json"))
    assert (entry["actor"], entry["action"]) == (getpass.getuser(), "delete.approve_guarded")
    assert sorted(entry["before"]["keys"]) == sorted(r["Sync ID"] for r in rows[:5])
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert len(box.customers()) == 5
    assert _json(cli("deletes", "list", "--config", config, "--json")) == []


def test_pause_resume_are_audited_as_the_os_user(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    _box, config = _pair(cli, sandbox_factory, tmp_path, seed=1)
    assert_clean_exit(cli("pause", "--config", config, "--reason", "books closing"), 0)
    assert_clean_exit(cli("resume", "--config", config), 0)
    entries = _json(cli("audit", "--config", config, "--json"))
    assert [(e["actor"], e["action"]) for e in entries] == [
        (getpass.getuser(), "resume"),
        (getpass.getuser(), "pause"),
    ]
    assert entries[1]["after"] == {"paused": True, "reason": "books closing"}
    text = cli("audit", "--config", config)
    assert_clean_exit(text, 0)
    assert "pause" in text.stdout and getpass.getuser() in text.stdout


def test_validate_shows_that_deletes_wait_for_approval(tmp_path: Path, cli: Cli) -> None:
    path = hcp_books_config(tmp_path, 9, deletes="propagate = true\napprove = true")
    shown = cli("validate", "--config", path)
    assert_clean_exit(shown, 0)
    assert "hcp-books: deletes wait for approval" in shown.stdout
    [pipeline] = _json(cli("validate", "--config", path, "--json"))["pipelines"]
    assert pipeline["deletes_approve"] is True
    typo = hcp_books_config(tmp_path, 9, deletes='approve = "yes please"', name="typo.toml")
    refused = cli("validate", "--config", typo)
    assert_clean_exit(refused, 2)
    assert "approve" in refused.stderr


def test_a_conflict_resolved_from_the_cli_is_audited(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=1)
    config = hcp_books_config(
        tmp_path, box.port, conflicts='default = ["hcp"]\n"customers.company" = ["manual"]'
    )
    assert_clean_exit(cli("sync", "--config", config), 0)
    csv_path = tmp_path / "books" / "customers.csv"
    rows = read_csv(csv_path)
    customer = box.customers()[0]
    box.update_customer(customer["id"], {"company": "HCP Side"})
    rows[0]["Company"] = "Books Side"
    write_csv(csv_path, rows)
    assert_clean_exit(cli("sync", "--config", config), 1)
    [conflict] = _json(cli("conflicts", "list", "--config", config, "--json"))
    resolved = cli(
        "conflicts", "resolve", str(conflict["id"]), "--take", "books", "--config", config
    )
    assert_clean_exit(resolved, 0)
    [entry] = _json(cli("audit", "--config", config, "--json"))
    assert (entry["actor"], entry["action"]) == (getpass.getuser(), "conflicts.resolve")
    assert entry["before"]["values"] == {"hcp": "HCP Side", "books": "Books Side"}
    assert entry["after"] == {"take": "books", "value": "Books Side"}


def test_a_delete_approved_while_the_run_that_held_it_goes_on_is_carried_out_once(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    """A person approves a held delete while the run that held it is still at work on the
    next entity (held at the books' read of invoices: ``tests/holdpoints.py``). That run
    ends as it planned, with the record neither deleted in HCP nor given back to the
    books; the next sync deletes it in HCP, once; the queue is then empty and a sync after
    it has nothing to do."""
    box = sandbox_factory(seed=6)
    entities = ("customers", "invoices")
    config = hcp_books_config(tmp_path, box.port, deletes="propagate = true\napprove = true")
    text = config.read_text(encoding="utf-8")
    text = text.replace('entities = ["customers"]', f"entities = {json.dumps(list(entities))}")
    text = text.replace(
        '[connectors.books]\ntype = "spreadsheet"',
        '[connectors.books]\ntype = "holdpoint"\nwraps = "spreadsheet"',
    )
    config.write_text(text + mapping_overrides({"books": "spreadsheet"}, entities), "utf-8")
    env = {**cli_env(), **plugin_env(tmp_path / "plugin")}

    def run(*args: str, more: dict[str, str] | None = None) -> CliResult:
        return cli(*args, "--config", config, env={**env, **(more or {})})

    assert_clean_exit(run("sync"), 0)
    books = tmp_path / "books"
    billed = {r["Customer Email"].lower() for r in read_csv(books / "invoices.csv")}
    rows = read_csv(books / "customers.csv")
    # a customer without invoices: nothing refers to it, so its delete is the person's call
    gone = next(r for r in rows if r["Email"] and r["Email"].lower() not in billed)
    write_csv(books / "customers.csv", [r for r in rows if r is not gone])
    customers = len(box.customers())

    hold = tmp_path / "hold"
    first = start_held(
        [str(SYNCENGINE), "sync", "--config", str(config), "--json"],
        at=crash_at("books", "read", "invoices", n=1, when="before"),
        hold=hold,
        env=env,
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    try:
        # the customers are applied and their delete is held: a person approves it now
        [item] = _json(run("deletes", "list", "--json"))
        assert (item["hub_key"], item["member"]) == (gone["Sync ID"], "books"), item
        assert_clean_exit(run("deletes", "approve", str(item["id"])), 0)
        (hold / "release").touch()
        out, err = first.communicate(timeout=CLI_TIMEOUT)
    finally:
        (hold / "release").touch()
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert json.loads(out)["entities"]["customers"]["held_deletes"] == 1
    assert len(box.customers()) == customers, "the run that held it deleted it after all"
    kept = read_csv(books / "customers.csv")
    assert gone["Sync ID"] not in [r["Sync ID"] for r in kept], "given back to the books"
    assert gone["Email"] not in [r["Email"] for r in kept], "given back under another key"
    assert _json(run("deletes", "list", "--json")) == [], "approved: no longer awaiting"

    after = run("sync", "--json")
    assert_clean_exit(after, 0)
    assert json.loads(after.stdout)["entities"]["customers"]["hcp"]["delete"] == 1
    assert len(box.customers()) == customers - 1
    assert gone["Email"].lower() not in {(c.get("email") or "").lower() for c in box.customers()}
    assert _json(run("deletes", "list", "--json")) == []
    quiet = run("sync", "--json")
    assert_clean_exit(quiet, 0)
    assert_nothing_planned(json.loads(quiet.stdout))
    assert len(box.customers()) == customers - 1
    actions = [e["action"] for e in _json(run("audit", "--json"))]
    assert actions == ["delete.approve"]
