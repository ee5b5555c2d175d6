"""The state store: base records, links, the write-ahead journal, conflicts, runs and the
marks incremental reads start from.

Usage::

    store = StateStore.open("sqlite:///state.db", base_dir=config_dir)
    states = store.load_records("main", "customers", keys)
    with store.transaction() as tx:
        tx.put_records(rows)
"""

from syncengine.state.leases import Lease, PipelineState
from syncengine.state.store import (
    BATCH_SIZE,
    COMPLETED_OUTCOMES,
    STATISTICS_AFTER,
    ConflictRow,
    Intent,
    LinkState,
    RecordState,
    RunRow,
    SkipRow,
    StateStore,
    Tx,
    mask_url,
)

__all__ = [
    "BATCH_SIZE",
    "COMPLETED_OUTCOMES",
    "STATISTICS_AFTER",
    "ConflictRow",
    "Intent",
    "Lease",
    "LinkState",
    "PipelineState",
    "RecordState",
    "RunRow",
    "SkipRow",
    "StateStore",
    "Tx",
    "mask_url",
]
