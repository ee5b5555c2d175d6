"""``region = "GB"`` in the config: a bookkeeper's British numbers, written without the
country code, reach Housecall Pro as the right E.164 numbers and stay written nationally in
the sheet, and a second sync has nothing to do (what the README says ``region`` does)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.csvfiles import read_csv, write_csv
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, hcp_books_config

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]


def test_numbers_without_country_code_are_read_in_the_configured_region(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=0)
    config = hcp_books_config(tmp_path / "project", box.port)
    config.write_text('region = "GB"\n' + config.read_text(encoding="utf-8"), encoding="utf-8")
    sheet = tmp_path / "project" / "books" / "customers.csv"
    sheet.parent.mkdir()
    write_csv(
        sheet,
        [
            {
                "First Name": "Ada",
                "Last Name": "Lovelace",
                "Email": "ada@example.co.uk",
                "Mobile": "020 7946 0958",
                "Home Phone": "+1 312 555 0143",
            }
        ],
        ["Sync ID", "First Name", "Last Name", "Email", "Mobile", "Home Phone"],
    )

    assert_clean_exit(cli("sync", "--config", config), 0)
    (customer,) = box.customers()
    assert (customer["mobile_number"], customer["home_number"]) == (
        "+442079460958",
        "+13125550143",
    )
    (row,) = read_csv(sheet)
    assert (row["Mobile"], row["Home Phone"]) == ("020 7946 0958", "+1 312 555 0143")

    box.update_customer(customer["id"], {"mobile_number": "+442079460000"})
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert read_csv(sheet)[0]["Mobile"] == "020 7946 0000", "written nationally"

    again = cli("sync", "--config", config, "--json")
    assert_clean_exit(again, 0)
    counts = json.loads(again.stdout)["entities"]["customers"]
    writes = {m: counts[m] for m in ("hcp", "books") if any(counts[m].values())}
    assert not writes, f"a sync with nothing to do writes: {writes}"
