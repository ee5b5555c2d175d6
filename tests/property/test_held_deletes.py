"""A hypothesis property: with ``[pipelines.deletes] approve = true`` no sync deletes anything
a person did not approve, whatever people create, edit and delete on either member between
syncs; and once every held delete is approved, the next sync carries them out and none stays
held."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine import api
from syncengine.connectors.memory import MemoryConnector
from tests.helpers import ds, memory_config, ops, run

C = "customers"

steps = st.lists(
    st.tuples(
        st.sampled_from(["create", "edit", "delete"]),
        st.sampled_from(["a", "b"]),
        st.integers(min_value=0, max_value=9),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=20)
@given(steps=steps)
def test_no_delete_without_an_approval(steps: list[tuple[str, str, int]]) -> None:
    MemoryConnector.reset()
    with tempfile.TemporaryDirectory() as folder:
        cfg = memory_config(Path(folder), {"a": {}, "b": {}}, deletes={"approve": True})
        for i in range(3):
            ds("a").put(C, f"a{i}", {"first_name": f"P{i}", "email": f"p{i}@x.com"})
        run(cfg)
        created = 0
        for what, member, n in steps:
            table = ds(member).table(C)
            ids = sorted(table)
            if what == "create":
                created += 1
                ds(member).put(
                    C, f"{member}-new{created}", {"first_name": "N", "email": f"n{created}@x.com"}
                )
            elif ids and what == "edit":
                ds(member).edit(C, ids[n % len(ids)], first_name=f"E{n}")
            elif ids:
                table.pop(ids[n % len(ids)])
            before = {m: len(ds(m).table(C)) for m in "ab"}
            result = run(cfg)
            assert not [op for op in ops(result) if op[0] == "delete"], result.to_json()
            for m in "ab":  # a sync only adds records (or gives one back), never takes one
                assert len(ds(m).table(C)) >= before[m]
        held = api.list_held_deletes(cfg)
        plain = [h.id for h in held if h.guard is None]
        if plain:
            api.approve_delete(cfg, plain, "tester")
        for key in {(h.pipeline, h.entity) for h in held if h.guard is not None}:
            api.approve_guarded(cfg, *key, "tester")
        run(cfg)
        assert api.list_held_deletes(cfg) == []
        settled = run(cfg)
        assert settled.plan.actions == [] and api.list_held_deletes(cfg) == []
        for h in held:  # approved: no member holds it any more (unless edited meanwhile)
            hub = api.open_store(cfg)
            try:
                state = hub.load_records("p", C, [h.hub_key]).get(h.hub_key)
            finally:
                hub.close()
            assert (
                state is None
                or not state.base.get("_deleted")
                or not any(ln.native_id and not ln.tombstone for ln in state.links.values())
            )
