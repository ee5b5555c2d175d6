"""The connector contract: what the engine relies on from every member, checked the same way.

Every connector's contract tests subclass :class:`ConnectorContract` and provide four
fixtures; the tests below then run against that connector through the public
:class:`~syncengine.connector.Connector` API only::

    class TestMyConnector(ConnectorContract):
        @pytest.fixture
        def connector(self, ...) -> Iterator[Connector]: ...    # a fresh, empty member
        @pytest.fixture
        def sample(self) -> Sample: ...                         # n -> a valid native record
        @pytest.fixture
        def change(self) -> Change: ...                         # data -> a one-field patch
        @pytest.fixture
        def reopen(self, ...) -> Reopen: ...                    # a new instance, same data

Decisions the suite makes for every connector (no per-connector opt-out):

* **Durability is checked through ``reopen``**: writes followed by ``flush(entity)`` must be
  visible to a *new* connector instance over the same data (the next run, or the process
  that resumes after a crash). ``flush`` is called after every write; write-through members
  do nothing there.
* **Deleting a record that is already gone succeeds silently.** The engine retries a delete
  whose outcome it did not record (a crash between the call and the commit), and a failed
  delete keeps the link and is retried next run: a ``NotFoundError`` from ``delete`` would
  fail that record forever. So ``delete`` is idempotent for every connector that has the
  ``delete`` capability; raising ``NotFoundError`` there is a contract failure.
* **Updating a record that does not exist raises** ``NotFoundError`` (a ``RecordError``:
  the engine skips and reports it), never creates it and never passes silently.
* **What ``create`` / ``update`` return is what a later read gives.** The engine stores the
  returned record's ``native_hash()`` as the member's last-seen version; the raw-hash
  short-circuit only works when it equals the hash of the record as read back.
  ``update`` may instead return ``None`` (the engine then assumes ``full``).
* **Reads are repeatable**: the same ids and identical ``native_hash()`` for records nobody
  changed, and every record exactly once however the member pages.
* **Fields a member maintains itself** (``updated_at``) may change on any write of that
  record; a subclass lists them in ``volatile_fields``. Every other field is left as it was
  by an update that does not name it, and no write touches another record at all.
* Tests of a write the connector's capabilities forbid are skipped (with the reason), and
  ``check_allowed`` must agree with ``capabilities`` for every operation. That a forbidding
  flag really makes ``check_allowed`` raise ``CapabilityViolation`` is checked with the
  memory connector (the one whose flags are options) in ``test_connector_memory.py``.
* For members that take the engine's key as the id (``assigns_ids``): ``create`` uses it,
  ``update(..., new_id=...)`` renames, and neither ever overwrites a record that already
  holds that id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from syncengine.connector import (
    Capabilities,
    CapabilityViolation,
    Connector,
    ConnectorOptions,
    NativeData,
    NativeRecord,
    check_allowed,
    connector_types,
)
from syncengine.errors import NotFoundError, RecordError

Sample = Callable[[int], NativeData]
"""``n`` -> a valid native record for the connector, different for every ``n``."""
Change = Callable[[NativeData], NativeData]
"""A record's data -> a flat native patch that changes exactly one field of it."""
Reopen = Callable[[Connector], Connector]
"""A connector -> a new connector instance over the same underlying data."""

OPERATIONS = ("read", "create", "update", "delete")


def key(n: int) -> str:
    """The engine's record key for sample ``n``."""
    return f"rec-{n:04d}"


class ConnectorContract:
    """The tests every connector must pass. Subclasses provide the fixtures below."""

    volatile_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields the member itself changes on every write (``updated_at``)."""
    missing_id: ClassVar[str] = "no-such-record-0000"
    """A well-formed native id that no record in the member has."""
    many: ClassVar[int] = 25
    """How many records the bulk test creates; subclasses that page make it span pages."""
    entity: ClassVar[str] = "customers"
    """The entity the suite reads and writes; a subclass names another (HCP's ``invoices``),
    and the skips of writes the member cannot make name it."""

    # ---------------------------------------------------------------------- fixtures to provide

    @pytest.fixture
    def connector(self) -> Iterator[Connector]:
        pytest.fail(
            f"{type(self).__name__} must provide a `connector` fixture: a fresh, empty member "
            f"holding {self.entity!r}"
        )

    @pytest.fixture
    def sample(self) -> Sample:
        pytest.fail(
            f"{type(self).__name__} must provide a `sample` fixture: n -> a valid native record"
        )

    @pytest.fixture
    def change(self) -> Change:
        pytest.fail(
            f"{type(self).__name__} must provide a `change` fixture: data -> a one-field patch"
        )

    @pytest.fixture
    def reopen(self) -> Reopen:
        pytest.fail(
            f"{type(self).__name__} must provide a `reopen` fixture: connector -> a new "
            "instance over the same data"
        )

    # ---------------------------------------------------------------------------------- helpers

    @classmethod
    def require(cls, conn: Connector, *ops: str) -> Capabilities:
        caps = conn.capabilities(cls.entity)
        for op in ops:
            if not caps.allows(op):
                pytest.skip(f"{conn.type_name} cannot {op} {cls.entity}")
        return caps

    @classmethod
    def records(cls, conn: Connector) -> dict[str, NativeRecord]:
        """Every record read, by id; fails when an id comes back more than once."""
        found = list(conn.read(cls.entity))
        ids = [r.id for r in found]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        assert not repeated, f"read yielded these ids more than once: {repeated}"
        return {r.id: r for r in found}

    @classmethod
    def create(cls, conn: Connector, sample: Sample, n: int) -> NativeRecord:
        return conn.create(cls.entity, sample(n), key=key(n))

    @staticmethod
    def assert_holds(record: NativeRecord, written: NativeData) -> None:
        """``record`` carries every field of ``written`` with the value written."""
        held = {name: record.data.get(name) for name in written}
        assert held == written, f"{record.location or record.id}: wrote {written}, got {held}"

    def stable(self, data: NativeData) -> NativeData:
        return {k: v for k, v in data.items() if k not in self.volatile_fields}

    # -------------------------------------------------------------------------- describing itself

    def test_entities_include_its_entity(self, connector: Connector) -> None:
        entities = connector.entities()
        assert isinstance(entities, tuple)
        assert self.entity in entities

    def test_capabilities_of_every_entity(self, connector: Connector) -> None:
        for entity in connector.entities():
            caps = connector.capabilities(entity)
            assert isinstance(caps, Capabilities)
            assert caps.read, f"{entity}: a member must at least be readable"

    def test_check_allowed_agrees_with_capabilities(self, connector: Connector) -> None:
        caps = connector.capabilities(self.entity)
        for op in OPERATIONS:
            if caps.allows(op):
                check_allowed(connector, self.entity, op)
            else:
                with pytest.raises(CapabilityViolation):
                    check_allowed(connector, self.entity, op)

    def test_registered_under_its_type_name(self, connector: Connector) -> None:
        assert connector.type_name
        assert connector_types().get(connector.type_name) is type(connector)
        assert issubclass(type(connector).Options, ConnectorOptions)

    # ------------------------------------------------------------------------------- reading

    def test_empty_member_reads_nothing(self, connector: Connector, reopen: Reopen) -> None:
        assert list(connector.read(self.entity)) == []
        connector.flush(self.entity)
        assert list(reopen(connector).read(self.entity)) == []

    def test_flush_without_writes_is_harmless(self, connector: Connector, reopen: Reopen) -> None:
        connector.flush(self.entity)
        connector.flush(self.entity)
        assert list(reopen(connector).read(self.entity)) == []

    # ------------------------------------------------------------------------------- creating

    def test_create_returns_a_record_with_an_id(self, connector: Connector, sample: Sample) -> None:
        caps = self.require(connector, "create")
        first = self.create(connector, sample, 1)
        second = self.create(connector, sample, 2)
        connector.flush(self.entity)
        for n, record in ((1, first), (2, second)):
            assert isinstance(record, NativeRecord)
            assert isinstance(record.id, str) and record.id.strip()
            assert not record.provisional
            assert not record.error
            self.assert_holds(record, sample(n))
            if caps.assigns_ids:
                assert record.id == key(n), "assigns_ids: the key given is the native id"
        assert first.id != second.id

    def test_created_record_is_read_back_once(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        self.require(connector, "create")
        created = self.create(connector, sample, 1)
        connector.flush(self.entity)
        for reader in (connector, reopen(connector)):
            found = self.records(reader)
            assert list(found) == [created.id]
            record = found[created.id]
            self.assert_holds(record, sample(1))
            assert not record.provisional
            assert not record.error
            assert record.location.strip(), "a read record says where a person finds it"

    def test_create_returns_the_record_as_read_back(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        self.require(connector, "create")
        created = self.create(connector, sample, 1)
        connector.flush(self.entity)
        read = self.records(reopen(connector))[created.id]
        assert created.data == read.data
        assert created.native_hash() == read.native_hash()

    def test_many_records_each_read_exactly_once(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        self.require(connector, "create")
        created = {n: self.create(connector, sample, n) for n in range(1, self.many + 1)}
        connector.flush(self.entity)
        ids = {record.id for record in created.values()}
        assert len(ids) == self.many, "every create got its own id"
        for reader in (connector, reopen(connector)):
            found = self.records(reader)
            assert set(found) == ids
            for n, record in created.items():
                self.assert_holds(found[record.id], sample(n))

    # ------------------------------------------------------------------- repeatability, hashing

    def test_reads_are_repeatable(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        self.require(connector, "create")
        for n in range(1, 4):
            self.create(connector, sample, n)
        connector.flush(self.entity)
        first = self.records(connector)
        second = self.records(connector)
        third = self.records(reopen(connector))
        assert len(first) == 3
        for other in (second, third):
            assert set(other) == set(first)
            for native_id, record in first.items():
                assert other[native_id].data == record.data
                assert other[native_id].native_hash() == record.native_hash(), (
                    f"{native_id}: an unchanged record must hash the same on every read"
                )

    def test_native_hash_follows_changes(
        self, connector: Connector, sample: Sample, change: Change
    ) -> None:
        self.require(connector, "create", "update")
        target = self.create(connector, sample, 1)
        bystander = self.create(connector, sample, 2)
        connector.flush(self.entity)
        before = self.records(connector)
        patch = change(before[target.id].data)
        full = {**before[target.id].data, **patch}
        connector.update(self.entity, target.id, patch, full=full)
        connector.flush(self.entity)
        after = self.records(connector)
        assert after[target.id].native_hash() != before[target.id].native_hash()
        assert after[bystander.id].native_hash() == before[bystander.id].native_hash(), (
            "writing one record must not change another's hash"
        )

    # ------------------------------------------------------------------------------- updating

    def test_update_changes_one_field_and_keeps_the_others(
        self, connector: Connector, sample: Sample, change: Change, reopen: Reopen
    ) -> None:
        self.require(connector, "create", "update")
        target = self.create(connector, sample, 1)
        bystander = self.create(connector, sample, 2)
        connector.flush(self.entity)
        before = self.records(connector)
        patch = change(before[target.id].data)
        assert len(patch) == 1, "the `change` fixture must patch exactly one field"
        assert all(before[target.id].data.get(k) != v for k, v in patch.items())
        connector.update(self.entity, target.id, patch, full={**before[target.id].data, **patch})
        connector.flush(self.entity)
        for reader in (connector, reopen(connector)):
            after = self.records(reader)
            assert set(after) == set(before)
            self.assert_holds(after[target.id], patch)
            unpatched = {k: v for k, v in before[target.id].data.items() if k not in patch}
            kept = {k: after[target.id].data.get(k) for k in unpatched}
            assert self.stable(kept) == self.stable(unpatched)
            assert after[bystander.id].data == before[bystander.id].data

    def test_update_returns_none_or_the_record_as_read_back(
        self, connector: Connector, sample: Sample, change: Change, reopen: Reopen
    ) -> None:
        self.require(connector, "create", "update")
        created = self.create(connector, sample, 1)
        connector.flush(self.entity)
        current = self.records(connector)[created.id].data
        patch = change(current)
        returned = connector.update(self.entity, created.id, patch, full={**current, **patch})
        connector.flush(self.entity)
        read = self.records(reopen(connector))[created.id]
        self.assert_holds(read, patch)
        if returned is None:
            return
        assert isinstance(returned, NativeRecord)
        assert returned.id == created.id
        assert returned.data == read.data
        assert returned.native_hash() == read.native_hash()

    def test_update_of_a_missing_record_raises_not_found(
        self, connector: Connector, sample: Sample, change: Change, reopen: Reopen
    ) -> None:
        self.require(connector, "create", "update")
        created = self.create(connector, sample, 1)
        connector.flush(self.entity)
        data = self.records(connector)[created.id].data
        patch = change(data)
        with pytest.raises(NotFoundError):
            connector.update(self.entity, self.missing_id, patch, full={**data, **patch})
        connector.flush(self.entity)
        found = self.records(reopen(connector))
        assert list(found) == [created.id], "an update of a missing record creates nothing"
        assert found[created.id].data == data

    # ------------------------------------------------------------------------------- deleting

    def test_delete_removes_only_that_record(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        self.require(connector, "create", "delete")
        doomed = self.create(connector, sample, 1)
        kept = self.create(connector, sample, 2)
        connector.flush(self.entity)
        before = self.records(connector)
        connector.delete(self.entity, doomed.id)
        connector.flush(self.entity)
        for reader in (connector, reopen(connector)):
            after = self.records(reader)
            assert list(after) == [kept.id]
            assert after[kept.id].data == before[kept.id].data

    def test_delete_is_idempotent(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        self.require(connector, "create", "delete")
        doomed = self.create(connector, sample, 1)
        kept = self.create(connector, sample, 2)
        connector.flush(self.entity)
        connector.delete(self.entity, doomed.id)
        connector.flush(self.entity)
        connector.delete(self.entity, doomed.id)  # a retried delete: already gone is done
        connector.flush(self.entity)
        other = reopen(connector)
        other.delete(self.entity, doomed.id)  # the retry may come from the next process
        other.delete(self.entity, self.missing_id)
        other.flush(self.entity)
        assert list(self.records(reopen(connector))) == [kept.id]

    # -------------------------------------------------------------------------------- finding

    def test_find_returns_the_created_record(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        self.require(connector, "create")
        wanted = self.create(connector, sample, 1)
        other = self.create(connector, sample, 2)
        connector.flush(self.entity)
        finder = reopen(connector)  # crash recovery runs in the next process
        found = finder.find(self.entity, sample(1))
        assert [r.id for r in found] == [wanted.id]
        self.assert_holds(found[0], sample(1))
        assert [r.id for r in finder.find(self.entity, sample(2))] == [other.id]
        assert finder.find(self.entity, sample(3)) == []

    def test_a_member_never_gives_two_records_one_id(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        caps = self.require(connector, "create")
        first = connector.create(self.entity, sample(1), key=key(1))
        if caps.assigns_ids:  # the key is the id: a second create with it is refused
            with pytest.raises(RecordError):
                connector.create(self.entity, sample(2), key=key(1))
            expected = {first.id}
        else:  # the member chooses ids: the key is not one
            second = connector.create(self.entity, sample(2), key=key(1))
            assert first.id != second.id
            expected = {first.id, second.id}
        connector.flush(self.entity)
        found = self.records(reopen(connector))
        assert set(found) == expected
        self.assert_holds(found[first.id], sample(1))


class AssignsIdsContract(ConnectorContract):
    """The extra contract of members that take the engine's key as the native id
    (``Capabilities.assigns_ids``), such as a spreadsheet's Sync ID column."""

    def test_update_new_id_renames_the_record(
        self, connector: Connector, sample: Sample, change: Change, reopen: Reopen
    ) -> None:
        caps = self.require(connector, "create", "update")
        assert caps.assigns_ids, "only for members that take the engine's key as the id"
        created = self.create(connector, sample, 1)
        connector.flush(self.entity)
        data = self.records(connector)[created.id].data
        patch = change(data)
        returned = connector.update(
            self.entity, created.id, patch, full={**data, **patch}, new_id=key(9)
        )
        connector.flush(self.entity)
        if returned is not None:
            assert returned.id == key(9)
        found = self.records(reopen(connector))
        assert list(found) == [key(9)]
        self.assert_holds(found[key(9)], patch)

    def test_update_new_id_never_takes_an_id_in_use(
        self, connector: Connector, sample: Sample, reopen: Reopen
    ) -> None:
        caps = self.require(connector, "create", "update")
        assert caps.assigns_ids, "only for members that take the engine's key as the id"
        first = self.create(connector, sample, 1)
        second = self.create(connector, sample, 2)
        connector.flush(self.entity)
        data = self.records(connector)[first.id].data
        with pytest.raises(RecordError):
            connector.update(self.entity, first.id, {}, full=data, new_id=second.id)
        connector.flush(self.entity)
        found = self.records(reopen(connector))
        assert set(found) == {first.id, second.id}
        self.assert_holds(found[first.id], sample(1))
        self.assert_holds(found[second.id], sample(2))
