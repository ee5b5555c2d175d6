"""syncengine: bidirectional sync of customers, invoices and payments between Housecall Pro,
spreadsheets and CRMs."""

__version__ = "0.1.0"
