"""How a sync keeps Python's cycle collector from walking, again and again, what it holds.

A first sync makes millions of objects that live until their entity is applied: the records
read, and a plan of a few objects per record. CPython's collector walks every object that
survived its young generation once more in the middle one, and the oldest generation now
and then, so the plan was walked while it grew: at 100,000 customers, 2.3 s of an 18 s sync.
While any sync runs, the young generation is larger, and what the sync holds is frozen
(``gc.freeze``) at the points where it is known to last (``SyncCollector.settle``); the
sync's end hands it back, and the last sync to end collects now and then
(``SyncCollector.leave``). What is frozen is not collected before that, so what a sync
holds for a while must not be a reference cycle: an HTTP response, a failed write's error
are freed without the collector.
"""

from __future__ import annotations

import gc
import threading
import time

COLLECT_EVERY_S = 60.0
COLLECT_EVERY_SYNCS = 50
"""The end of a sync that leaves no other running runs the cycle collector's full pass once
this long, or this many syncs, after the last one (``SyncCollector.leave``)."""
COLLECT_BUSY_S = 600.0
"""... and the end of any sync, once this long after the last pass: syncs that always
overlap (an hours-long first sync beside a pipeline syncing every second) never leave the
process idle."""
COLLECT_SHARE = 0.1
"""... and never before the last pass's own duration divided by this (nor later than
``COLLECT_BUSY_S``): the passes take at most this share of the process's time. A pass walks
everything the process holds, so a large process (a test runner holding thousands of syncs'
worth of modules and data, where a pass takes 80 ms) collects less often, with its garbage
bounded in proportion to what it holds, as CPython's own rule for full passes does. A
daemon's pass (20-30 ms) is due every 50 syncs before this allows less: at 0.02 a daemon
syncing back to back held 20-30 MiB more (``bench_daemon.py``)."""


class SyncCollector:
    """The young-generation GC threshold raised while any sync of this process runs, and
    what a run holds frozen for the collector (``settle``) until the last sync ends."""

    def __init__(
        self,
        collect_every: float = COLLECT_EVERY_S,
        syncs: int = COLLECT_EVERY_SYNCS,
        busy: float = COLLECT_BUSY_S,
        share: float = COLLECT_SHARE,
    ) -> None:
        # re-entrant: a finalizer the collector runs under it may end a sync of its own
        self._lock = threading.RLock()
        self._active = 0
        self._saved: tuple[int, ...] = ()
        self._every_s, self._every_syncs, self._busy_s = collect_every, syncs, busy
        self._share = share
        self._collected = time.monotonic()
        self._pass_s = 0.0  # how long the last pass took
        self._ended = 0

    def enter(self) -> None:
        with self._lock:
            if self._active == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(max(self._saved[0], 50_000), *self._saved[1:])
            self._active += 1

    def settle(self, *, collect: bool = True) -> None:
        """What the process holds now is long-lived: as an entity is about to be read (the
        state store's engine, earlier entities' indexes), and as the entity's records and
        plan grow (every ``SETTLE_EVERY`` records read and keys planned, and each batch
        applied: they stay until the entity is applied). The collector's passes need not
        walk it again while more is made.

        The cycles that are garbage already are collected first (a pass over what is young:
        the rest is frozen already), unless ``collect`` is False and no other sync of the
        process runs. Reading and planning say so (``read_member``, ``Engine._plan_keys``):
        what they make for each record is freed by reference counting, so the pass finds
        next to nothing and only walks what the freeze keeps anyway. In a first sync of
        100,000 customers their 40 passes found nothing and took 0.71 s of the collector's
        0.87 s; what they leave is the few expression objects of the state store's queries
        (one per 500 records), about 60 objects for 9,000 records, kept until the sync
        ends. Applying still collects (a parked conflict's own statement leaves such
        objects too), and so does any settle while another sync runs: what that one makes
        meanwhile is none of this sync's business.

        Objects freed later by reference counting are freed as always, but a cycle alive now
        and garbage later waits for ``leave``: what a sync holds for a while must not be one
        (an HTTP response: ``http._unbound``; a failed write's error: ``apply._detached``).
        Outside a sync, nothing is frozen (no ``leave`` would hand it back)."""
        with self._lock:  # not while ``leave`` collects: what it is about to free would stay
            if self._active:
                if collect or self._active > 1:
                    gc.collect(1)  # garbage already: freed, not frozen
                gc.freeze()

    def leave(self) -> None:
        """A sync ends: hand everything back to the collector, and once no sync runs,
        collect if ``collect_every`` (seconds, syncs) has come since the last time; while
        others run, after ``COLLECT_BUSY_S``. Without that, the cycles a run left behind
        waited in the oldest generation for a full pass that a daemon's next run never let
        come (its ``settle`` froze them again): a daemon grew by every run's garbage, for
        ever. A pass costs 20-70 ms (everything the process holds, its modules included), so
        a daemon syncing every second pays it about once a minute, a loop of quick syncs
        once in 50 (less often where a pass takes long: ``COLLECT_SHARE``), and a short
        sync alone in its process not at all. A pass while another
        sync runs also walks that sync's records (its next entity waits for it): rarer
        still."""
        with self._lock:
            self._active -= 1
            self._ended += 1
            # every sync that ends hands all back to the collector (also what an overlapping
            # sync froze: a daemon whose syncs overlap forever must not keep cycles forever)
            gc.unfreeze()
            idle = self._active == 0
            if idle and self._saved:
                gc.set_threshold(*self._saved)
            since = time.monotonic() - self._collected
            due = since >= (self._every_s if idle else max(self._every_s, self._busy_s)) or (
                idle and self._ended >= self._every_syncs
            )
            if due and since >= min(self._pass_s / self._share, self._busy_s):
                started = time.monotonic()
                gc.collect()
                self._collected, self._ended = time.monotonic(), 0
                self._pass_s = self._collected - started


SETTLE_EVERY = 5_000
"""Records read, and keys planned, between two ``settle`` calls (each batch applied settles
too). The collector's own time in a first sync of 100,000 customers into a CSV folder went
from 2.3 s to 0.2 s, and the sync from 18-19 s to about 16.5 s. What freezing holds back
from the collector until the sync ends is bounded by what is alive at each freeze and turns
to cyclic garbage later (see ``settle``): nothing of the records or the plan, which
reference counting frees."""

COLLECTOR = SyncCollector()
"""The process's one policy: syncs of several pipelines share the collector."""
