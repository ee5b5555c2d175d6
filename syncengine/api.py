"""The library API the CLI (and the daemon, and integrators' scripts) are thin layers over."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from syncengine.config import Config, Pipeline, load_config
from syncengine.connector import Structure
from syncengine.display import days_in, label_of
from syncengine.engine import Engine, ProgressFn, SyncResult
from syncengine.errors import (
    ConfigError,
    ConnectorError,
    Problem,
    RecordError,
    StateError,
    SyncEngineError,
    SyncStopped,
    UsageError,
    describe,
)
from syncengine.exit_codes import failed_run_code
from syncengine.leasing import hold_pipelines, wait_until_free
from syncengine.mapping import EntityMapping, load_mapping
from syncengine.model import ENTITIES, UNSEEN, unseen_in
from syncengine.read import check_structures
from syncengine.redact import redact_text
from syncengine.report import Report
from syncengine.report import reconcile_report as build_report
from syncengine.schedule import parse_timezone
from syncengine.state import ConflictRow, Lease, PipelineState, RunRow, StateStore, queues
from syncengine.tax_report import TaxReport, check_range
from syncengine.tax_report import tax_report as build_tax_report
from syncengine.unbilled import UnbilledReport, unbilled_jobs

if TYPE_CHECKING:
    from syncengine.alerts import Alerter, Delivery


def open_store(config: Config, *, create: bool = True) -> StateStore:
    return StateStore.open(config.state_url, base_dir=str(config.base_dir), create=create)


def sync(
    config: Config,
    *,
    pipeline: str | None = None,
    entities: Sequence[str] | None = None,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    allow_mass_delete: bool = False,
    connector_extra: dict[str, dict[str, Any]] | None = None,
    wait: float = 0.0,
    waiting: Callable[[str], None] | None = None,
) -> list[SyncResult]:
    """Run (or with ``dry_run`` only plan) the chosen pipelines. Returns one result each.

    A sync holds the lease of every chosen pipeline for its whole run (``syncengine.leasing``),
    renewed while it runs and released at the end, also on an error or Ctrl-C. When another
    run holds one, it waits up to ``wait`` seconds (``waiting`` is told once, when it starts
    waiting) and then raises ``PipelineBusyError`` naming the holder, having read and written
    nothing and recorded no run. A dry run takes no lease (it writes nothing, not even that)
    but waits or refuses the same way: its plan would be wrong while another run applies."""
    pipelines = config.pipeline(pipeline)
    if entities:
        known = {e for p in pipelines for e in p.entities}
        unknown = [e for e in entities if e not in known]
        if unknown:
            raise UsageError(
                f"--entity {', '.join(unknown)}: not synced by "
                f"{'pipeline ' + pipeline if pipeline else 'any pipeline'} "
                f"(entities: {', '.join(sorted(known))})"
            )
    if wait < 0:
        raise UsageError(f"--wait {wait:g}: give the seconds to wait, 0 or more")
    names = [p.name for p in pipelines]
    store = open_store(config, create=not dry_run)
    try:
        if dry_run:
            wait_until_free(store, names, wait, waiting)
            engine = Engine(
                config,
                store,
                dry_run=True,
                progress=progress,
                allow_mass_delete=allow_mass_delete,
                connector_extra=connector_extra,
            )
            return [engine.sync(p, entities) for p in pipelines]
        ttl = config.daemon.lease_ttl
        alerts: Alerter | None = None
        if config.alerts is not None:
            # imported here: only a config with [alerts] needs the senders (smtplib, metrics)
            from syncengine.alerts import Alerter

            alerts = Alerter(store)
        with (
            _alerts_sent(alerts),  # sent after the leases are released, not holding them
            hold_pipelines(store, names, ttl=ttl, wait=wait, waiting=waiting) as held,
        ):
            out = []
            for p in pipelines:
                engine = Engine(
                    config,
                    store,
                    progress=progress,
                    allow_mass_delete=allow_mass_delete,
                    connector_extra=connector_extra,
                    stop=held.run(p.name).stop,
                    holder=held.holder,
                )
                try:
                    result = held.run_sync(p.name, partial(engine.sync, p, entities))
                except SyncStopped:
                    raise
                except Exception as exc:
                    if alerts is not None:
                        error = redact_text(describe(exc), config.secrets)
                        alerts.notify(config, p.name, "failed", error=error)
                    raise
                if alerts is not None:
                    alerts.notify(config, p.name, result.outcome, result=result)
                out.append(result)
            return out
    finally:
        store.close()


@contextmanager
def _alerts_sent(alerts: Alerter | None) -> Iterator[None]:
    """A one-shot sync's alerts are sent (up to ``FLUSH_S`` seconds) before it returns,
    also when it raised."""
    try:
        yield
    finally:
        if alerts is not None:
            from syncengine.alerts.sender import FLUSH_S

            alerts.close(FLUSH_S)


def alerts_test(config: Config) -> list[Delivery]:
    """``syncengine alerts test``: a test alert through every channel of ``[alerts]``;
    each channel's result (``UsageError`` when the config has no ``[alerts]``)."""
    if config.alerts is None:
        raise UsageError(
            f"{config.path} has no [alerts] table: there is no channel to test (add "
            'webhook_url = "${ALERT_WEBHOOK_URL}" or email = {...} under [alerts])'
        )
    from syncengine.alerts import send_test

    return send_test(config)


@dataclass(frozen=True)
class PipelineStatus:
    name: str
    members: tuple[str, ...]
    entities: tuple[str, ...]
    last_run: dict[str, Any] | None
    open_conflicts: int
    pending_writes: int
    skipped: list[dict[str, Any]]
    """Writes members could not take (newest first, at most ``SKIPS_SHOWN``)."""
    skipped_total: int
    schedule: str = ""
    next_run: str | None = None
    """ISO time of the next scheduled run (estimated from the schedule and the last run);
    None while paused."""
    lease: dict[str, Any] | None = None
    """``{"holder", "by", "kind", "started_at", "expires_at", "gone"}`` while a run (a manual
    sync or a daemon's) holds the pipeline's lease; ``by`` names it for people, ``gone`` says
    its process of this host no longer runs (killed: the lease waits for its ttl)."""
    paused: dict[str, Any] | None = None
    """``{"reason", "since"}`` while paused (``syncengine resume`` lifts it)."""
    backoff: dict[str, Any] | None = None
    """``{"failures", "until", "last_error"}`` after failed runs."""
    waiting_events: int = 0
    """Webhook events in the inbox that no run of the pipeline took yet."""
    open_review: int = 0
    """Review items waiting for a person (ambiguous matches, possible duplicates)."""
    held_deletes: int = 0
    """Deletes awaiting approval (held by ``[pipelines.deletes] approve``, or stopped by a
    delete guard)."""
    member_entities: dict[str, list[str]] = field(default_factory=dict)
    """member -> the entities it syncs, for the members ``[pipelines.member_entities]``
    limits to some of them."""


SKIPS_SHOWN = 50


def status(config: Config, pipeline: str | None = None) -> list[PipelineStatus]:
    """Each pipeline's status (or only ``pipeline``'s)."""
    chosen = config.pipeline(pipeline)
    store = open_store(config, create=False)
    try:
        out = []
        now = dt.datetime.now(dt.UTC)
        leases, states = store.leases(), store.pipeline_states()
        reviews, held = store.query(queues.review_counts), store.query(queues.held_counts)
        for p in chosen:
            runs = store.runs(p.name, limit=1)
            last = None
            if runs:
                r = runs[0]
                last = {
                    "started_at": r.started_at.isoformat(),
                    "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                    "outcome": r.outcome or "running or interrupted",
                    "counts": r.counts,
                    "errors": r.errors[:10],
                }
            with _days(config, p.name):
                skipped = _skipped(store, p.name)
            out.append(
                PipelineStatus(
                    p.name,
                    p.members,
                    p.entities,
                    last,
                    len(store.open_conflicts(p.name)),
                    len(store.pending_intents(p.name)),
                    skipped,
                    store.skipped_count(p.name),
                    **_daemon_status(config, store, p.name, runs, now, leases, states),
                    waiting_events=store.pending_event_count(p.name, p.members),
                    open_review=reviews.get(p.name, 0),
                    held_deletes=held.get(p.name, 0),
                    member_entities=p.limited(),
                )
            )
        return out
    finally:
        store.close()


def _daemon_status(
    config: Config,
    store: StateStore,
    name: str,
    runs: list[RunRow],
    now: dt.datetime,
    leases: dict[str, Lease],
    states: dict[str, PipelineState],
) -> dict[str, Any]:
    """The scheduling part of a pipeline's status: schedule, next run, lease, pause, backoff."""
    schedule = config.schedule(name)
    state = states.get(name)
    lease = leases.get(name)
    out: dict[str, Any] = {"schedule": schedule.text}
    if lease is not None and not lease.expired(now):
        out["lease"] = {
            "holder": lease.holder,
            "by": lease.describe(now),
            "kind": lease.kind,
            "started_at": lease.acquired_at.isoformat() if lease.acquired_at else None,
            "expires_at": lease.expires_at.isoformat(),
            "gone": lease.gone_from_here(),
        }
    if state is not None and state.paused:
        out["paused"] = {
            "reason": state.paused_reason,
            "since": state.paused_at.isoformat() if state.paused_at else None,
        }
    if state is not None and (state.failures or state.backoff_until):
        out["backoff"] = {
            "failures": state.failures,
            "until": state.backoff_until.isoformat() if state.backoff_until else None,
            "last_error": state.last_error,
        }
    if "paused" not in out:
        started = next((r.started_at for r in runs if not r.dry_run), None)
        when = schedule.next_run(started, now, parse_timezone(config.daemon.timezone))
        if state is not None and state.backoff_until and state.backoff_until > when:
            when = state.backoff_until
        out["next_run"] = when.isoformat()
    return out


def runs(config: Config, pipeline: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Run history, newest first: one dict per run (times in ISO, duration in seconds)."""
    if pipeline is not None:
        config.pipeline(pipeline)  # an unknown name is a usage error, not an empty list
    store = open_store(config, create=False)
    try:
        rows = store.runs(pipeline, limit=limit)
    finally:
        store.close()
    return [
        {
            "id": r.id,
            "run_id": r.run_uuid,
            "pipeline": r.pipeline,
            "dry_run": r.dry_run,
            "started_at": r.started_at.isoformat(),
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "seconds": round((r.finished_at - r.started_at).total_seconds(), 3)
            if r.finished_at
            else None,
            "outcome": r.outcome or "running or interrupted",
            "counts": r.counts,
            "errors": r.errors,
        }
        for r in rows
    ]


def pause(config: Config, pipeline: str | None = None, reason: str = "") -> list[str]:
    """Pause a pipeline (or all) for every daemon on the store until ``resume``; the names
    paused."""
    names = [p.name for p in config.pipeline(pipeline)]
    # a reason is typed by a person, and shown to others: never a secret it was typed with
    reason = redact_text(reason, config.secrets)
    store = open_store(config)
    try:
        with store.transaction() as tx:
            for name in names:
                tx.pause_pipeline(name, reason or "paused by an operator (syncengine pause)")
    finally:
        store.close()
    return names


def resume(config: Config, pipeline: str | None = None) -> list[str]:
    """Lift the pause and the failure backoff of one pipeline (or all); the names lifted."""
    names = [p.name for p in config.pipeline(pipeline)]
    store = open_store(config, create=False)
    try:
        with store.transaction() as tx:
            return [n for n in names if tx.resume_pipeline(n)]
    finally:
        store.close()


def _skipped(store: StateStore, pipeline: str) -> list[dict[str, Any]]:
    rows = store.skipped(pipeline, limit=SKIPS_SHOWN)
    labels: dict[tuple[str, str], str] = {}
    for entity in {r.entity for r in rows}:
        keys = [r.key for r in rows if r.entity == entity]
        for key, state in store.load_records(pipeline, entity, keys).items():
            labels[(entity, key)] = label_of(state.base, key)
    return [
        {
            "entity": r.entity,
            "key": r.key,
            "record": labels.get((r.entity, r.key), r.key),
            "member": r.member,
            "reason": r.reason,
            "first_seen": r.first_seen.isoformat(),
            "last_seen": r.last_seen.isoformat(),
        }
        for r in rows
    ]


def list_conflicts(config: Config, pipeline: str | None = None) -> list[ConflictRow]:
    store = open_store(config, create=False)
    try:
        return store.open_conflicts(pipeline)
    finally:
        store.close()


@dataclass(frozen=True)
class OpenConflict:
    """A parked conflict as people see it: the row, and who it is about."""

    row: ConflictRow
    record: str
    """The record's label (name and e-mail, invoice number, …), else its key."""
    names: dict[str, str]
    """For a reference field: the referred records' keys among the values -> their labels."""


def open_conflicts(config: Config, pipeline: str | None = None) -> list[OpenConflict]:
    """The open conflicts (all pipelines, or one), each with the label of its record taken
    from the record's base in the state store."""
    if pipeline is not None:
        config.pipeline(pipeline)  # an unknown name is a usage error, not an empty list
    store = open_store(config, create=False)
    try:
        rows = store.open_conflicts(pipeline)
        wanted: dict[tuple[str, str], set[str]] = {}
        for row in rows:
            wanted.setdefault((row.pipeline, row.entity), set()).add(row.key)
            spec = ENTITIES.get(row.entity)
            target = spec.refs.get(row.field) if spec is not None else None
            if target is not None:
                values = [*row.values.values(), row.base_value]
                keys = {v for v in values if isinstance(v, str)}
                wanted.setdefault((row.pipeline, target), set()).update(keys)
        labels: dict[tuple[str, str, str], str] = {}
        for (name, entity), keys in wanted.items():
            with _days(config, name):
                for key, state in store.load_records(name, entity, sorted(keys)).items():
                    labels[(name, entity, key)] = label_of(state.base, key)
        out = []
        for row in rows:
            spec = ENTITIES.get(row.entity)
            target = spec.refs.get(row.field) if spec is not None else None
            names = {}
            if target is not None:
                for value in [*row.values.values(), row.base_value]:
                    if isinstance(value, str) and (row.pipeline, target, value) in labels:
                        names[value] = labels[(row.pipeline, target, value)]
            record = labels.get((row.pipeline, row.entity, row.key), row.key)
            out.append(OpenConflict(row, record, names))
        return out
    finally:
        store.close()


_NO_VALUE: Any = object()


def resolve_conflict(
    config: Config, conflict_id: int, take: str | None = None, *, value: Any = _NO_VALUE
) -> ConflictRow:
    """Settle a parked conflict with one member's value (``take``), or with ``value`` typed
    by a person (None clears the field); the next sync writes it everywhere."""
    store = open_store(config, create=False)
    try:
        row = store.get_conflict(conflict_id)
        if row is None or row.status != "open":
            raise UsageError(
                f"no open conflict with id {conflict_id} (see `syncengine conflicts list`)"
            )
        typed = value is not _NO_VALUE
        if typed == (take is not None):
            raise UsageError(
                f"conflict {conflict_id}: give either a member to take the value of, or a value"
            )
        if not typed and take not in row.values:
            raise UsageError(
                f"conflict {conflict_id} has values from "
                f"{', '.join(row.values)}; --take one of those"
            )
        states = store.load_records(row.pipeline, row.entity, [row.key])
        if row.key not in states:
            raise UsageError(
                f"the record of conflict {conflict_id} no longer exists; it was closed"
            )
        base = dict(states[row.key].base)
        chosen = value if typed else row.values[take or ""]
        if chosen is None:
            base.pop(row.field, None)
        else:
            base[row.field] = chosen
        resolution = {"value": chosen, "typed": True} if typed else {"take": take, "value": chosen}
        with store.transaction() as tx:
            tx.put_record(row.pipeline, row.entity, row.key, base)
            tx.set_dirty(row.pipeline, row.entity, row.key, None)
            tx.resolve_conflict(conflict_id, resolution)
        return row
    finally:
        store.close()


def reconcile_report(config: Config, pipeline: str | None = None) -> list[Report]:
    """The reconciliation report of each chosen pipeline that syncs invoices (read-only)."""
    pipelines = [p for p in config.pipeline(pipeline) if pipeline or "invoices" in p.entities]
    if not pipelines:
        raise UsageError(
            "no pipeline syncs invoices: there are no books to reconcile "
            '(add "invoices" and "payments" to a pipeline\'s entities)'
        )
    store = open_store(config, create=False)
    try:
        return [build_report(config, store, p) for p in pipelines]
    finally:
        store.close()


def _books_pipelines(config: Config, pipeline: str | None) -> list[Pipeline]:
    """The chosen pipelines that sync invoices (a UsageError when there is none)."""
    pipelines = [p for p in config.pipeline(pipeline) if pipeline or "invoices" in p.entities]
    if not pipelines:
        raise UsageError(
            "no pipeline syncs invoices: there are no books to reconcile "
            '(add "invoices" and "payments" to a pipeline\'s entities)'
        )
    return pipelines


def tax_report(
    config: Config,
    pipeline: str | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> list[TaxReport]:
    """The tax view (per month and member: taxable and non-taxable sales, tax) of each chosen
    pipeline that syncs invoices, from ``start`` to ``end`` included (read-only)."""
    check_range(start, end)
    pipelines = _books_pipelines(config, pipeline)
    store = open_store(config, create=False)
    try:
        return [build_tax_report(config, store, p, start, end) for p in pipelines]
    finally:
        store.close()


def unbilled_report(config: Config, pipeline: str | None = None) -> list[UnbilledReport]:
    """The complete jobs without an invoice, per member holding jobs, of each chosen pipeline
    that syncs invoices (read-only). Without ``pipeline``, the pipelines with no member holding
    jobs are left out; a UsageError when none is left, or the one named has none."""
    reports, refused = [], None
    for chosen in _books_pipelines(config, pipeline):
        try:
            reports.append(unbilled_jobs(config, chosen))
        except UsageError as exc:
            if pipeline:
                raise
            refused = exc
    if not reports and refused is not None:
        raise refused
    return reports


@dataclass
class ProbeEntity:
    entity: str
    mapping: str
    records: list[dict[str, Any]]
    """Up to ``limit`` records: ``{"id", "location", "native", "canonical", "error"}``."""
    error: str = ""
    read: int = 0
    notes: list[str] = field(default_factory=list)
    """What a sync would make of the storage's structure: mapped columns a sheet lacks."""
    exit_code: int = 0
    """The exit code the read's failure means (``exit_codes``): 2 for a sheet a person must
    fix, 4 for a member that cannot be read now; 0 when it did not fail."""


def probe(
    config: Config,
    connector: str,
    *,
    pipeline: str | None = None,
    entities: Sequence[str] | None = None,
    limit: int = 3,
) -> list[ProbeEntity]:
    """Read the first records of each entity of one connector and map them to canonical
    fields, as a sync would (references are shown as the member holds them). For debugging
    a connector description or a mapping; writes nothing."""
    if connector not in config.connectors:
        raise UsageError(
            f"no connector named {connector!r}; use one of: {', '.join(config.connectors)}"
        )
    chosen = [p for p in config.pipeline(pipeline) if connector in p.members]
    cc = config.connectors[connector]
    conn = config.make_connector(connector)
    try:
        held = conn.entities()
        wanted = (
            list(entities)
            if entities
            else (
                [e for e in chosen[0].entities if e in held and chosen[0].syncs(connector, e)]
                if chosen
                else list(held)
            )
        )
        unknown = [e for e in wanted if e not in held]
        if unknown:
            raise UsageError(
                f"{connector} ({cc.type_name}) does not hold "
                f"{', '.join(unknown)}; it holds {', '.join(held)}"
            )
        out = []
        for entity in wanted:
            if chosen and (connector, entity) in chosen[0].mappings:
                mapping = chosen[0].mappings[(connector, entity)]
            else:
                mapping = load_mapping(cc.type_name, entity, region=config.region)
            result = ProbeEntity(entity, mapping.source, [])
            conn.prepare(entity, mapping)
            try:
                for rec in conn.read(entity):
                    result.read += 1
                    row: dict[str, Any] = {
                        "id": rec.id,
                        "location": rec.location,
                        "native": rec.data,
                        "canonical": None,
                        "error": rec.error,
                    }
                    if not rec.error:
                        try:
                            found = mapping.to_canonical(rec.data, location=rec.location)
                            # every field the mapping reads, an empty one as null: what a
                            # person checking a mapping wants to see
                            row["canonical"] = {
                                f.canonical: found.get(f.canonical)
                                for f in mapping.fields
                                if f.canonical in mapping.readable
                            }
                        except RecordError as exc:
                            row["error"] = str(exc)
                    result.records.append(row)
                    if result.read >= limit:
                        break
                if not result.error:
                    keys = chosen[0].match_keys(entity) if chosen else ()
                    result.notes = _missing_columns(conn.structure(entity), mapping, keys)
            except SyncEngineError as exc:
                result.error = str(exc)
                result.exit_code = failed_run_code(exc)
            out.append(result)
        return out
    finally:
        conn.close()


def _missing_columns(
    found: Structure, mapping: EntityMapping, match_keys: Sequence[str] = ()
) -> list[str]:
    """What a sync does about each mapped column the storage lacks, for ``probe``: one it
    writes is added and filled from the other members; one it only reads is left alone. A
    column records are matched by is added only while no record waits for it
    (``match.hold_blind``), which only a sync can tell."""
    notes = []
    for column in found.missing:
        fields = [f for f in mapping.fields if f.native == column]
        names = ", ".join(f.canonical for f in fields)
        if any(f.canonical in mapping.writable for f in fields):
            what = (
                "a sync adds it at the end of the header and fills it from the other "
                f"members ({names})"
            )
            if any(f.canonical in match_keys for f in fields):
                what += (
                    f", unless rows here wait for it: {mapping.entity.name} are matched by "
                    "it, so rows the sync cannot link yet keep it from being added until a "
                    "person puts it back (`syncengine sync --dry-run` tells)"
                )
        else:
            what = f"{names} is not read from it until it is back (never as a cleared value)"
        notes.append(f"{found.where}: column {column} is missing; {what}")
    return notes


def structure_problems(config: Config) -> list[Problem]:
    """What a sync would refuse in the files and sheets of the members as they are now (a
    duplicated column the sync uses, an id column missing while records are linked to it),
    one problem per pipeline member and entity. Reads the sheets that exist and, when it can
    be opened, the state store's link counts (otherwise only what the sheets show); writes
    nothing. For ``validate``."""
    try:
        store: StateStore | None = open_store(config, create=False)
    except StateError:
        store = None
    problems: list[Problem] = []
    try:
        for p in config.pipelines.values():
            connectors = {m: config.make_connector(m) for m in p.members}
            try:
                for entity in p.entities:
                    try:
                        check_structures(store, p, [entity], connectors)
                    except ConnectorError as exc:
                        where = f"pipelines.{p.name} ({entity})"
                        problem = Problem(where, str(exc))
                        if problem not in problems:
                            problems.append(problem)
            finally:
                for conn in connectors.values():
                    conn.close()
    finally:
        if store is not None:
            store.close()
    return problems


def require_config(path: str | Path, *, strict_env: bool = True) -> Config:
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            [Problem(str(p), "file not found", "pass --config PATH (see config.example.toml)")]
        )
    return load_config(p, strict_env=strict_env)


# -- the review queue, held deletes and the audit log (issue 15) ---------------------------


@dataclass(frozen=True)
class Candidate:
    """A hub record an item's record may be: its key, label and what each member holds."""

    hub_key: str
    label: str
    base: dict[str, Any]
    """The hub's agreed values."""
    members: dict[str, dict[str, Any]]
    """member -> its canonical values as last seen (the members that hold the record)."""
    exists: bool = True
    """False when the record is no longer in the hub (deleted since)."""


def _held_now(last_seen: Mapping[str, Any]) -> dict[str, Any]:
    """A member's last-seen values as what it holds: without the fields it is not known to
    hold any more (``UNSEEN``: a column its sheet lacked), nor the mark."""
    unseen = unseen_in(last_seen)
    return {n: v for n, v in last_seen.items() if n != UNSEEN and n not in unseen}


@dataclass(frozen=True)
class ReviewItem:
    """A record new on a member that the sync left alone: it matches several hub records,
    or looks like a copy of another. A person links it to one, or keeps it separate."""

    id: int
    pipeline: str
    entity: str
    member: str
    native_id: str
    location: str | None
    label: str
    fields: dict[str, Any]
    """The record's canonical values as read."""
    reason: str
    first_seen: str
    last_seen: str
    status: str
    """``open``; ``linked`` or ``separate`` once decided; ``closed`` when the record is gone
    or no longer ambiguous."""
    candidates: list[Candidate]
    hub_key: str | None = None
    """The hub key it was linked to (status ``linked``)."""
    decided_by: str | None = None
    decided_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class HeldDelete:
    """A delete waiting for a person: ``member`` deleted the record, and approving it deletes
    it on ``reach`` too; restoring it gives it back to ``member``. ``guard`` is the delete
    guard's explanation when a guard stopped the batch it belongs to (approve those with
    ``approve_guarded``)."""

    id: int
    pipeline: str
    entity: str
    hub_key: str
    label: str
    member: str
    reach: list[str]
    held_at: str
    guard: str | None
    status: str
    warning: str | None = None
    """On an approval: why the next sync may not carry it out (the record is still
    referred to by other records: it will be given back unless those are deleted too)."""

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class AuditEntry:
    """One action a person took (on the console or the CLI): who, what, when, on what,
    and the state before and after."""

    id: int
    at: str
    actor: str
    action: str
    target: str
    pipeline: str | None
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def record_audit(
    config_or_store: Config | StateStore,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    pipeline: str | None = None,
) -> int:
    """Record one action in the audit log (the console's actions not made through this
    module: a sign-in, a run started). ``before`` and ``after`` are JSON values and must
    hold no secret. The entry's id."""
    if isinstance(config_or_store, StateStore):
        return _audit(config_or_store, actor, action, target, before, after, pipeline)
    store = open_store(config_or_store)
    try:
        return _audit(store, actor, action, target, before, after, pipeline)
    finally:
        store.close()


def _audit(
    store: StateStore,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    pipeline: str | None,
) -> int:
    with store.transaction() as tx:
        return tx.run(
            partial(
                queues.add_audit,
                actor=actor,
                action=action,
                target=target,
                pipeline=pipeline,
                before=before,
                after=after,
            )
        )


def list_audit(config: Config, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
    """The audit log, newest first (``limit`` entries from ``offset``)."""
    if limit < 1 or offset < 0:
        raise UsageError("--limit is 1 or more and --offset 0 or more")
    store = open_store(config, create=False)
    try:
        rows = store.query(partial(queues.audit_rows, limit=limit, offset=offset))
    finally:
        store.close()
    return [
        AuditEntry(
            r.id, r.at.isoformat(), r.actor, r.action, r.target, r.pipeline, r.before, r.after
        )
        for r in rows
    ]


def _candidates(
    store: StateStore, pipeline: str, entity: str, keys: Sequence[str]
) -> list[Candidate]:
    states = store.load_records(pipeline, entity, list(keys)) if keys else {}
    out = []
    for key in keys:
        rs = states.get(key)
        if rs is None:
            out.append(Candidate(key, key, {}, {}, exists=False))
            continue
        held = {
            m: _held_now(ln.last_seen or {})
            for m, ln in rs.links.items()
            if ln.native_id and not ln.tombstone
        }
        base = dict(rs.base)
        out.append(Candidate(key, label_of(base, key), base, held, exists=not base.get("_deleted")))
    return out


def _days(config: Config, pipeline: str) -> AbstractContextManager[None]:
    """Labels made inside show their days as ``pipeline``'s books do (``Config.day_zone``)."""
    found = config.pipelines.get(pipeline)
    return days_in(config.day_zone(found)) if found is not None else nullcontext()


def _item_in(config: Config, store: StateStore, row: queues.ReviewRow) -> ReviewItem:
    with _days(config, row.pipeline):
        return _item(store, row)


def _item(store: StateStore, row: queues.ReviewRow) -> ReviewItem:
    return ReviewItem(
        id=row.id,
        pipeline=row.pipeline,
        entity=row.entity,
        member=row.member,
        native_id=row.native_id,
        location=row.location,
        label=row.label,
        fields=row.fields,
        reason=row.reason,
        first_seen=row.first_seen.isoformat(),
        last_seen=row.last_seen.isoformat(),
        status=row.status,
        candidates=_candidates(store, row.pipeline, row.entity, row.candidates),
        hub_key=row.hub_key,
        decided_by=row.decided_by,
        decided_at=row.decided_at.isoformat() if row.decided_at else None,
    )


def list_review(
    config: Config, pipeline: str | None = None, status: str | None = "open"
) -> list[ReviewItem]:
    """The review queue (all pipelines or one; ``status`` None: every item, decided and
    closed ones too), oldest first, each with its candidates' values side by side."""
    if pipeline is not None:
        config.pipeline(pipeline)
    if status is not None and status not in ("open", "linked", "separate", "closed"):
        raise UsageError(f"--status {status}: use open, linked, separate or closed")
    store = open_store(config, create=False)
    try:
        rows = store.query(partial(queues.review_rows, pipeline=pipeline, status=status))
        return [_item_in(config, store, r) for r in rows]
    finally:
        store.close()


def _open_item(store: StateStore, item_id: int) -> queues.ReviewRow:
    rows = store.query(partial(queues.review_rows, status=None, ids=[item_id]))
    if not rows:
        raise UsageError(f"no review item with id {item_id} (see `syncengine review list`)")
    if rows[0].status != "open":
        raise queues.AlreadyDecided(f"{queues.decided_text(rows[0])}; there is nothing to decide")
    return rows[0]


def _choices(store: StateStore, row: queues.ReviewRow) -> str:
    """An item's candidates, for a message: "KEY (label), ..." or "none"."""
    shown = [
        f"{c.hub_key} ({c.label})" if c.exists else f"{c.hub_key} (deleted since)"
        for c in _candidates(store, row.pipeline, row.entity, row.candidates)
    ]
    return ", ".join(shown) or "none"


def review_link(config: Config, item_id: int, hub_key: str, actor: str) -> ReviewItem:
    """Decide that the item's record is the hub record ``hub_key``: the next sync links it
    there and syncs it as that record (where its member already holds that record, the row
    is a copy: it is left alone and not asked about again). The key must be one of the
    item's candidates, still there; the decision is audited."""
    store = open_store(config, create=False)
    try:
        row = _open_item(store, item_id)
        with _days(config, row.pipeline):
            choices = _choices(store, row)
        if hub_key not in row.candidates:
            raise UsageError(
                f"review item {item_id}: {hub_key!r} is not one of its candidates, the records "
                f"it may be ({choices}); link it to one of those, or keep it separate with "
                f"`syncengine review separate {item_id}`"
            )
        found = store.load_records(row.pipeline, row.entity, [hub_key]).get(hub_key)
        if found is None or found.base.get("_deleted"):
            raise UsageError(
                f"review item {item_id}: no {row.entity} record {hub_key!r} in pipeline "
                f"{row.pipeline}: deleted since (its candidates: {choices})"
            )
        with store.transaction() as tx:
            tx.run(
                partial(
                    queues.decide_review,
                    item_id=item_id,
                    status="linked",
                    hub_key=hub_key,
                    actor=actor,
                )
            )
            tx.run(
                partial(
                    queues.add_audit,
                    actor=actor,
                    action="review.link",
                    target=f"review item {item_id} ({row.entity} {row.label} on {row.member})",
                    pipeline=row.pipeline,
                    before={"status": row.status},
                    after={"status": "linked", "hub_key": hub_key},
                )
            )
        decided = store.query(partial(queues.review_rows, status=None, ids=[item_id]))[0]
        return _item_in(config, store, decided)
    finally:
        store.close()


def review_separate(config: Config, item_id: int, actor: str) -> ReviewItem:
    """Decide that the item's record is a record of its own: the next sync creates it on
    the other members like any new record, and it is never asked about again. Audited."""
    store = open_store(config, create=False)
    try:
        row = _open_item(store, item_id)
        with store.transaction() as tx:
            tx.run(
                partial(
                    queues.decide_review,
                    item_id=item_id,
                    status="separate",
                    hub_key=None,
                    actor=actor,
                )
            )
            tx.run(
                partial(
                    queues.add_audit,
                    actor=actor,
                    action="review.separate",
                    target=f"review item {item_id} ({row.entity} {row.label} on {row.member})",
                    pipeline=row.pipeline,
                    before={"status": row.status},
                    after={"status": "separate"},
                )
            )
        decided = store.query(partial(queues.review_rows, status=None, ids=[item_id]))[0]
        return _item_in(config, store, decided)
    finally:
        store.close()


def _held_delete(row: queues.HeldRow) -> HeldDelete:
    return HeldDelete(
        row.id,
        row.pipeline,
        row.entity,
        row.key,
        row.label,
        row.member,
        row.reach,
        row.held_at.isoformat(),
        row.guard,
        row.status,
    )


def list_held_deletes(config: Config, pipeline: str | None = None) -> list[HeldDelete]:
    """The deletes awaiting approval (all pipelines or one), oldest first."""
    if pipeline is not None:
        config.pipeline(pipeline)
    store = open_store(config, create=False)
    try:
        return [_held_delete(r) for r in store.query(partial(queues.held_rows, pipeline=pipeline))]
    finally:
        store.close()


def _held_by_ids(store: StateStore, ids: Sequence[int], verb: str) -> list[queues.HeldRow]:
    if not ids:
        raise UsageError(f"deletes {verb}: give the id of at least one held delete")
    found = store.query(partial(queues.held_rows, status=None, ids=ids))
    rows = [r for r in found if r.status == "held"]
    unknown = sorted(set(ids) - {r.id for r in found})
    if unknown:
        raise UsageError(
            f"no held delete with id {', '.join(map(str, unknown))} "
            "(see `syncengine deletes list`); nothing was changed"
        )
    decided = [r for r in found if r.status != "held"]
    if decided:
        lines = "; ".join(queues.decided_text(r) for r in decided)
        raise queues.AlreadyDecided(f"{lines}; nothing was changed")
    guarded = [r for r in rows if r.guard is not None]
    if guarded:
        r = guarded[0]
        raise UsageError(
            f"held delete {r.id} belongs to a batch the delete guard stopped ({r.entity} of "
            f"{r.pipeline}): approve the whole batch with `syncengine deletes approve "
            f"--guarded {r.pipeline} {r.entity}`, or put the records back on {r.member}; "
            "nothing was changed"
        )
    return rows


def _referred_by(config: Config, store: StateStore, row: queues.HeldRow) -> str | None:
    """The warning for approving ``row``'s delete when records of other entities still
    refer to the record (a customer's invoices, in the hub or on a member): the sync does
    not delete it but gives it back, unless those are deleted too. None when none does."""
    pipeline = config.pipelines.get(row.pipeline)
    if pipeline is None:
        return None
    counts: list[str] = []
    total = 0
    for other in pipeline.entities:
        names = [n for n, target in ENTITIES[other].refs.items() if target == row.entity]
        if not names or other == row.entity:
            continue
        n = 0
        for rs in store.iter_records(row.pipeline, other):
            held = [
                ln.last_seen
                for ln in rs.links.values()
                if ln.native_id and not ln.tombstone and ln.last_seen
            ]
            if rs.base.get("_deleted") and not held:
                continue
            if any(r.get(name) == row.key for r in (rs.base, *held) for name in names):
                n += 1
        if n:
            counts.append(f"{n} {other.removesuffix('s') if n == 1 else other}")
            total += n
    if not counts:
        return None
    those = "that is" if total == 1 else "those are"
    return (
        f"referred to by {' and '.join(counts)}: it will be given back unless {those} deleted too"
    )


def approve_delete(config: Config, ids: Sequence[int], actor: str) -> list[HeldDelete]:
    """Approve held deletes: the next sync deletes each record on the members it would have
    reached (a record changed on one of them meanwhile is kept: the data wins, as for any
    delete). All or nothing: an unknown id changes nothing. Audited. Each answer's
    ``warning`` says when the record is still referred to by other records (then the sync
    gives it back instead, unless those are deleted too)."""
    return _decide_held(config, ids, actor, "approve")


def restore_delete(config: Config, ids: Sequence[int], actor: str) -> list[HeldDelete]:
    """Restore held deletes: the next sync gives each record back to the member that deleted
    it (created there from the hub's values, and linked again); nothing is deleted anywhere.
    All or nothing: an unknown id changes nothing. Audited."""
    return _decide_held(config, ids, actor, "restore")


def _decide_held(
    config: Config, ids: Sequence[int], actor: str, verb: Literal["approve", "restore"]
) -> list[HeldDelete]:
    """Decide held deletes in one transaction: their status first (only from held, so that a
    decision that came first refuses this one whole), then the hub: the deleting member's
    tombstone link goes and the record is looked at by the next sync; an approval also marks
    the hub record deleted (the hub decides the delete). Audited."""
    status = "approved" if verb == "approve" else "restored"
    store = open_store(config, create=False)
    try:
        rows = _held_by_ids(store, ids, verb)
        warnings = {r.id: _referred_by(config, store, r) for r in rows} if verb == "approve" else {}
        with store.transaction() as tx:
            tx.run(partial(queues.set_held, ids=[r.id for r in rows], status=status, actor=actor))
            for r in rows:
                rs = store.load_records(r.pipeline, r.entity, [r.key]).get(r.key)
                if rs is None:
                    continue
                if verb == "approve":
                    tx.put_record(r.pipeline, r.entity, r.key, {**rs.base, "_deleted": True})
                ln = rs.links.get(r.member)
                if ln is not None and ln.tombstone:
                    tx.delete_link(r.pipeline, r.entity, r.key, r.member)
                tx.set_dirty(r.pipeline, r.entity, r.key)
            for r in rows:
                audit = _held_audit(actor, f"delete.{verb}", r, status)
                tx.run(partial(queues.add_audit, **audit))
        return [
            replace(_held_delete(r), warning=warnings.get(r.id))
            for r in store.query(partial(queues.held_rows, status=None, ids=ids))
        ]
    finally:
        store.close()


def _held_audit(actor: str, action: str, row: queues.HeldRow, status: str) -> dict[str, Any]:
    return {
        "actor": actor,
        "action": action,
        "target": f"held delete {row.id} ({row.entity} {row.label}, deleted on {row.member})",
        "pipeline": row.pipeline,
        "before": {"status": row.status},
        "after": {"status": status, "reach": row.reach},
    }


def approve_guarded(config: Config, pipeline: str, entity: str, actor: str) -> list[HeldDelete]:
    """Approve the batch of deletes a delete guard stopped on ``entity`` of ``pipeline``:
    the next sync lets exactly those records' deletes through the guards (as one
    ``--allow-mass-delete`` run would for them; any other delete is still guarded). Audited."""
    chosen = config.pipeline(pipeline)[0]
    if entity not in chosen.entities:
        raise UsageError(
            f"pipeline {pipeline} does not sync {entity} (it syncs {', '.join(chosen.entities)})"
        )
    store = open_store(config, create=False)
    try:
        rows = store.query(
            partial(queues.held_rows, pipeline=pipeline, entity=entity, status="held", guarded=True)
        )
        if not rows:
            raise UsageError(
                f"no batch of {entity} of {pipeline} is stopped by a delete guard "
                "(see `syncengine deletes list`)"
            )
        with store.transaction() as tx:
            tx.run(
                partial(queues.set_held, ids=[r.id for r in rows], status="approved", actor=actor)
            )
            tx.run(
                partial(
                    queues.add_audit,
                    actor=actor,
                    action="delete.approve_guarded",
                    target=f"{len(rows)} {entity} a delete guard stopped",
                    pipeline=pipeline,
                    before={
                        "status": "held",
                        "guard": rows[0].guard,
                        "keys": [r.key for r in rows],
                    },
                    after={"status": "approved"},
                )
            )
        ids = [r.id for r in rows]
        return [
            _held_delete(r) for r in store.query(partial(queues.held_rows, status=None, ids=ids))
        ]
    finally:
        store.close()
