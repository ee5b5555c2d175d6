"""`syncengine probe`: the first records of a connector, as read and as mapped."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine import api
from syncengine.connectors.memory import MemoryConnector
from syncengine.errors import UsageError
from tests.helpers import memory_config


@pytest.fixture(autouse=True)
def _fresh() -> None:
    MemoryConnector.reset()


def test_probe_shows_native_and_canonical_and_errors(tmp_path: Path) -> None:
    config = memory_config(
        tmp_path,
        {
            "a": {"entities": ["customers", "invoices", "payments"]},
            "b": {"entities": ["customers", "invoices", "payments"]},
        },
        entities=("customers", "invoices", "payments"),
    )
    a = MemoryConnector.get_dataset("a")
    for i in range(5):
        a.put("customers", f"c{i}", {"email": f" P{i}@Example.com ", "first_name": "Pat"})
    a.put("payments", "p1", {"invoice": "i1", "amount": 100, "method": "Bitcoin"})
    results = api.probe(config, "a", limit=2)
    assert [r.entity for r in results] == ["customers", "invoices", "payments"]
    customers, invoices, payments = results
    assert customers.read == 2 and len(customers.records) == 2
    assert customers.records[0]["canonical"]["email"] == "p0@example.com"
    # every field the mapping reads is shown, an empty one as null (a sync leaves it out)
    assert customers.records[0]["canonical"]["last_name"] is None
    assert invoices.records == [] and invoices.error == ""
    [bad] = payments.records
    assert "'Bitcoin' is not a known payment method" in bad["error"]
    assert api.probe(config, "a", entities=["payments"])[0].entity == "payments"


def test_probe_names_what_is_wrong(tmp_path: Path) -> None:
    config = memory_config(tmp_path, {"a": {}, "b": {}})
    with pytest.raises(UsageError, match="no connector named 'zz'; use one of: a, b"):
        api.probe(config, "zz")
    with pytest.raises(UsageError, match="does not hold invoices"):
        api.probe(config, "a", entities=["invoices"])
