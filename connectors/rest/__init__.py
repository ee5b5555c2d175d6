"""The generic REST connector: any JSON REST API (a CRM) described in configuration.

``RestConnector`` is registered as connector type ``rest``. Its options
(``RestOptions``) describe the base URL, the auth style, and per entity the paths and methods,
where records and ids are in the JSON, and the pagination style. Auth styles and pagination
styles are registries by name (``AUTH_STYLES``, ``PAGINATORS``) that ``register_auth`` and
``register_paginator`` extend. ``syncengine.connectors.rest.fake`` is an in-process REST CRM
(over ``httpx.MockTransport``) that really paginates in every style, for tests.
"""

from syncengine.connectors.rest.auth import AUTH_STYLES, AuthOptions, register_auth
from syncengine.connectors.rest.connector import RestConnector
from syncengine.connectors.rest.incremental import ReadPass
from syncengine.connectors.rest.options import EntityOptions, IncrementalOptions, RestOptions
from syncengine.connectors.rest.paging import (
    PAGINATORS,
    PaginationOptions,
    Paginator,
    register_paginator,
)

__all__ = [
    "AUTH_STYLES",
    "PAGINATORS",
    "AuthOptions",
    "EntityOptions",
    "IncrementalOptions",
    "PaginationOptions",
    "Paginator",
    "ReadPass",
    "RestConnector",
    "RestOptions",
    "register_auth",
    "register_paginator",
]
