"""Issue 10, case 5, through the real ``syncengine`` command against the loopback HCP sandbox:
the state store is lost (the file deleted) or restored from an old backup.

A sync whose state knows nothing of records the members already hold re-links them before
it creates anything: the sheet's Sync IDs become the hub keys again, invoices match by
number, payments by invoice, amount, date and method where that is unique, customers by
their match keys and then by full name and address. The dry run shows it; nothing is
duplicated on either side, and ``reconcile-report`` is clean afterwards.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.csvfiles import read_csv_table
from tests.integration.books import books_config
from tests.integration.conftest import DEFAULT_KEY, CliResult, Sandbox, assert_clean_exit

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]
ENTITIES = ("customers", "invoices", "payments")


def _rows(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {e: read_csv_table(folder / "books" / f"{e}.csv").rows for e in ENTITIES}


def _json(done: CliResult) -> dict[str, Any]:
    assert done.returncode in (0, 1), str(done)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _writes(result: dict[str, Any]) -> dict[str, dict[str, int]]:
    """entity -> member -> creates + deletes planned or made."""
    out: dict[str, dict[str, int]] = {}
    for entity, counts in result["entities"].items():
        for member in ("hcp", "books"):
            out.setdefault(entity, {})[member] = counts[member]["create"] + counts[member]["delete"]
    return out


def _lose_state(folder: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (folder / f"state.db{suffix}").unlink(missing_ok=True)


def _add_hcp_customer(box: Sandbox, body: dict[str, Any]) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{box.port}/customers",
        json=body,
        headers={"Authorization": f"Token {DEFAULT_KEY}"},
        timeout=10,
    )
    response.raise_for_status()


def test_a_lost_state_store_re_links_everything_and_duplicates_nothing(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=8)
    # customers with neither e-mail nor phone: only their name and address tell them apart
    for first, street in (("Nora", "1 Elm St"), ("Otto", "2 Oak Ave")):
        _add_hcp_customer(
            box,
            {
                "first_name": first,
                "last_name": "Noemail",
                "addresses": [
                    {"type": "service", "street": street, "city": "Springfield", "zip": "12345"}
                ],
            },
        )
    # and one with nothing but a name, unique on both sides
    _add_hcp_customer(box, {"first_name": "Pia", "last_name": "Onlyname"})
    folder = tmp_path / "proj"
    config = books_config(folder, box.port)
    assert_clean_exit(cli("sync", "--config", config, cwd=folder), 0)
    before = _rows(folder)
    assert before["payments"], "the seeded sandbox has payments"
    hcp_customers = len(box.customers())

    _lose_state(folder)
    box.clear_requests()
    planned = _json(cli("sync", "--config", config, "--dry-run", "--json", cwd=folder))
    assert _writes(planned) == {e: {"hcp": 0, "books": 0} for e in ENTITIES}, planned

    done = cli("sync", "--config", config, "--json", cwd=folder)
    assert_clean_exit(done, 0)
    assert _writes(_json(done)) == {e: {"hcp": 0, "books": 0} for e in ENTITIES}
    assert [w for w in box.writes() if w["method"] in ("POST", "DELETE")] == []
    assert len(box.customers()) == hcp_customers
    after = _rows(folder)
    for entity in ENTITIES:
        # the same rows with the same Sync IDs: they became the hub keys again
        assert sorted(r["Sync ID"] for r in after[entity]) == sorted(
            r["Sync ID"] for r in before[entity]
        ), entity
    assert_clean_exit(cli("reconcile-report", "--config", config, cwd=folder), 0)
    again = _json(cli("sync", "--config", config, "--dry-run", "--json", cwd=folder))
    assert _writes(again) == {e: {"hcp": 0, "books": 0} for e in ENTITIES}


def test_an_old_backup_of_the_state_store_only_re_links(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli
) -> None:
    box = sandbox_factory(seed=4)
    folder = tmp_path / "proj"
    config = books_config(folder, box.port)
    assert_clean_exit(cli("sync", "--config", config, cwd=folder), 0)
    shutil.copy(folder / "state.db", tmp_path / "backup.db")  # a backup, taken while idle

    # more business happens: new customers in HCP, synced to the books
    box.stop()
    box = sandbox_factory(seed=12)  # a fuller HCP (a superset of the first one's records)
    config = books_config(folder, box.port)
    assert_clean_exit(cli("sync", "--config", config, cwd=folder), 0)
    rows = _rows(folder)
    hcp_customers = len(box.customers())

    _lose_state(folder)
    shutil.copy(tmp_path / "backup.db", folder / "state.db")  # the old backup restored
    box.clear_requests()
    done = cli("sync", "--config", config, "--json", cwd=folder)
    assert_clean_exit(done, 0)
    assert _writes(_json(done)) == {e: {"hcp": 0, "books": 0} for e in ENTITIES}
    assert [w for w in box.writes() if w["method"] in ("POST", "DELETE")] == []
    assert len(box.customers()) == hcp_customers
    assert {e: len(r) for e, r in _rows(folder).items()} == {e: len(r) for e, r in rows.items()}
    assert_clean_exit(cli("reconcile-report", "--config", config, cwd=folder), 0)


@pytest.mark.parametrize("damage", ["garbage", "pages"], ids=["not-a-database", "malformed-pages"])
def test_a_damaged_state_store_is_exit_4_and_moving_it_aside_re_links(
    tmp_path: Path, sandbox_factory: SandboxFactory, cli: Cli, damage: str
) -> None:
    """A state file whose bytes are damaged is not a configuration error: every command
    that needs it says it is damaged and what to do (exit 4), and touches nothing; moved
    aside, the next sync re-links, duplicating nothing."""
    box = sandbox_factory(seed=8)
    folder = tmp_path / "proj"
    config = books_config(folder, box.port)
    assert_clean_exit(cli("sync", "--config", config, cwd=folder), 0)
    db = folder / "state.db"
    data = bytearray(db.read_bytes())
    if damage == "garbage":
        data[:] = bytes(range(256)) * (len(data) // 256)
    else:  # the header is fine, the pages after it are not
        for page in range(1, len(data) // 4096, 2):
            data[page * 4096 + 8 : page * 4096 + 200] = b"\xff" * 192
    db.write_bytes(bytes(data))
    damaged = db.read_bytes()
    before = _rows(folder)
    box.clear_requests()

    for args in (("sync",), ("sync", "--dry-run"), ("status",), ("reconcile-report",)):
        done = cli(*args, "--config", config, cwd=folder)
        assert_clean_exit(done, 4)
        assert "the state store is unavailable" in done.stderr, str(done)
        assert "damaged" in done.stderr and "Restore it from a backup" in done.stderr, str(done)
        assert db.read_bytes() == damaged
    assert box.writes() == []
    assert _rows(folder) == before

    db.rename(folder / "state.db.damaged")
    for suffix in ("-wal", "-shm"):
        (folder / f"state.db{suffix}").unlink(missing_ok=True)
    done = cli("sync", "--config", config, "--json", cwd=folder)
    assert_clean_exit(done, 0)
    assert _writes(_json(done)) == {e: {"hcp": 0, "books": 0} for e in ENTITIES}
    assert box.writes() == []
