"""A member's mapping changes (a field it now reads, as after an upgrade that maps a field
the API already sent): its records are read again with the new mapping, although their
native data did not change, once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncengine.api import open_store
from syncengine.config import Config, load_config
from syncengine.connectors.memory import MemoryConnector
from tests.helpers import ds, run

MAPPING = """
flat = true

[fields]
first_name = "first_name"
email = "email"
{extra}
updated_at = {{ native = "updated_at", direction = "read" }}
"""


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    MemoryConnector.reset()
    yield
    MemoryConnector.reset()


def config(tmp_path: Path, extra: str) -> Config:
    (tmp_path / "a-customers.toml").write_text(MAPPING.format(extra=extra), encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(
        """
[state]
url = "sqlite:///state.db"
[connectors.a]
type = "memory"
[connectors.b]
type = "memory"
[[pipelines]]
name = "p"
members = ["a", "b"]
[pipelines.conflicts]
default = ["a"]
[pipelines.mappings]
a = { customers = "a-customers.toml" }
""",
        encoding="utf-8",
    )
    return load_config(path)


def b_companies() -> dict[str, object]:
    return {r["email"]: r.get("company") for r in ds("b").table("customers").values()}


def test_a_field_a_mapping_starts_to_read_reaches_the_others_without_a_change(
    tmp_path: Path,
) -> None:
    for n in range(3):
        ds("a").put(
            "customers",
            f"a{n}",
            {"email": f"c{n}@x.test", "first_name": f"F{n}", "company": f"Co{n}",
             "updated_at": "2026-01-01T00:00:00Z"},
        )  # fmt: skip
    assert run(config(tmp_path, "")).exit_code == 0
    assert b_companies() == dict.fromkeys(("c0@x.test", "c1@x.test", "c2@x.test"))

    wider = config(tmp_path, 'company = "company"')  # a now reads its company too
    result = run(wider)

    assert result.exit_code == 0
    assert b_companies() == {"c0@x.test": "Co0", "c1@x.test": "Co1", "c2@x.test": "Co2"}
    store = open_store(wider)
    try:
        assert store.mapping_mark("p", "customers", "a") == (
            wider.pipelines["p"].mappings[("a", "customers")].fingerprint()
        )
    finally:
        store.close()
    again = run(wider)  # once: the records are taken as unchanged again
    assert again.plan.actions == []


def test_the_fingerprint_follows_what_is_read_not_what_is_written(tmp_path: Path) -> None:
    base = config(tmp_path, "").pipelines["p"].mappings[("a", "customers")]
    reads = config(tmp_path, 'company = "company"').pipelines["p"].mappings[("a", "customers")]
    writes = config(tmp_path, 'company = { native = "company", direction = "write" }')
    assert base.fingerprint() != reads.fingerprint()
    assert base.fingerprint() == writes.pipelines["p"].mappings[("a", "customers")].fingerprint()
    assert (
        base.fingerprint()
        == config(tmp_path, "").pipelines["p"].mappings[("a", "customers")].fingerprint()
    )
