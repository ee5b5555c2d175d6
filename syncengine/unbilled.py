"""Work done and not billed (``reconcile-report --unbilled``): the complete jobs that no
invoice names.

Only a member that holds jobs can tell (Housecall Pro; the memory connector when given jobs).
Such a member's jobs are read whether or not the pipeline syncs jobs: through the pipeline's
mapping of its jobs when it has one, else the connector's default mapping. Its invoices are
read with the mapping that names their job (the pipeline's, or, where the pipeline does not
sync jobs and so leaves that reference out, the same mapping file with it), and a job is
billed on the member when one of the member's own invoices names it, in any status (a voided
invoice too: voiding it was someone's decision). Jobs and invoices are matched by the
member's own ids, so nothing needs to be synced first.

A job is complete when its status is one of ``COMPLETE`` (the spec's and the live API's
words). It reads, and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncengine.config import Config, Pipeline
from syncengine.connector import Connector
from syncengine.errors import ConfigError, RecordError, UsageError
from syncengine.exit_codes import ExitCode
from syncengine.mapping import EntityMapping, load_mapping
from syncengine.report import Disagreement

COMPLETE = frozenset({"complete", "complete_rated", "complete_unrated", "completed_unrated"})
"""Job statuses that mean the work is done (canonical ``work_status``)."""


@dataclass
class UnbilledJob:
    member: str
    id: str
    location: str
    record: dict[str, Any]
    """The job, canonical (its customer as the member names it)."""

    def to_json(self) -> dict[str, Any]:
        shown = ("description", "work_status", "customer", "scheduled_end", "total_amount")
        return {
            "member": self.member,
            "id": self.id,
            "location": self.location,
            **{name: self.record.get(name) for name in shown},
        }


@dataclass
class UnbilledReport:
    pipeline: str
    holders: tuple[str, ...]
    """The members that hold jobs (the ones asked)."""
    jobs: list[UnbilledJob] = field(default_factory=list)
    complete: dict[str, int] = field(default_factory=dict)
    """member -> how many complete jobs it holds (billed or not)."""
    general: list[Disagreement] = field(default_factory=list)
    """Jobs or invoices that could not be read: the list may miss what they hold."""

    @property
    def exit_code(self) -> ExitCode:
        """A list, not a check: unbilled jobs do not make it fail; unreadable records do
        (exit 1), as the list may then be incomplete."""
        return ExitCode.PROBLEMS if self.general else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "members": list(self.holders),
            "complete": self.complete,
            "unbilled": [job.to_json() for job in self.jobs],
            "general": [d.to_json() for d in self.general],
        }


def unbilled_jobs(config: Config, pipeline: Pipeline) -> UnbilledReport:
    """The complete jobs without an invoice on each member of the pipeline that holds jobs;
    a ``UsageError`` (exit 2) when no member does."""
    found: list[tuple[str, EntityMapping, EntityMapping]] = []
    for member in pipeline.members_of("invoices"):
        mappings = _mappings(config, pipeline, member)
        if mappings is not None:
            found.append((member, *mappings))
    if not found:
        raise UsageError(
            f"pipeline {pipeline.name} has no member that holds jobs: --unbilled needs one "
            "(Housecall Pro) to tell which complete jobs have no invoice"
        )
    report = UnbilledReport(pipeline.name, tuple(m for m, _j, _i in found))
    for member, jobs_mapping, invoices_mapping in found:
        connector = config.make_connector(member)
        try:
            billed = {
                str(record["job"])
                for _id, _where, record in _records(
                    connector, member, "invoices", invoices_mapping, report
                )
                if record.get("job") is not None
            }
            complete = 0
            for job_id, where, record in _records(connector, member, "jobs", jobs_mapping, report):
                if record.get("work_status") not in COMPLETE:
                    continue
                complete += 1
                if job_id not in billed:
                    report.jobs.append(UnbilledJob(member, job_id, where, record))
            report.complete[member] = complete
        finally:
            connector.close()
    return report


def _mappings(
    config: Config, pipeline: Pipeline, member: str
) -> tuple[EntityMapping, EntityMapping] | None:
    """(jobs, invoices) mappings to read a member with, the invoices' naming their job; None
    when the member holds no jobs or its invoices cannot name one."""
    cc = config.connectors[member]
    connector = config.make_connector(member)
    try:
        holds = "jobs" in connector.entities()
    finally:
        connector.close()
    if not holds:
        return None
    zone = getattr(cc.options, "timezone", None)
    zone = zone if isinstance(zone, str) else None
    jobs = pipeline.mappings.get((member, "jobs"))
    invoices = pipeline.mappings.get((member, "invoices"))
    try:
        if jobs is None:
            jobs = load_mapping(cc.type_name, "jobs", timezone=zone, region=config.region)
        if invoices is None or "job" not in invoices.readable:
            override = pipeline.section.mappings.get(member, {}).get("invoices")
            path = None
            if override is not None:
                path = Path(override)
                path = path if path.is_absolute() else config.base_dir / path
            invoices = load_mapping(
                cc.type_name, "invoices", path, timezone=zone, region=config.region
            )
    except (ConfigError, FileNotFoundError):
        return None
    if "work_status" not in jobs.readable or "job" not in invoices.readable:
        return None
    return jobs, invoices


def _records(
    connector: Connector, member: str, entity: str, mapping: EntityMapping, report: UnbilledReport
) -> list[tuple[str, str, dict[str, Any]]]:
    """(native id, location, canonical record) of every readable record of ``entity``; what
    cannot be read goes to ``report.general``. References stay as the member names them."""
    connector.prepare(entity, mapping)
    out = []
    for rec in connector.read(entity):
        where = rec.location or f"{member} {rec.id}"
        if rec.error:
            report.general.append(Disagreement("unreadable", f"{where}: {rec.error}", member))
            continue
        try:
            record = mapping.to_canonical(rec.data, location=rec.location)
        except RecordError as exc:
            report.general.append(Disagreement("unreadable", f"{where}: {exc}", member))
            continue
        out.append((str(rec.id), where, record))
    return out
