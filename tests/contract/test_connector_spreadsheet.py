"""The connector contract for the spreadsheet connector, over a real folder of CSV files and
over a real .xlsx workbook.

Writes are buffered until ``flush``; ``reopen`` is a new connector instance reading the same
folder or workbook, so the suite's durability checks see only what reached the file.
"""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from syncengine.connector import Connector, ConnectorContext, NativeData
from syncengine.connectors.spreadsheet import SpreadsheetConnector, SpreadsheetOptions
from tests.contract.connector_suite import (
    AssignsIdsContract,
    Change,
    Reopen,
    Sample,
    key,
)


def sheet(path: Path, name: str = "books") -> SpreadsheetConnector:
    options = SpreadsheetOptions(type="spreadsheet", path=str(path))
    return SpreadsheetConnector(options, ConnectorContext(name=name, base_dir=str(path.parent)))


class SpreadsheetContract(AssignsIdsContract):
    """The suite with the fixtures both storage formats share; ``path`` is the format's."""

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        raise NotImplementedError

    @pytest.fixture
    def connector(self, path: Path) -> SpreadsheetConnector:
        return sheet(path)

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
                "Zip": f"0{n:04d}",
            }

        return make

    @pytest.fixture
    def change(self) -> Change:
        def patch(data: NativeData) -> NativeData:
            return {"Last Name": f"{data['Last Name']} (renamed)"}

        return patch

    @pytest.fixture
    def reopen(self, path: Path) -> Reopen:
        def again(conn: Connector) -> Connector:
            assert isinstance(conn, SpreadsheetConnector)
            return sheet(path, "books-reopened")

        return again

    def write_rows(self, path: Path, rows: list[list[str]]) -> None:
        """A customers sheet as a person would save it."""
        raise NotImplementedError

    # ------------------------------------------------------------ spreadsheet-specific

    def test_writes_reach_the_file_only_at_flush(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        created = connector.create(self.entity, sample(1), key=key(1))
        assert [r.id for r in connector.read(self.entity)] == [created.id]
        assert list(reopen(connector).read(self.entity)) == []
        connector.flush(self.entity)
        assert [r.id for r in reopen(connector).read(self.entity)] == [created.id]

    def test_provisional_row_gets_its_id_through_update(
        self, path: Path, connector: Connector, reopen: Reopen
    ) -> None:
        self.write_rows(
            path,
            [
                ["Sync ID", "First Name", "Last Name", "Email"],
                ["rec-0001", "Ada", "Lovelace", "ada@example.com"],
                ["", "Grace", "Hopper", "grace@example.com"],
            ],
        )
        records = list(connector.read(self.entity))
        provisional = [r for r in records if r.provisional]
        assert [r.id for r in provisional] == ["@line:3"]
        row = provisional[0]
        assert row.location and not row.error
        assert row.data["Email"] == "grace@example.com"

        returned = connector.update(self.entity, row.id, {}, full=row.data, new_id="rec-0002")
        connector.flush(self.entity)

        assert returned is not None and returned.id == "rec-0002"
        assert not returned.provisional
        found = {r.id: r for r in reopen(connector).read(self.entity)}
        assert set(found) == {"rec-0001", "rec-0002"}
        assert not found["rec-0002"].provisional
        assert found["rec-0002"].data == row.data
        assert found["rec-0002"].native_hash() == returned.native_hash()


class TestSpreadsheetConnector(SpreadsheetContract):
    """A folder of CSV files."""

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "books"

    def write_rows(self, path: Path, rows: list[list[str]]) -> None:
        path.mkdir(parents=True)
        (path / "customers.csv").write_text("".join(",".join(r) + "\n" for r in rows))


class TestSpreadsheetWorkbookConnector(SpreadsheetContract):
    """One .xlsx workbook."""

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "books" / "books.xlsx"

    def write_rows(self, path: Path, rows: list[list[str]]) -> None:
        path.parent.mkdir(parents=True)
        book = openpyxl.Workbook()
        ws = book.active
        ws.title = "Customers"
        for row in rows:
            ws.append([cell or None for cell in row])
        book.save(path)
