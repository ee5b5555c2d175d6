"""``reconcile_after_sync``: after a sync of the books (invoices, payments) the reconcile
report runs, and new disagreements are told once as ``books_disagree`` (with the write HCP
cannot take as ``skipped_writes``), through a one-shot ``syncengine sync``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.books import Hcp, books_config, read_csv_rows, write_csv_rows
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit
from tests.integration.test_alerts import WebhookReceiver, webhook

pytestmark = pytest.mark.integration

__all__ = ["webhook"]  # the fixture


def test_an_invoice_edited_in_the_books_gives_one_books_disagree(
    tmp_path: Path,
    sandbox_factory: Callable[..., Sandbox],
    cli: Callable[..., CliResult],
    webhook: WebhookReceiver,
) -> None:
    box = sandbox_factory(seed=6)
    hcp = Hcp(box)
    folder = tmp_path / "work"
    alerts = f'[alerts]\nwebhook_url = "{webhook.url}"\nreconcile_after_sync = true\n'
    config = books_config(folder, box.port, pipeline_extra=alerts)
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert webhook.events() == [], webhook.bodies

    edited = next(i for i in hcp.invoices() if i["status"] == "sent")
    inv = read_csv_rows(folder / "books" / "invoices.csv")
    (row,) = [r for r in inv.rows if r["Invoice #"] == edited["invoice_number"]]
    row["Amount"] = f"{(edited['amount'] + 5000) / 100:.2f}"
    write_csv_rows(folder / "books" / "invoices.csv", inv.header, inv.rows)
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert sorted(webhook.events()) == ["books_disagree", "skipped_writes"], webhook.bodies
    (books,) = [b for b in webhook.bodies if b["event"] == "books_disagree"]
    assert books["details"]["count"] == 1
    assert f"syncengine reconcile-report -c {config} --pipeline hcp-books" in books["text"]
