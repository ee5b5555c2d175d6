"""The connector contract for the in-memory connector, with the engine assigning ids and not.

The memory member keeps its records in a process-wide dataset named by its options, so
``reopen`` is a second connector instance (under another name) over the same dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest

from syncengine.connector import (
    CapabilityViolation,
    Connector,
    ConnectorContext,
    NativeData,
    check_allowed,
)
from syncengine.connectors.memory import MemoryConnector, MemoryOptions
from tests.contract.connector_suite import (
    AssignsIdsContract,
    Change,
    ConnectorContract,
    Reopen,
    Sample,
)

DATASET = "contract"


def memory(name: str = "mem", **options: object) -> MemoryConnector:
    opts = MemoryOptions.model_validate({"type": "memory", "dataset": DATASET, **options})
    return MemoryConnector(opts, ConnectorContext(name=name))


class TestMemoryConnector(ConnectorContract):
    volatile_fields: ClassVar[frozenset[str]] = frozenset({"updated_at"})
    assigns_ids: ClassVar[bool] = False

    @pytest.fixture
    def connector(self) -> Iterator[Connector]:
        conn = memory(assigns_ids=self.assigns_ids)
        yield conn
        conn.close()

    @pytest.fixture
    def sample(self) -> Sample:
        def make(n: int) -> NativeData:
            return {
                "first_name": f"Zoë{n}",
                "last_name": f"Okafor-{n}",
                "email": f"zoe.{n}@example.com",
                "phone": f"+1555{n:07d}",
                "tags": ["vip", f"t{n}"],
            }

        return make

    @pytest.fixture
    def change(self) -> Change:
        def patch(data: NativeData) -> NativeData:
            return {"last_name": f"{data['last_name']} (renamed)"}

        return patch

    @pytest.fixture
    def reopen(self) -> Reopen:
        def again(conn: Connector) -> Connector:
            assert isinstance(conn, MemoryConnector)
            return memory("mem-reopened", assigns_ids=self.assigns_ids)

        return again


class TestMemoryConnectorAssigningIds(TestMemoryConnector, AssignsIdsContract):
    """The same member taking the engine's key as the id (like a spreadsheet's Sync ID)."""

    assigns_ids: ClassVar[bool] = True


# ----------------------------------------------------------- capability flags (memory only)
# Only the memory connector can be built with a write forbidden, so the enforcement of a
# forbidding flag is checked here; the suite checks every connector's flags agree with
# check_allowed for the operations it does allow.


@pytest.mark.parametrize("forbidden", ["create", "update", "delete"])
def test_check_allowed_refuses_a_forbidden_write(forbidden: str) -> None:
    conn = memory(**{forbidden: False})
    caps = conn.capabilities(TestMemoryConnector.entity)
    assert not caps.allows(forbidden)
    with pytest.raises(CapabilityViolation):
        check_allowed(conn, TestMemoryConnector.entity, forbidden)
    for allowed in {"read", "create", "update", "delete"} - {forbidden}:
        check_allowed(conn, TestMemoryConnector.entity, allowed)


def test_read_only_member() -> None:
    conn = memory(create=False, update=False, delete=False)
    caps = conn.capabilities(TestMemoryConnector.entity)
    assert caps.read_only
    for op in ("create", "update", "delete"):
        with pytest.raises(CapabilityViolation):
            check_allowed(conn, TestMemoryConnector.entity, op)
    check_allowed(conn, TestMemoryConnector.entity, "read")
