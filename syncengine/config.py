"""Loading and validating ``config.toml``: every problem is found and reported at once.

Validation never mutates the parsed input and never reads or writes a member. Secrets come
from the environment through ``${VAR}`` references; their values are collected so that the
logging layer and error messages can redact them.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import tomllib
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import phonenumbers
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from syncengine import model
from syncengine.connector import Connector, ConnectorContext, ConnectorOptions, connector_class
from syncengine.display import with_article
from syncengine.errors import ConfigError, Problem
from syncengine.locks import Lock
from syncengine.mapping import EntityMapping, default_mapping_path, load_mapping
from syncengine.numbers import BOOL_NOT_NUMBER, Float, Int
from syncengine.redact import MASK
from syncengine.schedule import Schedule, parse_schedule, parse_timezone

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONFIG_PROBLEM = "config_problem"
_REGION_ALIASES = {"UK": "GB", "EN": "GB", "USA": "US", "CAN": "CA", "AUS": "AU"}
"""Region names people write that are not ISO 3166 codes, and the code they mean."""
_SECRET_KEY = re.compile(r"(key|token|secret|password|passwd|credential)", re.IGNORECASE)
CONFLICT_RULE_WORDS = ("newest", "manual")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _config_problem(message: str, fix: str) -> PydanticCustomError:
    """A validation error reported as ``message`` and ``fix`` exactly (the value is not
    repeated after it, so that a URL's password is never shown)."""
    return PydanticCustomError(_CONFIG_PROBLEM, "{message}", {"message": message, "fix": fix})


class StateSection(_Strict):
    url: str = "sqlite:///syncengine-state.db"
    journal_retention_days: Int = Field(default=30, ge=1)

    @field_validator("url")
    @classmethod
    def _url_ok(cls, value: str) -> str:
        # SQLAlchemy, only when checking
        from syncengine.state.store import POSTGRES_EXTRA, in_memory, mask_url, url_problem

        problem = url_problem(value)
        if problem is None and in_memory(value):
            # the links, the journal and the lease would last one command: every run would
            # start from nothing, and two syncs at once could not see each other (masked,
            # with the colons of ':memory:' put back)
            shown = mask_url(value).replace("%3A", ":")
            problem = (
                f"state store URL {shown!r} keeps the state in memory, gone when "
                "the command ends: every run would start without what the last one linked, "
                "and two syncs at once would not see each other's lease (both could create "
                "the same new record)"
            )
        if problem is not None:
            raise _config_problem(
                problem,
                POSTGRES_EXTRA
                if POSTGRES_EXTRA in problem
                else 'use "sqlite:///PATH" (a file beside the config) or '
                '"postgresql+psycopg://USER@HOST/DBNAME"',
            )
        return value


class DeletesSection(_Strict):
    propagate: bool = True
    """True: a record deleted on one member is deleted on the others. False: the others keep it
    and the member that deleted it is not given it again."""
    max_fraction: Float = Field(default=0.2, ge=0.0, le=1.0)
    """Abort an entity when more than this share of a member's linked records would be deleted."""
    min_count: Int = Field(default=5, ge=0)
    """Deleting fewer records than this never trips the max_fraction guard (small data sets)."""
    approve: bool = False
    """True: a record deleted on one member is held for a person's approval (``syncengine
    deletes list|approve|restore``, the console) instead of being deleted on the others."""


class DaemonSection(_Strict):
    """``[daemon]``: how ``syncengine daemon`` schedules, leases and backs off (seconds)."""

    schedule: str = "every 15m"
    """The schedule of pipelines that give none of their own."""
    timezone: str = "UTC"
    """The time zone of cron schedules (an IANA name)."""
    max_concurrent: Int = Field(default=4, ge=1, le=64)
    """Pipelines synced at the same time by one daemon."""
    lease_ttl: Float = Field(default=60.0, ge=0.5, le=3600)
    """A running pipeline's lease lasts this long and is renewed every third of it; a crashed
    daemon's pipelines are taken over by another daemon once it expires."""
    shutdown_grace: Float = Field(default=30.0, ge=0, le=3600)
    """On SIGTERM, running syncs get this long to finish their batch and commit."""
    misfire_grace: Int = Field(default=60, ge=1)
    """A run that could not start on time still starts if no later than this."""
    backoff_initial: Float = Field(default=30.0, gt=0)
    """After a failed run the pipeline waits this long, doubling with each failure ..."""
    backoff_max: Float = Field(default=3600.0, gt=0)
    """... up to this (and never less than its schedule)."""
    history_days: Float = Field(default=90.0, gt=0)
    """Run history older than this is pruned (the newest run of each pipeline is kept)."""
    reload_poll: Float = Field(default=5.0, ge=0)
    """How often the config file and mapping files are checked for changes (0: only SIGHUP)."""
    webhook_debounce: Float = Field(default=2.0, ge=0, le=3600)
    """An event-driven run starts this long after the first webhook event that makes it due:
    the events that arrive meanwhile go into the same run."""

    @field_validator("schedule")
    @classmethod
    def _schedule_ok(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone_ok(cls, value: str) -> str:
        parse_timezone(value)
        return value

    @model_validator(mode="after")
    def _backoff_ok(self) -> DaemonSection:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) is less than backoff_initial "
                f"({self.backoff_initial})"
            )
        return self


def _lock_day(value: Any) -> dt.date:
    """A lock date as written: a TOML date (``books = 2026-10-01``) or ISO text
    (``books = "2026-10-01"``) naming a real day; nothing else (no time, no number)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    fix = (
        'write the first open day as "YYYY-MM-DD", e.g. "2026-10-01" '
        "(records dated before it are closed)"
    )
    if isinstance(value, str) and re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", value):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise _config_problem(f"{value!r} is not a real date", fix) from None
    raise _config_problem(f"{value!r} is not a date", fix)


LockDay = Annotated[dt.date, BeforeValidator(_lock_day)]


class ConsoleSection(_Strict):
    """``[console]``: the web console (``syncengine console``, ``syncengine daemon --http``)."""

    users_file: str = "console-users.toml"
    """Where ``syncengine console add-user`` keeps the users and their password hashes
    (relative: beside the config). Written with mode 0600."""
    secret_key: str = ""
    """Signs the session cookies (at least 32 characters; take it from the environment:
    ``"${CONSOLE_SECRET_KEY}"``). Empty: one is generated and kept in the users file."""
    trust_forwarded_proto: bool = False
    """Believe a reverse proxy's ``X-Forwarded-Proto: https`` (the session cookie is then
    marked Secure). Only set it when the console is reachable through that proxy alone."""
    session_hours: Float = Field(default=12.0, gt=0, le=24 * 30)
    """A session ends this long after signing in."""

    @field_validator("secret_key")
    @classmethod
    def _secret_key_ok(cls, value: str) -> str:
        if value and not value.startswith("${") and len(value) < 32:
            raise _config_problem(
                f"secret_key is {len(value)} characters long; it must have at least 32",
                'generate one (python -c "import secrets; print(secrets.token_urlsafe(32))") '
                'and pass it from the environment: secret_key = "${CONSOLE_SECRET_KEY}", '
                "or leave it out to have one kept in the users file",
            )
        return value


class EmailSection(_Strict):
    """``[alerts] email = {...}``: alerts sent by e-mail through an SMTP server (smtplib)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: str = Field(min_length=1)
    port: Int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    """Upgrade the connection with STARTTLS before logging in (port 587); false: plain SMTP
    (port 25, or a relay on the same host)."""
    ssl: bool = False
    """Connect with TLS from the start (port 465) instead of STARTTLS."""
    username: str | None = None
    password: SecretStr | None = None
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    timeout: Float = Field(default=10.0, gt=0, le=120)

    @field_validator("from_")
    @classmethod
    def _from_ok(cls, value: str) -> str:
        if "@" not in value:
            raise _config_problem(
                f"{value!r} is not an e-mail address", 'write it as "syncengine@example.com"'
            )
        return value

    @field_validator("to")
    @classmethod
    def _to_ok(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if "@" not in v or not v.strip()]
        if bad:
            raise _config_problem(
                f"{', '.join(repr(b) for b in bad)} {'is' if len(bad) == 1 else 'are'} not an "
                "e-mail address",
                'list addresses: to = ["office@example.com"]',
            )
        return [v.strip() for v in value]

    @model_validator(mode="after")
    def _login_ok(self) -> EmailSection:
        if (self.username is None) != (self.password is None):
            raise _config_problem(
                "give both username and password, or neither",
                'add the one missing: password = "${SMTP_PASSWORD}"',
            )
        if self.ssl and self.starttls:
            raise _config_problem(
                "ssl and starttls are both on",
                "use ssl = true for port 465, or starttls = true (the default) for port 587",
            )
        return self


class AlertsSection(_Strict):
    """``[alerts]``: who is told when a pipeline needs a person (``syncengine.alerts``)."""

    webhook_url: SecretStr | None = None
    """POSTed JSON ``{"text", "event", "pipeline", "severity", "details"}`` (Slack and Teams
    incoming webhooks take it as it is). A secret: masked everywhere."""
    email: EmailSection | None = None
    remind_hours: Float = Field(default=24.0, gt=0, le=24 * 365)
    """An alert still open after this long is sent again, once per period."""
    reconcile_after_sync: bool = False
    """After each sync of accounting entities, run the reconcile report and alert on new
    disagreements (``books_disagree``)."""
    retries: Int = Field(default=4, ge=0, le=20)
    """Attempts after the first, per alert and channel, with a backoff that doubles."""
    retry_initial: Float = Field(default=2.0, gt=0, le=600)
    """Seconds before the first retry."""

    @field_validator("webhook_url")
    @classmethod
    def _webhook_ok(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value().strip()
        if text.startswith("${"):
            return value  # an unset variable: reported once, as such
        if not re.fullmatch(r"https?://[^\s/]+\S*", text):
            raise _config_problem(
                "is not an http:// or https:// URL (its value is not shown: it is a secret)",
                "paste the whole incoming-webhook URL, or take it from the environment: "
                'webhook_url = "${ALERT_WEBHOOK_URL}"',
            )
        return SecretStr(text)

    @model_validator(mode="after")
    def _a_channel(self) -> AlertsSection:
        if self.webhook_url is None and self.email is None:
            raise _config_problem(
                "no channel: alerts would go nowhere",
                'add webhook_url = "${ALERT_WEBHOOK_URL}" or email = { host = ..., from = ..., '
                "to = [...] }, or remove the [alerts] table",
            )
        return self


class PipelineSection(_Strict):
    name: str
    members: list[str] = Field(min_length=2)
    entities: list[str] = Field(default_factory=lambda: ["customers"], min_length=1)
    schedule: str | None = None
    conflicts: dict[str, list[str]] = Field(default_factory=lambda: {"default": ["manual"]})
    deletes: DeletesSection = Field(default_factory=DeletesSection)
    match: dict[str, list[str]] = Field(default_factory=dict)
    """Per entity, the canonical fields that link a new record to an existing one, in order."""
    mappings: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Per member, per entity: a mapping file that replaces the connector's default mapping."""
    batch_size: Int | None = Field(default=None, ge=1, le=5000)
    """Keys per journal batch and state transaction; unset, ``apply.BATCH_SIZE`` (and
    ``apply.BUFFERED_BATCH_SIZE`` for keys written only to buffered members)."""
    locks: dict[str, LockDay] = Field(default_factory=dict)
    """Per member, the first open day: no write to that member creates, changes or deletes a
    record dated before it (``syncengine.locks``)."""
    member_entities: dict[str, list[str]] = Field(default_factory=dict)
    """Per member, the entities of the pipeline it syncs (a CRM of customers beside HCP and
    the books); a member not named syncs every entity of the pipeline."""

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("use letters, digits, '-', '_' or '.' (it names state and runs)")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_ok(cls, value: str | None) -> str | None:
        if value is not None:
            parse_schedule(value)
        return value


class ConfigFile(_Strict):
    """The top level. Connector tables and pipelines are validated one by one afterwards
    (by each connector's options model and ``PipelineSection``), so that a mistake in one
    never hides a mistake in another."""

    state: StateSection = Field(default_factory=StateSection)
    daemon: DaemonSection = Field(default_factory=DaemonSection)
    alerts: AlertsSection | None = None
    console: ConsoleSection = Field(default_factory=ConsoleSection)
    region: str = "US"
    """Default region for phone numbers written without a country code."""
    connectors: dict[str, Any]
    pipelines: list[Any] = Field(min_length=1)

    @field_validator("region")
    @classmethod
    def _region_ok(cls, value: str) -> str:
        code = value.strip().upper()
        if code not in phonenumbers.SUPPORTED_REGIONS:
            known = sorted(phonenumbers.SUPPORTED_REGIONS)
            close = _REGION_ALIASES.get(code) or " or ".join(
                difflib.get_close_matches(code, known, n=3)
            )
            hint = f"did you mean {close}? " if close else ""
            raise _config_problem(
                f"unknown region {value!r} (the default region of phone numbers)",
                f'{hint}use a two-letter ISO 3166 country code, e.g. region = "US" or "GB"',
            )
        return code


@dataclass(frozen=True)
class ConnectorConfig:
    name: str
    type_name: str
    cls: type[Connector]
    options: ConnectorOptions


@dataclass(frozen=True)
class Pipeline:
    name: str
    members: tuple[str, ...]
    entities: tuple[str, ...]
    section: PipelineSection
    mappings: dict[tuple[str, str], EntityMapping]
    """(member, entity) -> mapping in force for this pipeline."""
    locks: dict[str, Lock] = field(default_factory=dict)
    """member -> its closed period (``[pipelines.locks]``)."""
    by_entity: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """entity -> the members that sync it (``member_entities``), in the members' order."""

    def members_of(self, entity: str) -> tuple[str, ...]:
        """The members that sync ``entity``: every member, unless ``member_entities`` limits
        some of them to other entities (a CRM that holds customers only). Everything about
        one entity (its reads, plans, state, reports) involves these members alone."""
        return self.by_entity.get(entity, self.members)

    def syncs(self, member: str, entity: str) -> bool:
        """Whether ``member`` syncs ``entity`` in this pipeline."""
        return member in self.members_of(entity)

    def limited(self) -> dict[str, list[str]]:
        """member -> the entities it syncs, for the members limited to some of them."""
        return {
            m: [e for e in self.entities if self.syncs(m, e)]
            for m in self.members
            if any(not self.syncs(m, e) for e in self.entities)
        }

    def conflict_rules(self, entity: str, field_name: str) -> list[str]:
        rules = self.section.conflicts
        for key in (f"{entity}.{field_name}", entity, "default"):
            if key in rules:
                return rules[key]
        return ["manual"]

    def match_keys(self, entity: str) -> tuple[str, ...]:
        if entity in self.section.match:
            return tuple(self.section.match[entity])
        for member in self.members:
            mapping = self.mappings.get((member, entity))
            if mapping is not None and mapping.match_keys != model.entity_spec(entity).match_keys:
                return mapping.match_keys
        return model.entity_spec(entity).match_keys


@dataclass(frozen=True)
class Config:
    path: Path
    base_dir: Path
    state_url: str
    journal_retention_days: int
    region: str
    connectors: dict[str, ConnectorConfig]
    pipelines: dict[str, Pipeline]
    secrets: tuple[str, ...] = field(default=(), repr=False)
    daemon: DaemonSection = field(default_factory=DaemonSection)
    alerts: AlertsSection | None = None
    """``[alerts]``; None: no alerts are sent."""
    console: ConsoleSection = field(default_factory=ConsoleSection)

    def schedule(self, pipeline: str) -> Schedule:
        """The pipeline's schedule, or the ``[daemon]`` default when it gives none."""
        return parse_schedule(self.pipelines[pipeline].section.schedule or self.daemon.schedule)

    def pipeline(self, name: str | None) -> list[Pipeline]:
        if name is None:
            return list(self.pipelines.values())
        if name not in self.pipelines:
            known = ", ".join(self.pipelines)
            raise ConfigError(
                [Problem(str(self.path), f"no pipeline named {name!r}", f"use one of: {known}")]
            )
        return [self.pipelines[name]]

    def day_zone(self, pipeline: Pipeline) -> str:
        """The time zone a pipeline's dates are shown as days in (a payment's day in its label,
        the tax view's months): a locked member's (the days its closed period goes by), else
        the first member's syncing invoices that shows days in one, else UTC."""
        for lock in pipeline.locks.values():
            if lock.zone != "UTC":
                return lock.zone
        for member in pipeline.members_of("invoices"):
            cc = self.connectors.get(member)
            zone = getattr(cc.options, "timezone", None) if cc is not None else None
            if isinstance(zone, str) and zone and zone != "UTC":
                return zone
        return "UTC"

    def make_connector(self, name: str, extra: Mapping[str, Any] | None = None) -> Connector:
        cc = self.connectors[name]
        context = ConnectorContext(
            name=name,
            base_dir=str(self.base_dir),
            secrets=self.secrets,
            extra=dict(extra or {}),
        )
        return cc.cls(cc.options, context)


# --------------------------------------------------------------------------------- interpolation


def _interpolate(
    value: Any,
    where: str,
    env: Mapping[str, str],
    problems: list[Problem],
    secrets: set[str],
    source: str = "",
    strict_env: bool = True,
) -> Any:
    if isinstance(value, dict):
        return {
            k: _interpolate(
                v, f"{where}.{k}" if where else k, env, problems, secrets, source, strict_env
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(v, f"{where}[{i}]", env, problems, secrets, source, strict_env)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, str):
        return value
    leaf = where.rsplit(".", 1)[-1]
    is_secret = bool(_SECRET_KEY.search(leaf))

    def substitute(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var in env:
            return env[var]
        if default is not None:
            return default
        if strict_env:
            problems.append(
                Problem(
                    f"{source}: {where}",
                    f"environment variable {var} is not set",
                    f"export {var}=... before running, or use ${{{var}:-default}}",
                )
            )
        return match.group(0)  # left as written: one problem is enough

    for message, fix in _broken_refs(value, is_secret):
        problems.append(Problem(f"{source}: {where}", message, fix))
    result = _ENV_REF.sub(substitute, value)
    if is_secret and result:
        secrets.add(result)
    return result


def _broken_refs(value: str, is_secret: bool) -> list[tuple[str, str]]:
    """Each ``${`` in ``value`` that begins no ``${NAME}`` or ``${NAME:-default}``: what is
    wrong with it and the fix. The text is shown only where it cannot be part of a secret."""
    found: list[tuple[str, str]] = []
    rest = _ENV_REF.sub("", value)
    start = rest.find("${")
    while start != -1:
        after = rest[start + 2 :]
        name = _ENV_NAME.match(after)
        end = after.find("}")
        if end == -1:
            if name and (not is_secret or name.group(0) == after):
                found.append(
                    (
                        f"'${{{name.group(0)}' is not closed",
                        f'end it with "}}": "${{{name.group(0)}}}"',
                    )
                )
            else:
                found.append(("'${' is not closed", 'end the reference with "}": "${NAME}"'))
            break
        inner = after[:end]
        shown = f"'${{{inner}}}'" if not is_secret else "a '${...}'"
        found.append(
            (
                f"{shown} is not an environment variable reference",
                "write ${NAME} or ${NAME:-default}; a NAME is letters, digits and '_', "
                "not starting with a digit",
            )
        )
        start = rest.find("${", start + 2 + end + 1)
    return found


# ------------------------------------------------------------------------------------ validation


def _pydantic_problems(
    err: ValidationError,
    prefix: str,
    model_cls: type[BaseModel],
    table: str = "",
    *,
    array: bool = False,
) -> list[Problem]:
    """One problem per validation error of ``model_cls``, read from the TOML table ``table``
    ("": the top level; ``array``: an array of tables such as ``[[pipelines]]``), each named
    ``prefix.field`` with its fix."""
    problems = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"])
        where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        kind = item["type"]
        fix = ""
        home = _written_below(model_cls, item["loc"], table, array=array)
        if home:
            msg = (
                f"unknown key {item['loc'][-1]!r}"
                if kind == "extra_forbidden"
                else item["msg"].removeprefix("Value error, ")
            )
            fix = home
        elif kind == "extra_forbidden":
            known = _known_keys(model_cls, item["loc"][:-1])
            close = difflib.get_close_matches(str(item["loc"][-1]), known, n=1)
            msg = f"unknown key {item['loc'][-1]!r}"
            fix = (
                f"did you mean {close[0]!r}?"
                if close
                else f"known keys: {', '.join(known)}"
                if known
                else "remove it (see the connector's documented options)"
            )
        elif kind == "missing":
            msg = "is required"
            fix = "add it"
        elif kind == _CONFIG_PROBLEM:
            msg = item["msg"]
            fix = str((item.get("ctx") or {}).get("fix", ""))
        elif kind == "list_type" and isinstance(item.get("input"), str):
            msg = item["msg"] + f" (got {item['input']!r})"
            fix = f"write it as a list: {item['loc'][-1]} = [{json.dumps(item['input'])}]"
        elif kind == "too_short" and item["loc"] and item["loc"][-1] == "members":
            msg = "a pipeline needs at least two members"
            fix = 'list the connectors it keeps in step, such as members = ["hcp", "books"]'
        elif kind == BOOL_NOT_NUMBER:
            msg = item["msg"]
            fix = "write a number without quotes (true and false are not numbers)"
        else:
            msg = item["msg"].removeprefix("Value error, ")
            if "input" in item and not isinstance(item["input"], dict | list):
                shown = item["input"]
                # a secret-looking key name, not pydantic's own "[key]" marker of dict keys
                names = [str(p) for p in item["loc"] if isinstance(p, str) and p != "[key]"]
                secret = any(_SECRET_KEY.search(name) for name in names)
                if secret:
                    shown = MASK
                empty = isinstance(item["input"], str) and not item["input"].strip()
                if not (secret and empty) and (secret or repr(shown) not in msg):
                    msg += f" (got {shown!r})"  # not when the message says it all
        problems.append(Problem(where, msg, fix))
    return problems


def _written_below(
    model_cls: type[BaseModel], loc: tuple[Any, ...], table: str, *, array: bool
) -> str:
    """The fix when the key at ``loc`` belongs to a table above the one it landed in, else
    "": in TOML every key after a ``[table]`` header belongs to that table, so a pipeline's
    ``batch_size`` typed below its ``[pipelines.deletes]`` is read as a delete setting (and
    ``entities`` below ``[pipelines.mappings]`` as a mapping). ``table``, ``array``: where
    ``model_cls`` itself is read from (see ``_pydantic_problems``)."""
    if len(loc) < 2 or not isinstance(loc[-1], str):
        return ""
    key, parent = loc[-1], loc[:-1]
    if key in _known_keys(model_cls, parent):
        return ""

    def path(parts: tuple[Any, ...]) -> str:
        return ".".join(
            [*([table] if table else []), *(str(p) for p in parts if not isinstance(p, int))]
        )

    for end in range(len(parent) - 1, -1, -1):
        owner = parent[:end]
        if key not in _known_keys(model_cls, owner):
            continue
        if not path(owner):
            above = "the top of the file, before any [table]"
        elif (owner and isinstance(owner[-1], int)) or (not owner and array):
            above = f"its [[{path(owner)}]] entry"
        else:
            above = f"[{path(owner)}]"
        return _below_header_fix(key, above, f"[{path(parent)}]")
    return ""


def _below_header_fix(key: str, above: str, header: str) -> str:
    return (
        f"{key!r} belongs to {above}, but it is written below the {header} header, and TOML "
        f"reads every key after a header as part of that table: move {key} above {header}"
    )


def _known_keys(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the table at ``loc`` takes, or [] when that is not known. A table of named
    tables (``[connectors.crm.entities.customers]``) is stepped through by its names."""
    current: Any = model_cls
    named = False  # the next part names an entry of a table of tables
    for part in loc:
        if isinstance(part, int):
            continue
        if named:
            named = False
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        named = _is_table_of_tables(annotation)
        current = _unwrap_model(annotation)
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields and not named else []


def _is_table_of_tables(annotation: Any) -> bool:
    """Whether ``annotation`` is a mapping of names to models (optional or not)."""
    if typing.get_origin(annotation) in (dict, Mapping):
        return _unwrap_model(annotation) is not None
    return any(_is_table_of_tables(arg) for arg in typing.get_args(annotation))


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def load_config(
    path: str | Path, *, env: Mapping[str, str] | None = None, strict_env: bool = True
) -> Config:
    """Parse, interpolate and validate a config file and every mapping it uses.

    Raises ``ConfigError`` with every problem found; returns a ready ``Config`` otherwise.
    ``strict_env=False`` tolerates unset environment variables (for commands that only read
    the state store, such as ``status``: they need no credentials).
    """
    path = Path(path)
    env = os.environ if env is None else env
    shown = str(path)
    try:
        raw_text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            [Problem(shown, "file not found", "pass --config PATH, or copy config.example.toml")]
        ) from None
    except OSError as exc:
        raise ConfigError([Problem(shown, f"cannot read: {exc.strerror}")]) from None
    try:
        raw = tomllib.loads(raw_text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(shown, f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [
                Problem(
                    shown,
                    f"TOML syntax error: {exc}",
                    "check quotes, brackets and '=' on that line",
                )
            ]
        ) from None

    problems: list[Problem] = []
    secrets: set[str] = set()
    data = _interpolate(raw, "", env, problems, secrets, shown, strict_env)
    written: dict[str, Any] = raw["connectors"] if isinstance(raw.get("connectors"), dict) else {}
    base_dir = path.resolve().parent

    # Each section is validated on its own, so that a mistake in one never hides another.
    top = _validate_top(data, shown, problems)
    if top.alerts is not None and top.alerts.webhook_url is not None:
        secrets.add(top.alerts.webhook_url.get_secret_value())  # its path is a token
    connector_tables = data.get("connectors") if isinstance(data.get("connectors"), dict) else {}
    sections: list[tuple[int, PipelineSection]] = []
    raw_pipelines = data.get("pipelines")
    if isinstance(raw_pipelines, list):
        for index, raw in enumerate(raw_pipelines):
            try:
                sections.append((index, PipelineSection.model_validate(raw)))
            except ValidationError as err:
                # named as the person wrote it (pipelines.hcp-books.schedule) where it can be
                name = raw.get("name") if isinstance(raw, dict) else None
                label = name if isinstance(name, str) and name.strip() else str(index)
                problems.extend(
                    _prefixed(
                        _pydantic_problems(
                            err, f"pipelines.{label}", PipelineSection, "pipelines", array=True
                        ),
                        shown,
                    )
                )

    connectors: dict[str, ConnectorConfig] = {}
    for name, table in connector_tables.items():
        where = f"connectors.{name}"
        if not isinstance(table, dict):
            problems.append(Problem(f"{shown}: {where}", "must be a table"))
            continue
        type_name = table.get("type")
        if not isinstance(type_name, str):
            problems.append(
                Problem(
                    f"{shown}: {where}.type",
                    "is required",
                    'add type = "housecallpro" | "spreadsheet" | ...',
                )
            )
            continue
        try:
            cls = connector_class(type_name, f"{shown}: {where}.type")
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        try:
            options = cls.Options.model_validate(table)
        except ValidationError as err:
            problems.extend(_prefixed(_pydantic_problems(err, where, cls.Options, where), shown))
            continue
        problems.extend(_short_secrets(options, written.get(name), f"{shown}: {where}"))
        connectors[name] = ConnectorConfig(name, type_name, cls, options)

    pipelines: dict[str, Pipeline] = {}
    for index, section in sections:
        where = f"{shown}: pipelines[{index}]"
        pipelines_problems = _check_pipeline(
            section, list(connector_tables), connectors, where, base_dir, top.region
        )
        problems.extend(pipelines_problems[0])
        if section.name in pipelines:
            problems.append(
                Problem(
                    f"{where}.name",
                    f"duplicate pipeline name {section.name!r}",
                    "give each pipeline its own name",
                )
            )
        pipelines[section.name] = Pipeline(
            name=section.name,
            members=tuple(section.members),
            entities=tuple(
                model.dependency_order([e for e in section.entities if e in model.ENTITIES])
            ),
            section=section,
            mappings=pipelines_problems[1],
            locks=_locks(section, connectors),
            by_entity=_members_by_entity(section),
        )

    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        base_dir=base_dir,
        state_url=top.state.url,
        journal_retention_days=top.state.journal_retention_days,
        region=top.region,
        connectors=connectors,
        pipelines=pipelines,
        secrets=tuple(sorted(secrets, key=len, reverse=True)),
        daemon=top.daemon,
        alerts=top.alerts,
        console=top.console,
    )


MIN_SECRET_LENGTH = 8
"""Characters a configured key, token or password must have at least: a shorter one is
surely cut short or made up, and could not be masked in logs without garbling other text."""


def _short_secrets(options: BaseModel, raw: Any, where: str) -> list[Problem]:
    """Decides which secrets of a connector's options are too short: every ``SecretStr``
    value (nested tables too, e.g. ``auth.token``) with fewer than ``MIN_SECRET_LENGTH``
    characters. The problem names the field, and the environment variable where the value
    came from one, never the value. ``raw`` is the table as written, before ``${VAR}``s."""
    problems = []
    for name in type(options).model_fields:
        value = getattr(options, name, None)
        written = raw.get(name) if isinstance(raw, dict) else None
        if isinstance(value, BaseModel):
            problems += _short_secrets(value, written, f"{where}.{name}")
            continue
        if not isinstance(value, SecretStr):
            continue
        length = len(value.get_secret_value().strip())
        if length == 0 or length >= MIN_SECRET_LENGTH:
            continue  # an empty one is the options' own problem ("is empty")
        refs = _ENV_REF.findall(written) if isinstance(written, str) else []
        source = f" (from the environment variable {refs[0][0]})" if refs else ""
        if refs:
            fix = f"set {refs[0][0]} to the whole {name}"
        else:
            fix = f'give the whole {name}, or take it from the environment: {name} = "${{VAR}}"'
        problems.append(
            Problem(
                f"{where}.{name}",
                f"is {length} character{'s' if length != 1 else ''} long{source}; a key, "
                f"token or password must have at least {MIN_SECRET_LENGTH}",
                fix,
            )
        )
    return problems


def _validate_top(data: dict[str, Any], shown: str, problems: list[Problem]) -> ConfigFile:
    """The top-level keys and [state]; connectors and pipelines are checked one by one."""
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as err:
        problems.extend(_prefixed(_pydantic_problems(err, "", ConfigFile), shown))
    state = data.get("state", {})
    try:
        state_section = StateSection.model_validate(state)
    except ValidationError:
        state_section = StateSection()
    region = data.get("region")
    try:
        daemon_section = DaemonSection.model_validate(data.get("daemon", {}))
    except ValidationError:
        daemon_section = DaemonSection()
    try:
        console_section = ConsoleSection.model_validate(data.get("console", {}))
    except ValidationError:
        console_section = ConsoleSection()
    return ConfigFile.model_construct(
        state=state_section,
        daemon=daemon_section,
        alerts=None,
        console=console_section,
        # a region the check refused is not used: its problem is reported once, above
        region=region.strip().upper()
        if isinstance(region, str) and region.strip().upper() in phonenumbers.SUPPORTED_REGIONS
        else "US",
        connectors={},
        pipelines=[],
    )


def _prefixed(problems: list[Problem], shown: str) -> list[Problem]:
    return [Problem(f"{shown}: {p.location}", p.message, p.fix) for p in problems]


def _locks(section: PipelineSection, connectors: Mapping[str, ConnectorConfig]) -> dict[str, Lock]:
    """Each locked member's closed period, its days shown in the member's time zone (its
    ``timezone`` option, else UTC)."""
    out: dict[str, Lock] = {}
    for member, opens in section.locks.items():
        cc = connectors.get(member)
        zone = getattr(cc.options, "timezone", None) if cc is not None else None
        out[member] = Lock(member, opens, zone if isinstance(zone, str) and zone else "UTC")
    return out


def _members_by_entity(section: PipelineSection) -> dict[str, tuple[str, ...]]:
    """entity -> the members that sync it: those ``member_entities`` does not limit, and
    those it lists the entity for."""
    limited = section.member_entities
    return {
        entity: tuple(m for m in section.members if m not in limited or entity in limited[m])
        for entity in section.entities
    }


def _check_member_entities(
    section: PipelineSection, valid: list[str], where: str, connectors: Collection[str] = ()
) -> list[Problem]:
    """Decides what is wrong with ``[pipelines.member_entities]``: a name that is not a
    member, an entity the pipeline does not sync, an empty list, an entity left with fewer
    than two members, and a member that syncs records referring to an entity it does not
    sync (an invoice cannot be written where its customer is not)."""
    problems: list[Problem] = []
    limited = section.member_entities
    for member in sorted(set(limited) - set(section.members)):
        close = _one_of(member, section.members, "")
        if member in connectors:
            fix = (
                f"add {member!r} to the pipeline's members, or drop this line if it left the "
                "pipeline"
            )
        elif close.startswith("did you mean"):
            fix = close
        else:
            fix = (
                f"name one of its members ({', '.join(section.members)}), or drop this line if "
                "that member left the pipeline"
            )
        problems.append(
            Problem(f"{where}.member_entities.{member}", "not a member of this pipeline", fix)
        )
    for member, entities in limited.items():
        if member not in section.members:
            continue
        for entity in sorted({e for e in entities if entities.count(e) > 1}):
            problems.append(
                Problem(
                    f"{where}.member_entities.{member}",
                    f"lists {entity!r} twice",
                    "list each entity once",
                )
            )
        if not entities:
            problems.append(
                Problem(
                    f"{where}.member_entities.{member}",
                    "lists no entity",
                    f'list what {member} syncs (e.g. ["customers"]), or take {member} out of '
                    "the pipeline's members",
                )
            )
        for entity in entities:
            if entity not in valid:
                problems.append(
                    Problem(
                        f"{where}.member_entities.{member}",
                        f"{entity!r} is not an entity of this pipeline",
                        _one_of(entity, valid, "use one of its entities"),
                    )
                )
    if problems:
        return problems
    by_entity = _members_by_entity(section)
    for entity in valid:
        holders = by_entity.get(entity, ())
        if len(holders) < 2:
            alone = f"by {holders[0]} alone" if holders else "by no member"
            problems.append(
                Problem(
                    f"{where}.member_entities",
                    f"{entity} would be synced {alone}",
                    f"add {entity!r} to another member's list in [pipelines.member_entities], or "
                    "take it out of the pipeline's entities",
                )
            )
        spec = model.ENTITIES[entity]
        for name, target in spec.refs.items():
            if target not in spec.depends_on or target not in valid:
                continue
            for member in holders:
                if member not in by_entity.get(target, ()):
                    problems.append(
                        Problem(
                            f"{where}.member_entities.{member}",
                            f"{member} syncs {entity} but not {target}, which they refer to "
                            f"(their {name!r})",
                            f"add {target!r} to the list of {member}: "
                            f"{with_article(entity[:-1].replace('_', ' '))} cannot be written "
                            f"where its {name} is not",
                        )
                    )
    return problems


def _has_default_mapping(connector_type: str, entity: str) -> bool:
    try:
        return default_mapping_path(connector_type, entity).is_file()
    except ConfigError:
        return True  # a name that is not one: ``load_mapping`` says so


def _no_mapping(
    section: PipelineSection, member: str, connector_type: str, entity: str, where: str
) -> Problem:
    """A member asked to sync an entity its connector type has no default mapping of (a CRM
    of customers in a pipeline that syncs invoices): the ways out, named for this member."""
    others = [
        e
        for e in section.entities
        if e != entity and e in model.ENTITIES and _has_default_mapping(connector_type, e)
    ]
    holds = f" ({member} = {json.dumps(others)})" if others else ""
    return Problem(
        f"{where}.members",
        f"{member} ({connector_type}) has no default mapping of {entity}, and a member syncs "
        "every entity of its pipeline unless [pipelines.member_entities] says otherwise",
        f"if {member} holds no {entity}, list what it syncs in [pipelines.member_entities]"
        f"{holds}; or write a mapping file of {entity} for it and name it in "
        f'[pipelines.mappings.{member}] ({entity} = "FILE"); or take {entity} out of the '
        "pipeline's entities",
    )


def _check_pipeline(
    section: PipelineSection,
    known_connectors: list[str],
    connectors: dict[str, ConnectorConfig],
    where: str,
    base_dir: Path,
    region: str = model.DEFAULT_REGION,
) -> tuple[list[Problem], dict[tuple[str, str], EntityMapping]]:
    """A pipeline's problems, and the mapping of each (member, entity); ``region`` is the
    default region of the mappings' phone numbers."""
    problems: list[Problem] = []
    mappings: dict[tuple[str, str], EntityMapping] = {}
    for table in ("conflicts", "mappings", "locks", "match", "member_entities"):
        entries = getattr(section, table)
        for name in [n for n in entries if n in PipelineSection.model_fields]:
            # a pipeline's own key typed below this sub-table's header: not an entry of it
            del entries[name]
            problems.append(
                Problem(
                    f"{where}.{table}.{name}",
                    f"{name!r} is not a {table} entry",
                    _below_header_fix(name, "its [[pipelines]] entry", f"[pipelines.{table}]"),
                )
            )
    for i, member in enumerate(section.members):
        if member not in known_connectors:
            close = difflib.get_close_matches(member, known_connectors, n=1)
            problems.append(
                Problem(
                    f"{where}.members[{i}]",
                    f"no connector named {member!r}",
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"define [connectors.{member}] or use one of: "
                    f"{', '.join(known_connectors)}",
                )
            )
    if len(set(section.members)) != len(section.members):
        problems.append(
            Problem(f"{where}.members", "a member is listed twice", "list each connector once")
        )
    for i, entity in enumerate(section.entities):
        if entity not in model.ENTITIES:
            problems.append(
                Problem(
                    f"{where}.entities[{i}]",
                    f"unknown entity {entity!r}",
                    f"use one of: {', '.join(model.ENTITIES)}",
                )
            )

    valid_entities = [e for e in section.entities if e in model.ENTITIES]
    limits = _check_member_entities(section, valid_entities, where, known_connectors)
    problems.extend(limits)
    for entity in valid_entities:
        spec = model.ENTITIES[entity]
        for name, target in spec.refs.items():
            if target in spec.depends_on and target not in valid_entities:
                problems.append(
                    Problem(
                        f"{where}.entities",
                        f"{entity} refer to {target} (their {name!r}), which this pipeline does "
                        "not sync",
                        f"add {target!r} to entities: {with_article(entity[:-1])} cannot be "
                        f"written anywhere without its {name}",
                    )
                )
    for member in section.members:
        cc = connectors.get(member)
        if cc is None:
            continue
        overrides = section.mappings.get(member, {})
        own = (
            [e for e in valid_entities if e in section.member_entities[member]]
            if member in section.member_entities
            else valid_entities
        )
        for entity in overrides:
            if entity not in valid_entities:
                problems.append(
                    Problem(
                        f"{where}.mappings.{member}.{entity}",
                        "not an entity of this pipeline",
                        f"use one of: {', '.join(valid_entities)}",
                    )
                )
            elif entity not in own:
                problems.append(
                    Problem(
                        f"{where}.mappings.{member}.{entity}",
                        f"{member} does not sync {entity} ([pipelines.member_entities])",
                        f"drop this mapping, or add {entity!r} to {member}'s list in "
                        "[pipelines.member_entities]",
                    )
                )
        for entity in own:
            override = overrides.get(entity)
            if override is None and not _has_default_mapping(cc.type_name, entity):
                problems.append(_no_mapping(section, member, cc.type_name, entity, where))
                continue
            override_path = None
            if override is not None:
                override_path = Path(override)
                if not override_path.is_absolute():
                    override_path = base_dir / override_path
            try:
                zone = getattr(cc.options, "timezone", None)
                mapping = load_mapping(
                    cc.type_name,
                    entity,
                    override_path,
                    timezone=zone if isinstance(zone, str) else None,
                    region=region,
                )
                # references to entities this pipeline does not sync are not synced either
                # (an invoice's job, where jobs are not in the pipeline)
                outside = [
                    f for f, (target, _by) in mapping.refs.items() if target not in valid_entities
                ]
                mappings[(member, entity)] = mapping.without(outside) if outside else mapping
            except ConfigError as err:
                problems.extend(err.problems)
            except FileNotFoundError:
                problems.append(
                    Problem(
                        f"{where}.mappings.{member}.{entity}",
                        f"mapping file {override_path} not found",
                        "check the path (relative to the config file)",
                    )
                )
    for unknown in sorted(set(section.mappings) - set(section.members)):
        hint = _one_of(unknown, section.members, "name one of its members")
        problems.append(
            Problem(
                f"{where}.mappings.{unknown}",
                "not a member of this pipeline",
                f"{hint}{' ' if hint.endswith('?') else '. '}If that member left the pipeline, "
                f"drop [pipelines.mappings.{unknown}]",
            )
        )
    for unknown in sorted(set(section.locks) - set(section.members)):
        problems.append(
            Problem(
                f"{where}.locks.{unknown}",
                "not a member of this pipeline: there is nothing to lock",
                _one_of(unknown, section.members, "name one of its members"),
            )
        )

    members = set(section.members)
    by_entity = _members_by_entity(section)
    dated = [e for e in ("invoices", "payments", "line_items") if e in valid_entities]
    for member in sorted(set(section.locks) & set(section.member_entities)):
        if dated and not any(member in by_entity.get(e, ()) for e in dated) and not limits:
            problems.append(
                Problem(
                    f"{where}.locks.{member}",
                    f"{member} syncs none of what a closed period applies to "
                    f"({', '.join(dated)}), so there is nothing to lock",
                    f"drop this line, or add those entities to the list of {member} in "
                    "[pipelines.member_entities]",
                )
            )
    for scope, rules in section.conflicts.items():
        entity_part = scope.split(".", 1)[0]
        if scope != "default" and entity_part not in valid_entities:
            problems.append(
                Problem(
                    f"{where}.conflicts.{scope}",
                    "scope must be 'default', an entity, or 'entity.field'",
                    f"entities here: {', '.join(valid_entities)}",
                )
            )
        if "." in scope and entity_part in valid_entities:
            field_name = scope.split(".", 1)[1]
            if model.entity_spec(entity_part).field_spec(field_name) is None:
                problems.append(
                    Problem(
                        f"{where}.conflicts.{scope}",
                        f"{entity_part} has no field {field_name!r}",
                        _one_of(field_name, _field_names(entity_part), "use one of its fields"),
                    )
                )
        holders = by_entity.get(entity_part, ()) if scope != "default" else ()
        for rule in rules:
            if rule not in members and rule not in CONFLICT_RULE_WORDS:
                problems.append(
                    Problem(
                        f"{where}.conflicts.{scope}",
                        f"unknown rule {rule!r}",
                        f"use a member name ({', '.join(section.members)}), 'newest' or 'manual'",
                    )
                )
            elif rule in members and holders and rule not in holders and not limits:
                problems.append(
                    Problem(
                        f"{where}.conflicts.{scope}",
                        f"{rule} does not sync {entity_part} ([pipelines.member_entities]), so "
                        "it can never win this rule",
                        f"use a member that syncs it ({', '.join(holders)}), 'newest' or 'manual'",
                    )
                )
    for entity in [] if limits or not section.member_entities else valid_entities:
        scope = entity if entity in section.conflicts else "default"
        rules = section.conflicts.get(scope, ["manual"])
        named = [r for r in rules if r in members]
        holders = by_entity.get(entity, ())
        if named and len(named) == len(rules) and not set(named) & set(holders):
            problems.append(
                Problem(
                    f"{where}.conflicts.{scope}",
                    f"names only {', '.join(named)} for {entity}, which "
                    f"{'does' if len(named) == 1 else 'do'} not sync them "
                    "([pipelines.member_entities]): every conflict of theirs would wait for a "
                    "person",
                    f"add a member that syncs {entity} after it ({', '.join(holders)}), or give "
                    f"{entity} a rule of its own ({entity} = [...])",
                )
            )
    for entity, keys in section.match.items():
        if entity not in valid_entities:
            problems.append(Problem(f"{where}.match.{entity}", "not an entity of this pipeline"))
            continue
        spec = model.entity_spec(entity)
        for k in keys:
            if spec.field_spec(k) is None:
                problems.append(
                    Problem(
                        f"{where}.match.{entity}",
                        f"no field {k!r}",
                        _one_of(k, _field_names(entity), "use one of its fields"),
                    )
                )
    return problems, mappings


def _field_names(entity: str) -> list[str]:
    return [f.name for f in model.entity_spec(entity).fields]


def _one_of(word: str, known: Sequence[str], otherwise: str) -> str:
    """``did you mean 'email'?`` for a typo of one of ``known``, else ``otherwise`` with
    them listed."""
    same_letters = [k for k in known if k.lower() == word.lower()]  # "CRM" for "crm"
    close = same_letters or difflib.get_close_matches(word, known, n=1)
    return f"did you mean {close[0]!r}?" if close else f"{otherwise}: {', '.join(known)}"
