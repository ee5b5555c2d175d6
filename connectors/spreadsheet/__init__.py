"""The spreadsheet connector: a folder of CSV files, one per entity (``customers.csv``)."""

from .connector import DEFAULT_COLUMNS, SpreadsheetConnector, SpreadsheetOptions

__all__ = ["DEFAULT_COLUMNS", "SpreadsheetConnector", "SpreadsheetOptions"]
