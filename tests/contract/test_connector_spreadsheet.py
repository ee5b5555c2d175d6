"""The connector contract for the spreadsheet connector, over a real folder of CSV files.

Writes are buffered until ``flush``; ``reopen`` is a new connector instance reading the same
folder, so the suite's durability checks see only what reached the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.connector import Connector, ConnectorContext, NativeData
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions
from tests.contract.connector_suite import (
    ENTITY,
    AssignsIdsContract,
    Change,
    Reopen,
    Sample,
    key,
)


def sheet(folder: Path, name: str = "books") -> SpreadsheetConnector:
    options = SpreadsheetOptions(type="spreadsheet", path=str(folder))
    return SpreadsheetConnector(options, ConnectorContext(name=name, base_dir=str(folder)))


class TestSpreadsheetConnector(AssignsIdsContract):
    @pytest.fixture
    def folder(self, tmp_path: Path) -> Path:
        return tmp_path / "books"

    @pytest.fixture
    def connector(self, folder: Path) -> SpreadsheetConnector:
        return sheet(folder)

    @pytest.fixture
    def sample(self) -> Sample:
        def make(n: int) -> NativeData:
            return {
                "First Name": f"Grace{n}",
                "Last Name": f"Hopper-{n}",
                "Email": f"grace.{n}@example.com",
                "Mobile": f"(555) 000-{n:04d}",
                "Company": f'Cobol "{n}", Inc.',
                "City": "Zürich",
            }

        return make

    @pytest.fixture
    def change(self) -> Change:
        def patch(data: NativeData) -> NativeData:
            return {"Last Name": f"{data['Last Name']} (renamed)"}

        return patch

    @pytest.fixture
    def reopen(self, folder: Path) -> Reopen:
        def again(conn: Connector) -> Connector:
            assert isinstance(conn, SpreadsheetConnector)
            return sheet(folder, "books-reopened")

        return again

    # ------------------------------------------------------------ spreadsheet-specific

    def test_writes_reach_the_file_only_at_flush(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        created = connector.create(ENTITY, sample(1), key=key(1))
        assert [r.id for r in connector.read(ENTITY)] == [created.id]
        assert list(reopen(connector).read(ENTITY)) == []
        connector.flush(ENTITY)
        assert [r.id for r in reopen(connector).read(ENTITY)] == [created.id]

    def test_provisional_row_gets_its_id_through_update(
        self, folder: Path, connector: Connector, reopen: Reopen
    ) -> None:
        folder.mkdir(parents=True)
        (folder / "customers.csv").write_text(
            "Sync ID,First Name,Last Name,Email\n"
            "rec-0001,Ada,Lovelace,ada@example.com\n"
            ",Grace,Hopper,grace@example.com\n"
        )
        records = list(connector.read(ENTITY))
        provisional = [r for r in records if r.provisional]
        assert [r.id for r in provisional] == ["@line:3"]
        row = provisional[0]
        assert row.location and not row.error
        assert row.data["Email"] == "grace@example.com"

        returned = connector.update(ENTITY, row.id, {}, full=row.data, new_id="rec-0002")
        connector.flush(ENTITY)

        assert returned is not None and returned.id == "rec-0002"
        assert not returned.provisional
        found = {r.id: r for r in reopen(connector).read(ENTITY)}
        assert set(found) == {"rec-0001", "rec-0002"}
        assert not found["rec-0002"].provisional
        assert found["rec-0002"].data == row.data
        assert found["rec-0002"].native_hash() == returned.native_hash()
