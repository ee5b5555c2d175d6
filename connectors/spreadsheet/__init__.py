"""The spreadsheet connector: customers, invoices and payments in one ``.xlsx`` workbook (a
sheet each) or in a folder of CSV files (``customers.csv``, ``invoices.csv``, ...)."""

from .connector import DEFAULT_COLUMNS, SHEETS, SpreadsheetConnector, SpreadsheetOptions

__all__ = ["DEFAULT_COLUMNS", "SHEETS", "SpreadsheetConnector", "SpreadsheetOptions"]
