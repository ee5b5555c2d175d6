"""Incremental reads: only the records updated since the last read, with full passes between.

The engine takes a record missing from ``read()`` as deleted, so a filtered listing must never
be presented as a full one. ``read()`` therefore always lists everything; the engine calls
``RestConnector.read_incremental(entity, token)`` (``Connector.read_incremental``) instead and
gets a ``syncengine.connector.ReadPass`` (re-exported here): the records, whether they are the
complete listing, and (once they are exhausted) the token to store *after* it committed what
it read. The token is opaque to the engine; it holds the high-water mark (the newest update
time seen, as the server writes it) and when the last full pass started, so that a full pass
is made at least every ``full_every_hours`` (deletes are only seen by full passes).

The token and its parts are not the REST connector's own: they live in
``syncengine.incremental`` (shared with the Housecall Pro connector) and are re-exported here
under the names this module always had.

Nothing here is used unless ``incremental.enabled = true`` for the entity.
"""

from __future__ import annotations

from syncengine.connector import ReadPass
from syncengine.incremental import (
    TOKEN_VERSION,
    HighWater,
    Mark,
    decode_token,
    encode_token,
    full_pass_due,
    mark_param,
)

__all__ = [
    "TOKEN_VERSION",
    "HighWater",
    "Mark",
    "ReadPass",
    "decode_token",
    "encode_token",
    "full_pass_due",
    "mark_param",
]
