"""Leases, pauses, backoff and history pruning in the state store, on SQLite and PostgreSQL.

The mutual exclusion of ``acquire`` is shown with real processes racing for one lease: every
interval during which some process believed it held the lease is recorded, and no two overlap.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncengine.state import StateStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_acquire_renew_release_and_expiry(url: str) -> None:
    with StateStore.open(url) as store:
        with store.transaction() as tx:
            assert tx.acquire_lease("p", "A", 0.4)
            assert not tx.acquire_lease("p", "B", 5)  # held
            assert tx.acquire_lease("p", "A", 0.4)  # ours: extended
            assert tx.acquire_lease("q", "B", 5)  # another pipeline is another lease
            assert not tx.renew_lease("p", "B", 5) and not tx.release_lease("p", "B")
        lease = store.leases()["p"]
        assert lease.holder == "A" and not lease.expired(dt.datetime.now(dt.UTC))
        time.sleep(0.5)
        assert store.leases()["p"].expired(dt.datetime.now(dt.UTC))
        with store.transaction() as tx:
            assert tx.acquire_lease("p", "B", 5)  # expired: taken over
            assert not tx.renew_lease("p", "A", 5)  # A learns it lost it
            assert not tx.release_lease("p", "A")  # and cannot release B's
        assert store.leases()["p"].holder == "B"
        with store.transaction() as tx:
            assert tx.renew_lease("p", "B", 5) and tx.release_lease("p", "B")
        assert set(store.leases()) == {"q"}


def test_pause_resume_and_backoff_state(url: str) -> None:
    with StateStore.open(url) as store:
        assert store.pipeline_states() == {}
        with store.transaction() as tx:
            first = tx.record_failure("p", "boom", lambda n: 10.0 * n)
            second = tx.record_failure("p", "bang", lambda n: 10.0 * n)
        assert (first.failures, second.failures, second.last_error) == (1, 2, "bang")
        assert second.backoff_until is not None
        wait = (second.backoff_until - dt.datetime.now(dt.UTC)).total_seconds()
        assert 15 < wait <= 20
        with store.transaction() as tx:
            tx.pause_pipeline("p", "credentials refused", "fp1")
        state = store.pipeline_states()["p"]
        assert state.paused and state.paused_reason == "credentials refused"
        assert state.paused_fingerprint == "fp1" and state.failures == 2
        with store.transaction() as tx:
            assert tx.resume_pipeline("p")
            assert not tx.resume_pipeline("p")  # nothing left to lift
            assert not tx.resume_pipeline("never-seen")
        state = store.pipeline_states()["p"]
        assert not state.paused and state.failures == 0 and state.backoff_until is None
        with store.transaction() as tx:
            tx.record_failure("p", "boom", lambda n: 1.0)
            tx.record_success("p")
        assert store.pipeline_states()["p"].failures == 0


def test_prune_runs_keeps_each_pipelines_newest_run(url: str) -> None:
    with StateStore.open(url) as store:
        with store.transaction() as tx:
            for n in range(3):
                for p in ("a", "b"):
                    tx.finish_run(tx.start_run(p, False, f"{p}{n}"), "ok", {}, [])
        future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        with store.transaction() as tx:
            assert tx.prune_runs(future) == 4
        assert sorted(r.run_uuid for r in store.runs()) == ["a2", "b2"]
        assert store.last_success("a") is not None and store.last_success("zzz") is None


_RACER = """
import json, random, sys, time
from syncengine.state import StateStore
url, holder, out, start_at, seconds = sys.argv[1:6]
rnd = random.Random(holder)
store = StateStore.open(url)
held = []
time.sleep(max(0.0, float(start_at) - time.time()))
end = time.time() + float(seconds)
while time.time() < end:
    with store.transaction() as tx:
        got = tx.acquire_lease("p", holder, 30)
    if got:
        began = time.time()
        time.sleep(rnd.uniform(0.002, 0.01))
        held.append((began, time.time()))
        with store.transaction() as tx:
            assert tx.release_lease("p", holder)
    time.sleep(rnd.uniform(0, 0.004))
store.close()
with open(out, "w") as fh:
    json.dump(held, fh)
"""


def test_processes_racing_for_one_lease_never_hold_it_together(url: str, tmp_path: Path) -> None:
    with StateStore.open(url):  # migrate once, before the race
        pass
    start_at = time.time() + 2.0
    procs = []
    for n in range(4):
        out = tmp_path / f"held-{n}.json"
        procs.append(
            (
                out,
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _RACER,
                        url,
                        f"racer-{n}",
                        str(out),
                        str(start_at),
                        "1.5",
                    ],
                    cwd=REPO,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    intervals: list[tuple[float, float, int]] = []
    for n, (out, proc) in enumerate(procs):
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        intervals += [(a, b, n) for a, b in json.loads(out.read_text())]
    intervals.sort()
    assert len(intervals) >= 20, intervals
    assert len({n for _, _, n in intervals}) >= 2, "only one process ever got the lease"
    for (a1, b1, n1), (a2, b2, n2) in itertools.pairwise(intervals):
        assert b1 <= a2, f"racer-{n1} held [{a1}, {b1}] while racer-{n2} held [{a2}, {b2}]"
