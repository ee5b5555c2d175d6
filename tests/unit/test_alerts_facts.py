"""What one run tells the alerts about failing writes (``gather_facts``): only a run that
completed after looking at every record opens or clears ``writes_failed``; a run a guard
stopped, or one that read what webhook events named, says nothing of it (a cold reviewer
found a guard run announcing "recovered" while the writes still failed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine import api
from syncengine.alerts.sender import gather_facts
from syncengine.plan import EntityPlan, Issue, Plan
from syncengine.result import EntityOutcome, SyncResult
from tests.helpers import memory_config


def _result(failures: int, *, event_driven: bool = False) -> SyncResult:
    outcome = EntityOutcome(EntityPlan("customers", ("a", "books")))
    # as a run reports a file it could not save: once for the file, then each write in it
    outcome.failures = [
        *([Issue("customers", "books", "", "nothing written: cannot write")] if failures else []),
        *(
            Issue(
                "customers",
                "books",
                f"Ann Lee <ann{n}@example.com> (k{n})",
                "create failed: nothing written: cannot write",
            )
            for n in range(failures)
        ),
    ]
    result = SyncResult("p", False, "run-1", Plan("p", False), [outcome])
    result.event_driven = event_driven
    return result


@pytest.mark.parametrize(
    ("ending", "event_driven", "said"),
    [
        ("completed", False, True),
        ("completed", True, False),
        ("guard", False, False),
    ],
)
def test_only_a_full_completed_run_speaks_of_failing_writes(
    tmp_path: Path, ending: str, event_driven: bool, said: bool
) -> None:
    config = memory_config(tmp_path, {"a": {}, "books": {"type": "spreadsheet", "path": "b"}})
    store = api.open_store(config)
    try:
        for failures in (2, 0):
            facts = gather_facts(
                config, store, "p", ending, _result(failures, event_driven=event_driven), ""
            )
            if not said:
                assert "writes_failed" not in facts.items
                continue
            assert facts.items["writes_failed"].count == failures
            if failures:
                assert facts.items["writes_failed"].by == {"books customers": 2}
                # counted as status counts them, the cause told, no customer named
                assert facts.failure == "books customers: nothing written: cannot write"
            else:
                assert facts.failure == ""
    finally:
        store.close()
