"""Housecall Pro: the connector (``HousecallProConnector``) and, beside it, a local sandbox."""

from syncengine.connectors.housecallpro.connector import HousecallProConnector, HousecallProOptions

__all__ = ["HousecallProConnector", "HousecallProOptions"]
