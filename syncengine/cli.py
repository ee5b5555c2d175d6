"""The ``syncengine`` command: a thin layer over ``syncengine.api``.

One error handler turns exceptions into a message and an exit code; the codes are the one
table in ``syncengine.exit_codes`` (``ExitCode``), plus 130 for Ctrl-C.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.file_proxy import FileProxy
from rich.markup import escape

from syncengine import __version__
from syncengine.display import entity_changes, local_time
from syncengine.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    FatalConnectorError,
    StateError,
    StateIntegrityError,
    StateUnavailableError,
    StructureError,
    SyncEngineError,
    UnavailableError,
    UsageError,
)
from syncengine.exit_codes import ExitCode
from syncengine.logging import REDACTOR, configure, redact_text
from syncengine.progress import ProgressFn

# The commands import syncengine.api (and with it SQLAlchemy, pydantic, the engine) and what
# else only they need inside their bodies: `--help`, `--version`, `sandbox` and a command's
# own usage errors start without them. tests/test_startup.py keeps it so.
if TYPE_CHECKING:
    from syncengine import api
    from syncengine.config import Config, Pipeline
    from syncengine.connectors.housecallpro.sandbox_webhooks import Webhooks
    from syncengine.daemon import OnceReport

# Ctrl-C: the shell's convention (128 + SIGINT), outside the table of ``ExitCode``.
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="syncengine",
    help=(
        "Keep customers, invoices and payments in step between Housecall Pro, "
        "spreadsheets and CRMs.\n\n"
        "Start with `syncengine demo`, then copy config.example.toml, check it with "
        "`syncengine validate`, preview with `syncengine sync --dry-run` and run "
        "`syncengine sync`.\n\n"
        "Exit codes: 0 ok · 1 record errors, open conflicts or books that do not reconcile "
        "· 2 configuration, usage or structure error (nothing read or written) · 3 stopped "
        "by a safety guard · 4 could not run or complete (a member unreachable or refusing "
        "the credentials, the pipeline busy, the state store unavailable)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help is plain text (click's formatter): no markup to eat a `[section]` in a help
    # string, and no type placeholder after a flag.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)
conflicts_app = typer.Typer(
    help="List and settle conflicts parked for a person.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(conflicts_app, name="conflicts")
alerts_app = typer.Typer(
    help="Alerts ([alerts] in the config): try the channels.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(alerts_app, name="alerts")


class _Masked:
    """``sys.stdout`` or ``sys.stderr`` (looked up at each write, as tests swap them) with
    every secret of the loaded config masked (``REDACTOR``): a record's data may hold one
    (an API key pasted into a customer's company), and the plan, ``--json`` and ``probe``
    print records' data."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _target(self) -> IO[str]:
        stream: IO[str] = getattr(sys, self._name)
        while isinstance(stream, FileProxy):  # a progress bar's: it writes to this console
            stream = stream.rich_proxied_file
        return stream

    def write(self, text: str) -> int:
        if REDACTOR.secrets:
            text = redact_text(text, REDACTOR.secrets)
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self) -> str:
        return str(getattr(self._target(), "encoding", None) or "utf-8")


out = Console(file=_Masked("stdout"), highlight=False, soft_wrap=True)  # type: ignore[arg-type]
err = Console(file=_Masked("stderr"), highlight=False, soft_wrap=True)  # type: ignore[arg-type]

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="SYNCENGINE_CONFIG",
        metavar="FILE",
        help="The config file (TOML). See config.example.toml.",
    ),
]
_LOG_LEVELS = "debug, info, warning or error"
LogLevelOpt = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        metavar="LEVEL",
        help=f"{_LOG_LEVELS}; logs go to stderr (default: the one given before the command, "
        "else warning; the daemon: info).",
        show_default=False,
    ),
]


@dataclass
class _GlobalOptions:
    """What was given before the command (``syncengine --log-level debug sync``)."""

    log_level: str | None = None


_GLOBAL = _GlobalOptions()


def _print_version(value: bool) -> None:
    if value:
        out.print(f"syncengine {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _global_options(
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            metavar="LEVEL",
            help=f"{_LOG_LEVELS}, for every command; logs go to stderr (default: warning; "
            "the daemon: info). A --log-level after the command wins.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version (syncengine X.Y.Z) and exit.",
        ),
    ] = False,
) -> None:
    _GLOBAL.log_level = log_level


def _fail(code: int, lines: list[str]) -> NoReturn:
    for line in lines:
        err.print(escape(redact_text(line, REDACTOR.secrets)))
    raise typer.Exit(code)


@contextmanager
def handled(command: str = "sync", *, reads_only: bool = False) -> Iterator[None]:
    """Turn every expected error into a clear message and its exit code; no tracebacks.

    ``command`` names what failed (``reconcile-report failed: ...``); a command that
    ``reads_only`` says nothing about writes it never makes."""
    try:
        yield
    except typer.Exit:
        raise
    except ConfigError as exc:
        lines = [
            f"configuration error ({len(exc.problems)} problem"
            f"{'s' if len(exc.problems) != 1 else ''}; nothing was read or written):"
        ]
        lines += [f"  {p}" for p in exc.problems]
        _fail(ExitCode.CONFIG, lines)
    except UsageError as exc:
        _fail(ExitCode.CONFIG, [f"usage error: {exc}"])
    except StateUnavailableError as exc:
        _fail(
            ExitCode.UNAVAILABLE,
            [f"{command} could not run: the state store is unavailable: {exc}"],
        )
    except StateIntegrityError as exc:
        _fail(
            ExitCode.UNAVAILABLE,
            [
                f"{command} could not complete: {exc}",
                "nothing of that transaction was written; run the command again. If it "
                "happens again while no other run of the pipeline is going, it is a bug in "
                "syncengine: please report it",
            ],
        )
    except StateError as exc:
        _fail(ExitCode.CONFIG, [f"state store error: {exc}"])
    except UnavailableError as exc:
        _fail(ExitCode.UNAVAILABLE, [f"{command} could not run: {exc}"])
    except StructureError as exc:
        _fail(
            ExitCode.CONFIG,
            [
                f"structure error: {exc}",
                "nothing was read into a plan and nothing was written; fix what it names "
                "and run the command again",
            ],
        )
    except AuthError as exc:
        if reads_only:
            _fail(
                ExitCode.UNAVAILABLE,
                [
                    f"{command} could not read: {exc}; the member refused the "
                    "credentials: check them in the config (api_key, or the auth table of a "
                    "rest connector) and the environment variable they name"
                ],
            )
        _fail(
            ExitCode.UNAVAILABLE,
            [
                f"{command} failed: {exc}",
                "the member refused the credentials: check them in the config (api_key, or "
                "the auth table of a rest connector) and the environment variable they name; "
                "nothing further was written",
            ],
        )
    except ConnectorError as exc:
        # One record's failure is reported on the result; one that reaches here stopped
        # the run: the member could not be read or written at all.
        if reads_only:
            # a member that answers wrongly every time (a base URL without the API) is fixed
            # by a person, not by waiting
            again = (
                "fix that, then run it again"
                if isinstance(exc, FatalConnectorError)
                else "run it again later"
            )
            _fail(
                ExitCode.UNAVAILABLE,
                [f"{command} could not read: {exc}; nothing was written, {again}"],
            )
        _fail(
            ExitCode.UNAVAILABLE,
            [
                f"{command} failed: {exc}",
                "nothing further was written; writes already made are recorded "
                "and the next sync carries on from them",
            ],
        )
    except SyncEngineError as exc:
        _fail(ExitCode.PROBLEMS, [f"error: {exc}"])
    except KeyboardInterrupt:
        _fail(
            EXIT_INTERRUPTED,
            [
                "interrupted"
                if reads_only
                else "interrupted; the next sync resumes from the journal"
            ],
        )
    except Exception:
        text = redact_text(traceback.format_exc(), REDACTOR.secrets)
        err.print(escape(text))
        _fail(
            ExitCode.BUG,
            [
                "internal error: this is a bug in syncengine, please report it "
                "with the traceback above"
            ],
        )


def _setup(
    level: str | None,
    config_secrets: tuple[str, ...] = (),
    *,
    json_output: bool = False,
    default: str = "warning",
) -> None:
    """Configure logging: the command's --log-level, else the global one, else ``default``."""
    level = (level or _GLOBAL.log_level or default).lower()
    if level not in ("debug", "info", "warning", "error"):
        _fail(
            ExitCode.CONFIG,
            [f"usage error: --log-level {level!r}: use debug, info, warning or error"],
        )
    configure(level, secrets=config_secrets, json_output=json_output)


def _progress(*, quiet: bool) -> AbstractContextManager[ProgressFn | None]:
    """The progress bar on stderr (``syncengine.bars``): only on a terminal, and not with
    ``--quiet`` (or ``--json``: a script is reading)."""
    from syncengine.bars import progress_bars

    return progress_bars(err, sys.stderr.isatty() and not quiet)


@app.command(short_help="Sync: read every member, plan, and apply (or only show with -n).")
def sync(
    config: ConfigOpt = Path("config.toml"),
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline", "-p", metavar="NAME", help="Run only this pipeline (default: all)."
        ),
    ] = None,
    entity: Annotated[
        list[str] | None,
        typer.Option(
            "--entity", "-e", metavar="ENTITY", help="Sync only this entity (repeatable)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            "-n",
            help="Show every change per record and field; write nothing, "
            "neither to a member nor to the state store.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List every record, also after a real sync.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bar (it is shown only when stderr is a terminal, never with --json).",
        ),
    ] = False,
    details: Annotated[
        bool | None,
        typer.Option(
            "--details/--no-details",
            help="List every record field by field after the summary, or do not (default: a "
            "dry run lists them when at most 50 records change; a real sync only with "
            "--verbose).",
            show_default=False,
        ),
    ] = None,
    allow_mass_delete: Annotated[
        bool,
        typer.Option(
            "--allow-mass-delete",
            help="Let deletes past [pipelines.deletes] max_fraction "
            "through, and accept a member that returns nothing.",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            help="When another run (a sync, or the daemon) holds a pipeline, wait up to this "
            "long for it (default 0: do not wait); then exit 4 naming that run, having done "
            "nothing.",
            show_default=False,
        ),
    ] = 0.0,
    log_level: LogLevelOpt = None,
) -> None:
    """Sync the pipelines in CONFIG: read every member, plan, and apply (or only show).

    One run per pipeline: a sync holds each pipeline's lease while it runs (a dry run only
    checks that no other run holds it).
    """
    from syncengine import api
    from syncengine.leasing import sigterm_interrupts

    # a dry run only reads: when it cannot, it says so, never "sync failed" or writes made
    command = ("sync --dry-run", True) if dry_run else ("sync", False)
    with handled(command[0], reads_only=command[1]), sigterm_interrupts():
        _setup(log_level)
        cfg = api.require_config(config)
        REDACTOR.add(cfg.secrets)
        with _progress(quiet=quiet or as_json) as progress:
            results = api.sync(
                cfg,
                pipeline=pipeline,
                entities=entity,
                dry_run=dry_run,
                progress=progress,
                allow_mass_delete=allow_mass_delete,
                wait=wait,
                waiting=lambda text: err.print(escape(text)),
            )
        if as_json:
            objs = [r.to_json() for r in results]
            if dry_run:  # what each write would change, field by field (the console's Preview)
                from syncengine.console.preview import changes_json

                for obj, r in zip(objs, results, strict=True):
                    obj["changes"] = changes_json(r)
            for obj in objs:  # the rows a person must fix, also where cron mails stderr
                for ent in obj["entities"].values():
                    for p in ent["problems"]:
                        err.print(
                            escape(f"{p['kind']}: {p['member']} {p['location']}: {p['message']}")
                        )
            out.print_json(json.dumps(objs[0] if len(objs) == 1 else {"pipelines": objs}))
        else:
            for r in results:
                from syncengine.render import render_result

                render_result(out, r, verbose=verbose, details=details)
        code = max((r.exit_code for r in results), default=ExitCode.OK)
        if code:
            raise typer.Exit(code)


@app.command(short_help="Show one connector's first records as read and as mapped.")
def probe(
    config: ConfigOpt = Path("config.toml"),
    connector: Annotated[
        str,
        typer.Option(
            "--connector",
            metavar="NAME",
            help="The connector (a [connectors.NAME] of the config) to probe.",
        ),
    ] = "",
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            "-p",
            metavar="NAME",
            help="Use this pipeline's mappings (default: the first pipeline "
            "the connector is a member of).",
        ),
    ] = None,
    entity: Annotated[
        list[str] | None,
        typer.Option(
            "--entity", "-e", metavar="ENTITY", help="Probe only this entity (repeatable)."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Records shown per entity.", min=1)
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Read the first records of each entity from one connector and show them as read and
    as mapped to canonical fields — the way to debug a connector description or a mapping.
    Reads only (the first page of each entity); writes nothing. Exit 1 when a record cannot
    be read or mapped, 2 when a sheet's structure is wrong, 4 when the member cannot be
    read now (unreachable, refusing the credentials)."""
    from syncengine import api

    with handled("probe", reads_only=True):
        _setup(log_level)
        if not connector:
            raise UsageError("name the connector to probe: --connector NAME")
        cfg = api.require_config(config)
        REDACTOR.add(cfg.secrets)
        results = api.probe(cfg, connector, pipeline=pipeline, entities=entity, limit=limit)
        failed = max((r.exit_code or ExitCode.PROBLEMS for r in results if r.error), default=0) or (
            ExitCode.PROBLEMS if any(x["error"] for r in results for x in r.records) else 0
        )
        if as_json:
            out.print_json(json.dumps([r.__dict__ for r in results], default=str))
        else:
            for r in results:
                out.print(f"[bold]{connector} · {r.entity}[/] (mapping {escape(r.mapping)})")
                if r.error:
                    out.print(f"  [red]read failed[/]: {escape(r.error)}")
                if not r.records and not r.error:
                    out.print("  no records")
                for note in r.notes:
                    out.print(f"  [cyan]note[/]: {escape(note)}")
                for x in r.records:
                    out.print(f"  [bold]{escape(str(x['location'] or x['id']))}[/]")
                    out.print(f"    native:    {escape(json.dumps(x['native'], default=str))}")
                    if x["error"]:
                        out.print(f"    [red]error[/]: {escape(str(x['error']))}")
                    else:
                        shown = {k: v for k, v in (x["canonical"] or {}).items() if v is not None}
                        out.print(f"    canonical: {escape(json.dumps(shown, default=str))}")
        if failed:
            raise typer.Exit(failed)


@app.command(
    "reconcile-report", short_help="Do the books agree? Invoices, payments and balances per member."
)
def reconcile_report(
    config: ConfigOpt = Path("config.toml"),
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            "-p",
            metavar="NAME",
            help="Report on this pipeline (default: every pipeline that syncs invoices).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    all_invoices: Annotated[
        bool, typer.Option("--all", help="List every invoice, not only those with disagreements.")
    ] = False,
    tax: Annotated[
        bool,
        typer.Option(
            "--tax",
            help="Instead: per month (by invoice date), per member, taxable sales, non-taxable "
            "sales and tax, and whether the members agree (exit 1 when not).",
        ),
    ] = False,
    start: Annotated[
        str | None,
        typer.Option("--from", metavar="DATE", help="With --tax: from this day (YYYY-MM-DD)."),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", metavar="DATE", help="With --tax: up to this day, included."),
    ] = None,
    unbilled: Annotated[
        bool,
        typer.Option(
            "--unbilled",
            help="Instead: the complete jobs that have no invoice, per member holding jobs "
            "(Housecall Pro); a list, exit 0 whatever it lists.",
        ),
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Prove the books agree: per invoice, the amount, the succeeded payments and the
    outstanding balance on each member, and every disagreement (a balance that is not amount
    minus payments plus their refunds, a subtotal and tax that do not add up to the amount,
    lines that do not add up to the subtotal, a line whose amount is not quantity × unit price
    rounded half to even, members that differ on a line, a payment or a line on one member and
    not another, an invoice number naming two invoices). Reads every member; writes nothing.
    Exit 1 when anything disagrees, 4 when a member cannot be read.

    --tax gives the sales tax view instead (--from and --to narrow it), --unbilled the
    complete jobs without an invoice (it needs a member holding jobs; both may be given)."""
    from syncengine import api

    with handled("reconcile-report", reads_only=True):
        _setup(log_level)
        if (start or end) and not tax:
            raise UsageError("--from and --to go with --tax (the sales tax view)")
        from syncengine.tax_report import parse_day

        first, last = parse_day("--from", start), parse_day("--to", end)
        cfg = api.require_config(config)
        REDACTOR.add(cfg.secrets)
        if tax or unbilled:
            _books_views(cfg, pipeline, as_json, tax=tax, unbilled=unbilled, span=(first, last))
            return
        reports = api.reconcile_report(cfg, pipeline)
        if as_json:
            objs = [r.to_json() for r in reports]
            out.print_json(json.dumps(objs[0] if len(objs) == 1 else {"pipelines": objs}))
        else:
            from syncengine.render import render_report

            for r in reports:
                render_report(out, r, all_invoices=all_invoices)
        code = max((r.exit_code for r in reports), default=ExitCode.OK)
        if code:
            raise typer.Exit(code)


def _books_views(
    cfg: Config,
    pipeline: str | None,
    as_json: bool,
    *,
    tax: bool,
    unbilled: bool,
    span: tuple[dt.date | None, dt.date | None],
) -> None:
    """``reconcile-report --tax`` and/or ``--unbilled``: print the views and exit with the
    worst of their codes. In JSON, one view's object per pipeline, or both under "tax" and
    "unbilled"."""
    from syncengine import api
    from syncengine.render import render_tax, render_unbilled

    taxes = api.tax_report(cfg, pipeline, *span) if tax else []
    lists = api.unbilled_report(cfg, pipeline) if unbilled else []
    if as_json:
        tax_objs = {r.pipeline: r.to_json() for r in taxes}
        list_objs = {r.pipeline: r.to_json() for r in lists}
        names = list(dict.fromkeys([*tax_objs, *list_objs]))
        objs: list[dict[str, object]] = []
        for name in names:
            if tax and unbilled:
                objs.append(
                    {"pipeline": name, "tax": tax_objs.get(name), "unbilled": list_objs.get(name)}
                )
            else:
                objs.append(tax_objs.get(name) or list_objs[name])
        out.print_json(json.dumps(objs[0] if len(objs) == 1 else {"pipelines": objs}))
    else:
        for t in taxes:
            render_tax(out, t)
        for u in lists:
            render_unbilled(out, u)
    codes = [r.exit_code for r in taxes] + [r.exit_code for r in lists]
    code = max(codes, default=ExitCode.OK)
    if code:
        raise typer.Exit(code)


@app.command(short_help="Check the config, its mappings and the sheets' headers; write nothing.")
def validate(
    config: ConfigOpt = Path("config.toml"),
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print one JSON object: {"ok": true, "connectors": ..., "pipelines": ...}, '
            'or {"ok": false, "problems": [...]} (exit 2).',
        ),
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Check the config and every mapping it uses, and the headers of the sheets that exist
    (a duplicated column the sync uses; an id column gone while the state store holds
    records linked to it); report all problems at once. Writes nothing."""
    from syncengine import api

    with handled("validate", reads_only=True):
        _setup(log_level)
        try:
            cfg = api.require_config(config)
        except ConfigError as exc:
            if as_json:
                problems = [
                    {k: redact_text(v, REDACTOR.secrets) for k, v in asdict(p).items()}
                    for p in exc.problems
                ]
                out.print_json(
                    json.dumps({"config": str(config), "ok": False, "problems": problems})
                )
            raise
        REDACTOR.add(cfg.secrets)
        from syncengine.console.auth import console_problems

        structure = api.structure_problems(cfg) + console_problems(cfg)
        if structure:
            if as_json:
                problems = [
                    {k: redact_text(v, REDACTOR.secrets) for k, v in asdict(p).items()}
                    for p in structure
                ]
                out.print_json(
                    json.dumps({"config": str(config), "ok": False, "problems": problems})
                )
            _fail(
                ExitCode.CONFIG,
                [
                    f"structure error ({len(structure)} problem"
                    f"{'s' if len(structure) != 1 else ''}; nothing was written):",
                    *(f"  {p}" for p in structure),
                ],
            )
        if as_json:
            summary = {
                "config": str(config),
                "ok": True,
                "connectors": {c.name: c.type_name for c in cfg.connectors.values()},
                "pipelines": [
                    {
                        "name": p.name,
                        "members": list(p.members),
                        "entities": list(p.entities),
                        # member -> the entities it syncs (only where it syncs some of them)
                        **_member_entities_json(p),
                        # member -> the first open day (only where a period is closed)
                        **_locks_json(p),
                        # only where deletes wait for a person's approval
                        **({"deletes_approve": True} if p.section.deletes.approve else {}),
                    }
                    for p in cfg.pipelines.values()
                ],
                # what alerts go through, only where [alerts] is set
                **({"alerts": _alerts_json(cfg)} if cfg.alerts is not None else {}),
            }
            out.print_json(json.dumps(summary))
            return
        pipes = ", ".join(
            f"{p.name} ({' + '.join(p.members)}: {', '.join(p.entities)}{_only_text(p.limited())})"
            for p in cfg.pipelines.values()
        )
        out.print(escape(f"{config}: ok — {len(cfg.connectors)} connectors, pipelines: {pipes}"))
        for p in cfg.pipelines.values():
            # a lock date is part of the config people check: a new one changes what is written
            for lock in p.locks.values():
                out.print(escape(f"  {p.name}: {lock.describe()}"))
            if p.section.deletes.approve:
                out.print(
                    escape(
                        f"  {p.name}: deletes wait for approval ([pipelines.deletes] approve; "
                        "syncengine deletes list)"
                    )
                )
        if cfg.alerts is not None:
            a = cfg.alerts
            channels = [n for n, on in (("webhook", a.webhook_url), ("email", a.email)) if on]
            out.print(
                f"  alerts: {', '.join(channels)}; reminders every "
                f"{a.remind_hours:g} h (`syncengine alerts test` tries them)"
            )


def _alerts_json(cfg: Config) -> dict[str, object] | None:
    """What ``[alerts]`` sends through, for `validate` (no URL, server or secret)."""
    if cfg.alerts is None:
        return None
    a = cfg.alerts
    channels = [n for n, on in (("webhook", a.webhook_url), ("email", a.email)) if on]
    return {
        "channels": channels,
        "remind_hours": a.remind_hours,
        "reconcile_after_sync": a.reconcile_after_sync,
    }


def _member_entities_json(p: Pipeline) -> dict[str, dict[str, list[str]]]:
    """``{"member_entities": {member: [entities]}}`` for the members limited to some of the
    pipeline's entities; nothing where every member syncs every entity."""
    limited = p.limited()
    return {"member_entities": limited} if limited else {}


def _only_text(limited: dict[str, list[str]]) -> str:
    """What follows a pipeline's entities for each member limited to some of them: "; crm:
    customers only"."""
    return "".join(f"; {m}: {', '.join(es)} only" for m, es in limited.items())


def _locks_json(pipeline: Pipeline) -> dict[str, dict[str, str]]:
    """``{"locks": {member: first open day}}`` for a pipeline with closed periods, else
    nothing."""
    if not pipeline.locks:
        return {}
    return {"locks": {m: lock.opens.isoformat() for m, lock in pipeline.locks.items()}}


@app.command(short_help="Last run, schedule, open conflicts and skipped writes per pipeline.")
def status(
    config: ConfigOpt = Path("config.toml"),
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline", "-p", metavar="NAME", help="Only this pipeline (default: all)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Show each pipeline's last run, open conflicts, interrupted writes and the writes a
    member could not take (skipped: e.g. Housecall Pro cannot update invoices)."""
    from syncengine import api

    with handled("status", reads_only=True):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        rows = api.status(cfg, pipeline)
        if as_json:
            out.print_json(json.dumps([r.__dict__ for r in rows], default=str))
            return
        for r in rows:
            only = _only_text(r.member_entities)
            out.print(f"[bold]{r.name}[/] ({' + '.join(r.members)}; {', '.join(r.entities)}{only})")
            if r.last_run is None:
                out.print("  never run")
            else:
                lr = r.last_run
                took = _took(lr["started_at"], lr["finished_at"])
                out.print(f"  last run: {local_time(lr['started_at'])}{took} → {lr['outcome']}")
                for ent, counts in (lr["counts"] or {}).items():
                    out.print(f"    {ent}: {escape(entity_changes(counts))}")
                for e in lr["errors"]:
                    out.print(f"    [red]{escape(str(e))}[/]")
            _print_schedule(r)
            out.print(f"  open conflicts: {r.open_conflicts}")
            if r.pending_writes:
                out.print(f"  interrupted writes to settle on the next sync: {r.pending_writes}")
            if r.waiting_events:
                out.print(f"  webhook events waiting for a run: {r.waiting_events}")
            if r.open_review:
                out.print(f"  records to review: {r.open_review} (syncengine review list)")
            if r.held_deletes:
                out.print(
                    f"  deletes awaiting approval: {r.held_deletes} (syncengine deletes list)"
                )
            if r.skipped_total:
                out.print(
                    f"  skipped writes: {r.skipped_total}"
                    + (
                        f" (newest {len(r.skipped)} shown)"
                        if r.skipped_total > len(r.skipped)
                        else ""
                    )
                )
                for sk in r.skipped:
                    out.print(
                        f"    {sk['entity']} · {escape(sk['record'])} on {sk['member']}: "
                        f"{escape(sk['reason'])} (since {local_time(sk['first_seen'])})"
                    )


def _took(started: str, finished: str | None) -> str:
    """`, took 2.1s` for a finished run, else nothing."""
    if finished is None:
        return ""
    took = dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)
    seconds = took.total_seconds()
    return f", took {seconds:.1f}s"


def _print_schedule(r: api.PipelineStatus) -> None:
    if r.paused:
        out.print(
            f"  [red]PAUSED[/] since {local_time(r.paused['since'])}: "
            f"{escape(_shown(str(r.paused['reason'])))}"
        )
        out.print(f"    resume with: syncengine resume -p {r.name}")
    else:
        out.print(f"  schedule: {escape(r.schedule)}; next run: {local_time(r.next_run)}")
    if r.backoff:
        failures = r.backoff["failures"]
        out.print(
            f"  [yellow]backing off[/] after {failures} failed run{'s' if failures != 1 else ''} "
            f"until {local_time(r.backoff['until'])}: {escape(str(r.backoff['last_error']))}"
        )
    if r.lease and r.lease.get("gone"):
        out.print(
            f"  [yellow]left by a run that no longer runs[/]: a {escape(r.lease['by'])} "
            f"(killed?); its lease expires at {local_time(r.lease['expires_at'])}, and the "
            "next sync recovers what it left unfinished"
        )
    elif r.lease:
        out.print(
            f"  running now: a {escape(r.lease['by'])} (its lease holds until "
            f"{local_time(r.lease['expires_at'])})"
        )


@app.command(short_help="Run the pipelines on their schedules until SIGTERM.")
def daemon(
    config: ConfigOpt = Path("config.toml"),
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Run every due pipeline once and exit (for cron); the exit code is "
            "the worst pipeline's.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --once (implied): run every pipeline now, due or not. A paused "
            "pipeline stays paused (`syncengine resume` lifts it); a pipeline another "
            "daemon is running is left to it.",
        ),
    ] = False,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Serve /healthz, /metrics (Prometheus) and the webhook receiver "
            "(POST /webhooks/hcp/CONNECTOR) on HOST:PORT, e.g. 127.0.0.1:9464.",
        ),
    ] = None,
    log_level: LogLevelOpt = None,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format", metavar="FORMAT", help="json (one object per line) or console."
        ),
    ] = "json",
) -> None:
    """Run every pipeline on its schedule ([daemon] and each pipeline's `schedule`) until
    SIGTERM: one runner per pipeline across daemons sharing the state store, backoff after
    failures, a pause when credentials are refused, reload on SIGHUP or a changed config.
    SIGTERM/SIGINT let running syncs commit and exit 0; a second signal exits at once."""
    from syncengine import api

    with handled("daemon"):
        if log_format not in ("json", "console"):
            raise UsageError(f"--log-format {log_format!r}: use json or console")
        _setup(log_level, json_output=log_format == "json", default="info")
        cfg = api.require_config(config)
        REDACTOR.add(cfg.secrets)
        from syncengine import daemon as daemon_mod

        try:
            address = daemon_mod.parse_http_address(http) if http else None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        code = daemon_mod.run(
            cfg, once=once or force, force=force, http=address, report=_print_once
        )
        if code:
            raise typer.Exit(code)


def _print_once(report: OnceReport) -> None:
    """What `daemon --once` did, per pipeline: ran (and how it went), or why not."""
    for entry in report.entries:
        name, attempt = entry.pipeline, entry.attempt
        if attempt is None and entry.paused is not None:
            out.print(f"{name}: [red]paused[/] ({escape(entry.paused)}); not run")
            out.print(f"    resume with: syncengine resume -p {name}")
        elif attempt is None:
            out.print(
                f"{name}: not due; next run {local_time(entry.next_run)} (--force runs it now)"
            )
        elif attempt.outcome == "skipped:paused":
            out.print(f"{name}: [red]paused[/] ({escape(attempt.error)}); not run")
            out.print(f"    resume with: syncengine resume -p {name}")
        elif attempt.outcome == "skipped:backoff":
            out.print(
                f"{name}: backing off after failed runs until {local_time(entry.next_run)}; "
                f"not run (`syncengine resume -p {name}` lifts the backoff)"
            )
        elif attempt.outcome == "skipped:lease_held":
            out.print(f"{name}: another run (a manual sync or a daemon) holds it now; not run")
        elif attempt.outcome.startswith("skipped:"):
            out.print(f"{name}: not run ({attempt.outcome.removeprefix('skipped:')})")
        else:
            out.print(f"{name}: ran → {attempt.outcome} in {attempt.seconds:.1f}s")
            if attempt.result is not None:
                for ent, counts in attempt.result.to_json()["entities"].items():
                    out.print(f"    {ent}: {escape(entity_changes(counts))}")
            if attempt.error:
                out.print(f"    [red]{escape(attempt.error)}[/]")


@app.command(short_help="The run history, newest first.")
def runs(
    config: ConfigOpt = Path("config.toml"),
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline", "-p", metavar="NAME", help="Only this pipeline's runs (default: all)."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", min=1, help="Runs shown, newest first.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """List the run history, newest first: start, duration, outcome, changes, errors."""
    from syncengine import api

    with handled("runs", reads_only=True):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        rows = api.runs(cfg, pipeline, limit)
        if as_json:
            out.print_json(json.dumps(rows))
            return
        if not rows:
            out.print("No runs yet.")
            return
        for r in rows:
            seconds = f"took {r['seconds']:.1f}s" if r["seconds"] is not None else "not finished"
            dry = " (dry run)" if r["dry_run"] else ""
            out.print(
                f"[bold]#{r['id']}[/] {r['pipeline']}{dry} {local_time(r['started_at'])}, "
                f"{seconds} → {r['outcome']}"
            )
            for ent, counts in (r["counts"] or {}).items():
                changed = entity_changes(counts)
                if changed != "no changes":
                    out.print(f"    {ent}: {escape(changed)}")
            for e in r["errors"][:3]:
                out.print(f"    [red]{escape(str(e))}[/]")


@app.command(short_help="Stop daemons from running a pipeline until resume.")
def pause(
    config: ConfigOpt = Path("config.toml"),
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline", "-p", metavar="NAME", help="Pause this pipeline (default: all)."
        ),
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", metavar="TEXT", help="Shown by `syncengine status`.")
    ] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help='Print JSON: {"paused": [pipeline names]}.')
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Stop daemons from running a pipeline (or every pipeline) until `syncengine resume`
    (a run in flight finishes)."""
    from syncengine import api

    with handled("pause"):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        paused = api.pause(cfg, pipeline, reason)
        reason = redact_text(reason, cfg.secrets)  # as the pause keeps it
        _audit_cli(
            cfg, "pause", ", ".join(paused), None, {"paused": True, "reason": reason}, pipeline
        )
        if as_json:
            out.print_json(json.dumps({"paused": paused}))
            return
        again = f"syncengine resume -p {pipeline}" if pipeline else "syncengine resume"
        out.print(escape(f"paused: {', '.join(paused)}; `{again}` lifts it"))


@app.command(short_help="Lift a pause or a failure backoff.")
def resume(
    config: ConfigOpt = Path("config.toml"),
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline", "-p", metavar="NAME", help="Resume this pipeline (default: all)."
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help='Print JSON: {"resumed": [the pipelines paused or backing off]}.'
        ),
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Lift a pause (after refused credentials, or `syncengine pause`) and any failure
    backoff: daemons run the pipeline again at its next scheduled time."""
    from syncengine import api

    with handled("resume"):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        lifted = api.resume(cfg, pipeline)
        if lifted:
            _audit_cli(
                cfg,
                "resume",
                ", ".join(lifted),
                {"paused_or_backing_off": True},
                {"paused": False},
                pipeline,
            )
        if as_json:
            out.print_json(json.dumps({"resumed": lifted}))
            return
        out.print(
            f"resumed: {', '.join(lifted)}"
            if lifted
            else "nothing to resume: no pipeline was paused or backing off"
        )


@conflicts_app.command(
    "list", short_help="The conflicts waiting for a person, with each member's value."
)
def conflicts_list(
    config: ConfigOpt = Path("config.toml"),
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            "-p",
            metavar="NAME",
            help="Only this pipeline's conflicts (default: all).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """List conflicts waiting for a person, with each member's value."""
    from syncengine import api

    with handled("conflicts list", reads_only=True):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        conflicts = api.open_conflicts(cfg, pipeline)
        if as_json:
            out.print_json(
                json.dumps(
                    [
                        {
                            "id": c.id,
                            "pipeline": c.pipeline,
                            "entity": c.entity,
                            "key": c.key,
                            "record": oc.record,
                            "field": c.field,
                            "values": c.values,
                            "base": c.base_value,
                            "created_at": c.created_at.isoformat(),
                        }
                        for oc in conflicts
                        for c in (oc.row,)
                    ]
                )
            )
            return
        if not conflicts:
            out.print("No open conflicts.")
            return
        for oc in conflicts:
            c = oc.row
            width = max(len(m) for m in ("last synced", *c.values)) + 1
            out.print(f"[bold]#{c.id}[/] {c.pipeline} · {c.entity} · [bold]{escape(oc.record)}[/]")
            out.print(f"  field [bold]{c.field}[/], parked {local_time(c.created_at)}")
            for member, value in c.values.items():
                out.print(f"    {member + ':':<{width}} {_conflict_value(oc, value)}")
            # no base value: never agreed, or agreed empty; not a clear someone made
            base = "(no value)" if c.base_value is None else _conflict_value(oc, c.base_value)
            out.print(f"    {'last synced:':<{width}} {base}")
        out.print("Settle one with: syncengine conflicts resolve ID --take MEMBER")


def _conflict_value(conflict: api.OpenConflict, value: object) -> str:
    """A conflicting value for people: a referred record by its label, money as currency,
    nothing as ``(empty)``."""
    from syncengine.render import show_value

    if isinstance(value, str) and value in conflict.names:
        return escape(conflict.names[value])
    return escape(show_value(value, conflict.row.entity, conflict.row.field))


@conflicts_app.command("resolve", short_help="Settle a parked conflict with one member's value.")
def conflicts_resolve(
    conflict_id: Annotated[
        int,
        typer.Argument(
            metavar="ID", help="The conflict's number (see `syncengine conflicts list`)."
        ),
    ],
    take: Annotated[
        str, typer.Option("--take", metavar="MEMBER", help="The member whose value wins.")
    ],
    config: ConfigOpt = Path("config.toml"),
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object: the conflict (id, pipeline, entity, key, field), "
            "the member taken and its value.",
        ),
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Settle a parked conflict with one member's value; the next sync writes it everywhere."""
    from syncengine import api

    with handled("conflicts resolve"):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        row = api.resolve_conflict(cfg, conflict_id, take)
        _audit_cli(
            cfg,
            "conflicts.resolve",
            f"conflict {row.id} ({row.entity} {row.key}, field {row.field})",
            {"values": row.values, "base": row.base_value},
            {"take": take, "value": row.values[take]},
            row.pipeline,
        )
        if as_json:
            settled = {
                "id": row.id,
                "pipeline": row.pipeline,
                "entity": row.entity,
                "key": row.key,
                "field": row.field,
                "taken": take,
                "value": row.values[take],
            }
            out.print_json(json.dumps(settled, default=str))
            return
        from syncengine.render import show_value

        value = show_value(row.values[take], row.entity, row.field)
        out.print(
            f"conflict #{row.id} on {row.field}: {take}'s value "
            f"{escape(value)} taken; run `syncengine sync` to write it"
        )


@alerts_app.command("test", short_help="Send a test alert through every channel.")
def alerts_test(
    config: ConfigOpt = Path("config.toml"),
    as_json: Annotated[
        bool,
        typer.Option("--json", help='Print JSON: {"channels": [{channel, ok, error}]}.'),
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Send a test alert through every channel of [alerts] (the webhook, the e-mail) and
    say how each went. Exit 0 when every channel took it, 4 when one did not (the reason
    is printed), 2 when the config has no [alerts] or is invalid."""
    from syncengine import api

    with handled("alerts test"):
        _setup(log_level)
        cfg = api.require_config(config)
        REDACTOR.add(cfg.secrets)
        results = api.alerts_test(cfg)
        if as_json:
            rows = [{"channel": r.channel, "ok": r.ok, "error": r.error} for r in results]
            out.print_json(json.dumps({"channels": rows}))
        else:
            for r in results:
                if r.ok:
                    out.print(f"{r.channel}: sent")
                else:
                    out.print(f"{r.channel}: [red]failed[/]: {escape(r.error)}")
        if not all(r.ok for r in results):
            raise typer.Exit(ExitCode.UNAVAILABLE)


@app.command(short_help="Run the Housecall Pro sandbox (a local emulator of the HCP API).")
def sandbox(
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", help="Port to listen on (0: any free one).")
    ] = 8765,
    api_key: Annotated[
        str,
        typer.Option(
            "--api-key", envvar="HCP_API_KEY", metavar="KEY", help="The key clients must send."
        ),
    ] = "sandbox-key",
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            metavar="N",
            help="Generate this many customers, most with jobs, invoices and payments.",
        ),
    ] = 0,
    random_seed: Annotated[
        int,
        typer.Option(
            "--random-seed",
            metavar="S",
            help="Vary the generated data (the same value gives the same data).",
        ),
    ] = 0,
    nest_payments: Annotated[
        bool,
        typer.Option(
            "--nest-payments/--no-nest-payments",
            help="Nest each invoice's payments in it, as the live API does.",
        ),
    ] = True,
    live_invoices: Annotated[
        bool,
        typer.Option(
            "--live-invoices",
            help="Send invoices without customer_id and updated_at, as the live API does.",
        ),
    ] = False,
    latency_ms: Annotated[
        int, typer.Option("--latency-ms", metavar="MS", help="Delay per request, in milliseconds.")
    ] = 0,
    error_rate: Annotated[
        float,
        typer.Option("--error-rate", metavar="R", help="Share of requests answered 500 (0..1)."),
    ] = 0.0,
    rate_limit: Annotated[
        float | None,
        typer.Option(
            "--rate-limit", metavar="RPS", help="Requests per second before 429 + Retry-After."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            metavar="FILE",
            help="Load customers, employees, jobs, invoices and payments from this JSON "
            "file (what the demo's hcp-data.json holds) instead of generating them.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Interface to bind.")
    ] = "127.0.0.1",
    webhook_url: Annotated[
        str | None,
        typer.Option(
            "--webhook-url",
            metavar="URL",
            help="POST every change to this URL as an HCP webhook, signed with "
            "--webhook-secret (first an unsigned verification ping, as HCP does).",
        ),
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            "--webhook-secret",
            envvar="HCP_WEBHOOK_SECRET",
            metavar="SECRET",
            help="The signing secret of the webhooks (never printed).",
            show_default=False,
        ),
    ] = None,
    webhook_drop_rate: Annotated[
        float,
        typer.Option(
            "--webhook-drop-rate",
            metavar="F",
            help="Share of webhooks never sent, on purpose (0..1; the same --random-seed "
            "drops the same ones).",
        ),
    ] = 0.0,
    log_level: LogLevelOpt = None,
) -> None:
    """Run the Housecall Pro sandbox: a stateful local emulator of the HCP API. Exit 4 when
    the port is taken."""
    from syncengine.config import MIN_SECRET_LENGTH

    with handled("sandbox", reads_only=True):
        _setup(log_level, (webhook_secret,) if webhook_secret else ())
        if not 0 <= error_rate <= 1:
            raise UsageError("--error-rate must be between 0 and 1")
        webhooks = _sandbox_webhooks(webhook_url, webhook_secret, webhook_drop_rate)
        if len(api_key) < MIN_SECRET_LENGTH:
            # a config refuses a key this short: no config could ever talk to this sandbox
            raise UsageError(
                f"--api-key is {len(api_key)} characters long; a config takes keys of at "
                f"least {MIN_SECRET_LENGTH}, so use a longer one (the default is sandbox-key)"
            )
        from syncengine.connectors.housecallpro.sandbox import serve

        serve(
            host,
            port,
            api_key=api_key,
            seed=seed or None,
            latency_ms=latency_ms,
            error_rate=error_rate,
            rate_limit=rate_limit,
            data_file=str(data) if data else None,
            random_seed=random_seed,
            nest_payments=nest_payments,
            live_invoices=live_invoices,
            webhooks=webhooks,
        )


def _sandbox_webhooks(url: str | None, secret: str | None, drop_rate: float) -> Webhooks | None:
    """The sandbox's webhook settings (``sandbox_webhooks.Webhooks``), or None without
    ``--webhook-url``; a URL without a secret, or a drop rate outside 0..1, is a UsageError."""
    if not 0 <= drop_rate <= 1:
        raise UsageError("--webhook-drop-rate must be between 0 and 1")
    if url is None:
        if drop_rate:
            raise UsageError("--webhook-drop-rate needs --webhook-url")
        return None
    if not secret:
        raise UsageError(
            "--webhook-url needs a signing secret: pass --webhook-secret SECRET or set "
            "HCP_WEBHOOK_SECRET (the secret HCP shows in its Webhooks card)"
        )
    from syncengine.connectors.housecallpro.sandbox_webhooks import Webhooks

    try:
        return Webhooks(url, secret, drop_rate=drop_rate)
    except ConfigError as exc:
        raise UsageError(f"--webhook-url {url!r}: {exc.problems[0].message}") from None


@app.command(short_help="A guided tour: sandbox, spreadsheet, dry run, sync, report.")
def demo(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir", metavar="DIR", help="Where to put the demo's config, spreadsheet and state."
        ),
    ] = Path("syncengine-demo"),
    keep_sandbox: Annotated[
        bool,
        typer.Option(
            "--keep-sandbox",
            help="Keep the sandbox running after the demo, for the commands it suggests, "
            "until Ctrl-C (which saves what it holds to DIR/hcp-data.json).",
        ),
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Set up a sandbox and a spreadsheet, then dry-run, sync and sync again — and explain."""
    with handled("demo"):
        _setup(log_level)
        from syncengine.demo import run_demo

        code = run_demo(directory, out, keep_sandbox=keep_sandbox)
        if code:
            raise typer.Exit(code)


console_app = typer.Typer(
    help="The web console: serve it, and add its users.",
    rich_markup_mode=None,
)
app.add_typer(console_app, name="console")


@console_app.callback(invoke_without_command=True)
def console(
    ctx: typer.Context,
    config: ConfigOpt = Path("config.toml"),
    http: Annotated[
        str,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Where to serve the console (default 127.0.0.1:8600: this machine only; "
            "put a TLS reverse proxy in front to reach it from elsewhere).",
        ),
    ] = "127.0.0.1:8600",
    log_level: LogLevelOpt = None,
) -> None:
    """Serve the web console (no scheduling: `syncengine daemon --http` serves it beside its
    runs). Sign in with a user added by `syncengine console add-user`."""
    from syncengine import api

    if ctx.invoked_subcommand is not None:
        return
    with handled("console", reads_only=True):
        _setup(log_level, default="info")
        cfg = api.require_config(config)
        REDACTOR.add(cfg.secrets)
        from syncengine.console.app import create_app
        from syncengine.console.auth import load_users, users_path
        from syncengine.daemon import parse_http_address

        try:
            address = parse_http_address(http)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        from syncengine.console.auth import console_problems

        problems = console_problems(cfg)  # what `validate` refuses, the console refuses
        if problems:
            raise ConfigError(problems)
        users = users_path(cfg)
        if not load_users(users).users:
            err.print(
                escape(
                    f"note: no console users yet in {users}; add one with "
                    f"`syncengine console add-user NAME -c {config}`"
                )
            )
        from syncengine.console.app import serve

        application = create_app(config)
        serve(
            application,
            address.host,
            address.port,
            announce=lambda url: err.print(escape(f"console listening on {url}")),
        )


@console_app.command("add-user", short_help="Add a console user (or set a new password).")
def console_add_user(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user name to sign in with.")],
    config: ConfigOpt = Path("config.toml"),
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help='Print {"user": NAME, "users_file": PATH, "replaced": BOOL}.'),
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Add NAME to the console's users file ([console] users_file, default
    console-users.toml beside the config, mode 0600) with the argon2 hash of a password
    asked twice (or read from stdin). Only the hash is written."""
    from syncengine import api

    with handled("console add-user", reads_only=True):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = typer.prompt("Password", hide_input=True)
            again = typer.prompt("Password again", hide_input=True)
            if password != again:
                raise UsageError("the two passwords differ; nothing was written")
        from syncengine.console.auth import add_user, check_users_file, load_users, users_path

        check_users_file(cfg)  # never the config itself, nor another file: nothing written
        existed = name in load_users(users_path(cfg)).users
        path = add_user(cfg, name, password)
        # the password is never recorded; only that it was set, and by whom
        _audit_cli(
            cfg,
            "console.add_user",
            f"console user {name}",
            {"existed": existed},
            {"users_file": str(path)},
            None,
        )
        if as_json:
            out.print_json(json.dumps({"user": name, "users_file": str(path), "replaced": existed}))
        elif existed:
            out.print(escape(f"{name}'s password was replaced ({path})"))
        else:
            out.print(escape(f"{name} can sign in to the console ({path})"))


# -- the review queue, held deletes and the audit log (issue 15) ---------------------------

review_app = typer.Typer(
    help="Records left alone for a person: link or keep separate.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(review_app, name="review")
deletes_app = typer.Typer(
    help="Deletes awaiting approval: approve or restore them.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(deletes_app, name="deletes")

PipelineFilterOpt = Annotated[
    str | None,
    typer.Option("--pipeline", "-p", metavar="NAME", help="Only this pipeline (default: all)."),
]


def os_user() -> str:
    """Who the CLI's actions are audited as: the OS user running it."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a bare container)
        import os

        return f"uid {os.getuid()}"


def _audit_cli(
    cfg: Config, action: str, target: str, before: object, after: object, pipeline: str | None
) -> None:
    """Record a CLI action in the audit log, as the OS user."""
    from syncengine import api

    api.record_audit(cfg, os_user(), action, target, before, after, pipeline)


def _show_value(value: object) -> str:
    return "(empty)" if value in (None, "") else escape(str(value))


@review_app.command("list", short_help="The records waiting for a person's review.")
def review_list(
    config: ConfigOpt = Path("config.toml"),
    pipeline: PipelineFilterOpt = None,
    status: Annotated[
        str,
        typer.Option(
            "--status",
            metavar="STATUS",
            help="open (default), linked, separate, closed, or all.",
        ),
    ] = "open",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list of items).")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """List the review queue: each record the sync left alone, why, and the records it may
    be (its candidates), field by field."""
    from syncengine import api

    with handled("review list", reads_only=True):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        items = api.list_review(cfg, pipeline, None if status == "all" else status)
        if as_json:
            out.print_json(json.dumps([i.to_json() for i in items]))
            return
        if not items:
            out.print("Nothing to review." if status == "open" else f"No {status} items.")
            return
        for item in items:
            where = item.location or item.native_id
            out.print(
                f"[bold]#{item.id}[/] {item.pipeline} · {item.entity} · "
                f"[bold]{escape(item.label)}[/] on {item.member} ({escape(where)}) · {item.status}"
            )
            out.print(f"  {escape(item.reason)}")
            out.print(
                f"  first seen {local_time(item.first_seen)}, last {local_time(item.last_seen)}"
            )
            shown = [k for k, v in item.fields.items() if v not in (None, "") and k != "updated_at"]
            for c in item.candidates:
                gone = "" if c.exists else " (no longer there)"
                out.print(f"  candidate [bold]{c.hub_key}[/]: {escape(c.label)}{gone}")
                if shown:
                    out.print(f"      [dim]field: this record on {item.member} | the candidate[/]")
                for name in shown:
                    mine = _show_value(item.fields.get(name))
                    theirs = _show_value(c.base.get(name))
                    mark = "" if mine == theirs else "  ≠"
                    out.print(f"      {name}: {mine} | {theirs}{mark}")
        out.print(
            "Decide with: syncengine review link ID --to HUBKEY, or syncengine review separate ID"
        )


@review_app.command("link", short_help="Link a record to one of its candidates.")
def review_link(
    item_id: Annotated[int, typer.Argument(metavar="ID", help="The item's number.")],
    to: Annotated[str, typer.Option("--to", metavar="HUBKEY", help="The candidate's hub key.")],
    config: ConfigOpt = Path("config.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the item as JSON.")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Link the item's record to the hub record HUBKEY: the next sync syncs it as that
    record. Audited as the OS user."""
    from syncengine import api

    with handled("review link"):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        item = api.review_link(cfg, item_id, to, os_user())
        if as_json:
            out.print_json(json.dumps(item.to_json()))
            return
        out.print(escape(f"#{item.id} {item.label}: linked to {to}; the next sync acts on it"))


@review_app.command("separate", short_help="Keep a record as a record of its own.")
def review_separate(
    item_id: Annotated[int, typer.Argument(metavar="ID", help="The item's number.")],
    config: ConfigOpt = Path("config.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the item as JSON.")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Keep the item's record separate: the next sync creates it on the other members like
    any new record, and it is never asked about again. Audited as the OS user."""
    from syncengine import api

    with handled("review separate"):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        item = api.review_separate(cfg, item_id, os_user())
        if as_json:
            out.print_json(json.dumps(item.to_json()))
            return
        out.print(escape(f"#{item.id} {item.label}: kept separate; the next sync creates it"))


@deletes_app.command("list", short_help="The deletes awaiting approval.")
def deletes_list(
    config: ConfigOpt = Path("config.toml"),
    pipeline: PipelineFilterOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list).")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """List the deletes awaiting approval: the record, the member that deleted it, the
    members the delete would reach and, for a batch a guard stopped, why."""
    from syncengine import api

    with handled("deletes list", reads_only=True):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        held = api.list_held_deletes(cfg, pipeline)
        if as_json:
            out.print_json(json.dumps([h.to_json() for h in held]))
            return
        if not held:
            out.print("No deletes awaiting approval.")
            return
        guards: dict[tuple[str, str], str] = {}
        for h in held:
            out.print(
                f"[bold]#{h.id}[/] {h.pipeline} · {h.entity} · [bold]{escape(h.label)}[/]: "
                f"deleted on {h.member}, would be deleted on {', '.join(h.reach) or 'nothing'} "
                f"(held {local_time(h.held_at)})"
            )
            if h.guard:
                guards[(h.pipeline, h.entity)] = h.guard
        for (name, entity), why in guards.items():
            out.print(escape(f"{name} · {entity}: a delete guard stopped these: {why}"))
            out.print(f"  approve that batch: syncengine deletes approve --guarded {name} {entity}")
        out.print(
            "Decide with: syncengine deletes approve ID... or syncengine deletes restore ID..."
        )


_MORE_IDS = {"allow_extra_args": True}
"""``deletes approve|restore ID...``: the first id is the argument, the others come as extra
arguments (a list argument would show a type placeholder in the help)."""


def _ids(first: int | None, ctx: typer.Context) -> list[int]:
    """The ids given: ``first`` and the extra arguments (each a number)."""
    out = [] if first is None else [first]
    for extra in ctx.args:
        if not extra.isdigit():
            raise UsageError(f"{extra!r} is not the number of a held delete")
        out.append(int(extra))
    return out


@deletes_app.command(
    "approve", short_help="Approve held deletes (or a guard's batch).", context_settings=_MORE_IDS
)
def deletes_approve(
    ctx: typer.Context,
    first: Annotated[
        int | None,
        typer.Argument(metavar="ID...", help="The held deletes' numbers.", show_default=False),
    ] = None,
    guarded: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--guarded",
            metavar="PIPELINE ENTITY",
            help="Approve the batch a delete guard stopped on ENTITY of PIPELINE.",
        ),
    ] = None,
    config: ConfigOpt = Path("config.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the approved).")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Approve held deletes: the next sync deletes each record on the members it would have
    reached. With --guarded, approve exactly the records a delete guard stopped (as one
    --allow-mass-delete run for them). Audited as the OS user."""
    from syncengine import api

    with handled("deletes approve"):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        ids = _ids(first, ctx)
        if bool(ids) == (guarded is not None):
            raise UsageError("give the ids of held deletes, or --guarded PIPELINE ENTITY")
        if guarded is not None:
            done = api.approve_guarded(cfg, guarded[0], guarded[1], os_user())
        else:
            done = api.approve_delete(cfg, ids, os_user())
        if as_json:
            out.print_json(json.dumps([h.to_json() for h in done]))
            return
        for h in done:
            if h.warning:
                out.print(escape(f"#{h.id} {h.label}: approved, but {h.warning}"))
            else:
                out.print(escape(f"#{h.id} {h.label}: approved; the next sync deletes it"))


@deletes_app.command(
    "restore", short_help="Give held deletes back to the member.", context_settings=_MORE_IDS
)
def deletes_restore(
    ctx: typer.Context,
    first: Annotated[int, typer.Argument(metavar="ID...", help="The held deletes' numbers.")],
    config: ConfigOpt = Path("config.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the restored).")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Restore held deletes: the next sync gives each record back to the member that
    deleted it, and deletes nothing. Audited as the OS user."""
    from syncengine import api

    with handled("deletes restore"):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        done = api.restore_delete(cfg, _ids(first, ctx), os_user())
        if as_json:
            out.print_json(json.dumps([h.to_json() for h in done]))
            return
        for h in done:
            out.print(
                escape(f"#{h.id} {h.label}: restored; the next sync gives it back to {h.member}")
            )


@app.command(short_help="Who did what: the audit log, newest first.")
def audit(
    config: ConfigOpt = Path("config.toml"),
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="Entries shown.")] = 100,
    offset: Annotated[int, typer.Option("--offset", metavar="N", help="Skip the newest N.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list).")] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """The audit log: every action taken on the console or with the CLI (who, what, when,
    before and after), newest first."""
    from syncengine import api

    with handled("audit", reads_only=True):
        _setup(log_level)
        cfg = api.require_config(config, strict_env=False)
        entries = api.list_audit(cfg, limit, offset)
        if as_json:
            out.print_json(json.dumps([e.to_json() for e in entries]))
            return
        if not entries:
            out.print("Nothing audited yet.")
            return
        for e in entries:
            # what was recorded is shown, never obeyed: control characters (a terminal's
            # escape codes, a line break forging an entry) are printed escaped
            where = f" ({_shown(e.pipeline)})" if e.pipeline else ""
            line = f"{local_time(e.at)} {_shown(e.actor)}: {_shown(e.action)} {_shown(e.target)}"
            out.print(escape(line + where))
            out.print(escape(f"    before {json.dumps(e.before)} → after {json.dumps(e.after)}"))


def _shown(text: str) -> str:
    """``text`` with every character that is not printable written as its escape
    (``\\x1b``, ``\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def main() -> None:
    app()


def entry() -> NoReturn:
    """The ``syncengine`` console script: run the command (``main``), then end the process
    without the interpreter's teardown once everything that should outlive a command is done.

    A one-shot ``sync`` of many records leaves many objects alive; freeing them one by one at
    exit takes a noticeable part of the run (0.2-0.3 s at 10,000 customers), and nothing
    needs it: the state store is closed by the command itself, every file a command writes is
    closed before it returns, the output is flushed here, and the exit handlers (``logging``'s
    own, ``weakref.finalize`` clean-ups) still run. While a thread that is not a daemon still
    runs (none does after a command returns, but a plugin could start one), or when the
    output cannot be flushed (a closed pipe), the interpreter ends the usual way."""
    try:
        main()
        status: object = 0
    except SystemExit as exc:
        status = exc.code
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        raise SystemExit(status)
    code = _exit_code(status)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: let the interpreter report it as it does
        raise SystemExit(status) from None
    os._exit(code)


def _exit_code(status: object) -> int:
    """The process's exit code for ``SystemExit(status)``, as the interpreter makes it: None
    is 0, a number is itself, anything else is printed on stderr and is 1."""
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)
    return 1


if __name__ == "__main__":
    entry()
