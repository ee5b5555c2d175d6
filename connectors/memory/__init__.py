"""The in-memory connector: a real member that keeps its records in a process-wide dataset.

Used by the core's tests and the hypothesis state machine, and handy for trying mappings.
Its capability flags are options, so tests can build read-only or create-only members, and a
test hook (``context.extra["fail_write"]``) makes chosen writes fail. With ``incremental = true``
it reads like an API with an updated-since filter (partial passes between complete ones), and
``put_updates = true`` makes updates replace the whole record, like a PUT.
"""

from syncengine.connectors.memory.connector import MemoryConnector, MemoryDataset, MemoryOptions

__all__ = ["MemoryConnector", "MemoryDataset", "MemoryOptions"]
