"""Declarative mappings between one member's native records and canonical records.

A mapping is a TOML file per (connector type, entity); the defaults live in ``mappings/`` and
are installed as ``syncengine.mappings``. The grammar::

    match_keys = ["email", "mobile_number"]      # optional: overrides the entity's defaults
    flat = false                                 # optional: true = native names are never paths

    [fields]
    first_name = "First Name"                    # canonical = native, both ways
    mobile_number = { native = "Mobile", transform = "phone" }
    lead_source = { native = "Source", direction = "read" }   # both | read | write
    "custom.account_manager" = { native = "Account Manager" } # integrator-defined field
    tags = { native = "Tags", transform = { name = "list", sep = ";" } }
    notifications_enabled = { native = "Notify", transform = "bool", default = false }
    "addresses.service.street" = "addresses[type=service].street"
    "custom.ref" = { native_key = "Ref. No." }   # a single key even though it has a '.'
    customer = { native = "Customer Email", ref_by = "email" }   # a reference by human key
    customer = { native = "Customer", ref_by = ["email", "mobile_number"] }  # first one set

Native names without ``.`` or ``[`` are single keys (column names such as ``First Name``);
otherwise they are paths into nested JSON: ``a.b.c``, and ``list[key=value]`` selects the
element of ``list`` whose ``key`` is ``value`` (created as ``{key: value}`` when writing and it
is missing). ``default`` is a canonical value used when the native value is missing or empty.
``transform`` is a name, an inline table or a list of those (see ``syncengine.transforms``).

A reference field (an invoice's ``customer``, a payment's ``invoice``) holds the member's own
native id of the record referred to, unless ``ref_by`` names a field of that entity which the
member shows instead (a sheet's ``Customer Email``); the engine resolves either to hub keys.

Every problem in a file is reported at once, naming the file, the key and the fix.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import functools
import hashlib
import importlib.resources
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, cast, get_args

from syncengine import model
from syncengine.display import with_article
from syncengine.errors import ConfigError, Problem, RecordError
from syncengine.transforms import Transform, build_transform, canonical_values, describe_value

__all__ = [
    "Direction",
    "EntityMapping",
    "FieldMapping",
    "NativePath",
    "default_mapping_path",
    "load_mapping",
    "load_mapping_file",
    "parse_mapping",
    "parse_path",
]

Direction = Literal["both", "read", "write"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)

FIELD_KEYS = ("native", "native_key", "transform", "direction", "default", "ref_by")
TOP_LEVEL_KEYS = ("fields", "match_keys", "flat")


# -------------------------------------------------------------------------------- native paths

Step = tuple[str, tuple[str, str] | None]
"""One step of a path: a key, and optionally a ``(key, value)`` selection in the list there."""


class NativePath:
    """A compiled native name: a single key, or a path of keys and list selections."""

    __slots__ = ("key", "steps", "text")

    def __init__(self, text: str, steps: tuple[Step, ...]) -> None:
        self.text = text
        self.steps = steps
        self.key: str | None = steps[0][0] if len(steps) == 1 and steps[0][1] is None else None
        """The key when the path is a single key (the fast case)."""

    @classmethod
    def single_key(cls, key: str) -> NativePath:
        return cls(key, ((key, None),))

    def __repr__(self) -> str:
        return f"NativePath({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NativePath) and self.steps == other.steps

    def __hash__(self) -> int:
        return hash(self.steps)

    def overlaps(self, other: NativePath) -> bool:
        """Whether one path is the other or leads into it (writing both would clash)."""
        n = min(len(self.steps), len(other.steps))
        if self.steps[:n] == other.steps[:n]:
            return True
        # a[type=x].b and a.c clash too: both write ``a`` (a list, and a table)
        for (key_a, sel_a), (key_b, sel_b) in zip(self.steps[:n], other.steps[:n], strict=True):
            if key_a != key_b:
                return False
            if sel_a != sel_b:
                return sel_a is None or sel_b is None
        return False

    def get(self, doc: Mapping[str, Any]) -> Any:
        """The value at this path, or ``None`` when any part of the way is missing."""
        if self.key is not None:
            return doc.get(self.key)
        current: Any = doc
        for key, selection in self.steps:
            if type(current) is not dict and not isinstance(current, Mapping):
                return None
            current = current.get(key)
            if selection is not None:
                current = _select(current, selection)
        return current

    def holds(self, doc: Mapping[str, Any]) -> bool:
        """Whether ``doc`` has this path at all: every step there, the last one's value
        whatever it is (``null`` included: the record has the field, empty)."""
        if self.key is not None:
            return self.key in doc
        current: Any = doc
        for key, selection in self.steps:
            if not isinstance(current, Mapping) or key not in current:
                return False
            current = current[key]
            if selection is not None:
                current = _select(current, selection)
                if current is None:
                    return False
        return True

    def set(self, doc: dict[str, Any], value: Any) -> None:
        """Set the value at this path in ``doc``, in place, creating tables and selected list
        elements on the way. Setting ``None`` where the way does not exist does nothing."""
        if self.key is not None:
            doc[self.key] = value
            return
        current = doc
        last = len(self.steps) - 1
        for index, (key, selection) in enumerate(self.steps):
            if selection is None:
                if index == last:
                    current[key] = value
                    return
                child = current.get(key)
                if not isinstance(child, dict):
                    if value is None:
                        return
                    child = current[key] = {}
                current = child
                continue
            items = current.get(key)
            if not isinstance(items, list):
                if value is None:
                    return
                items = current[key] = []
            element = _select(items, selection)
            if not isinstance(element, dict):
                if value is None:
                    return
                element = {selection[0]: selection[1]}
                items.append(element)
            current = element


def _select(items: Any, selection: tuple[str, str]) -> Any:
    if type(items) is not list:
        return None
    key, wanted = selection
    for element in items:
        if type(element) is dict or isinstance(element, Mapping):
            found = element.get(key)
            if found == wanted or (
                found is not None and not isinstance(found, str) and str(found) == wanted
            ):
                return element
    return None


_SELECTION = re.compile(r"\[([^\[\]=]+)=([^\[\]]*)\]")


@functools.lru_cache(maxsize=4096)
def parse_path(text: str) -> NativePath:
    """Compile a native name. Raises ``ValueError`` with a message on a malformed path."""
    if not isinstance(text, str) or not text:
        raise ValueError("a native name must be a non-empty string")
    if "." not in text and "[" not in text and "]" not in text:
        return NativePath.single_key(text)
    steps: list[Step] = []
    position = 0
    while True:
        end = position
        while end < len(text) and text[end] not in ".[]":
            end += 1
        key = text[position:end]
        if not key.strip():
            raise ValueError(
                f"the path {text!r} has an empty part at character {position + 1}"
                " (write a.b.c, or list[key=value].c)"
            )
        selection: tuple[str, str] | None = None
        if end < len(text) and text[end] == "[":
            match = _SELECTION.match(text, end)
            if match is None:
                raise ValueError(
                    f"the path {text!r} has a malformed selection at character {end + 1}"
                    " (write list[key=value])"
                )
            selection = (match.group(1).strip(), _unquote(match.group(2).strip()))
            end = match.end()
        steps.append((key, selection))
        if end == len(text):
            break
        if text[end] != ".":
            raise ValueError(
                f"the path {text!r} has an unexpected {text[end]!r} at character {end + 1}"
            )
        position = end + 1
    if steps[-1][1] is not None:
        raise ValueError(
            f"the path {text!r} ends with a list selection; name a key inside it"
            " (e.g. addresses[type=service].street)"
        )
    return NativePath(text, tuple(steps))


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


# -------------------------------------------------------------------------------- the mapping


@dataclass(frozen=True)
class FieldMapping:
    """One canonical field mapped to one native name."""

    canonical: str
    native: str
    transform: Transform | None = None
    direction: Direction = "both"
    default: Any = None
    """Canonical value used when reading finds the native value missing or empty."""
    literal: bool = False
    """``native`` is a single key even if it contains ``.`` or ``[``."""
    ref_by: tuple[str, ...] | None = None
    """Reference fields: the referred entity's fields the member shows instead of its id (the
    first one the record has is written; any of them is read)."""

    def path(self) -> NativePath:
        return NativePath.single_key(self.native) if self.literal else parse_path(self.native)


@dataclass(frozen=True, slots=True)
class _Reader:
    """How one readable field is read from a native record, compiled once per mapping (the
    hot path of ``EntityMapping.to_canonical``)."""

    canonical: str
    """The canonical field's name."""
    key: str
    """The native key: the whole name, or the last step of a path."""
    container: int
    """-1 for a single key, else the index of the path's container in ``_containers``."""
    read: Callable[[Any], Any] | None
    """The transform's ``read``, if the field has a transform."""
    normalise: Callable[[Any], Any]
    """The canonical field's normaliser."""
    default: Any
    """The canonical value used when the native value is missing or empty."""
    native: str
    """The native name, for errors."""


@dataclass(frozen=True, slots=True)
class _Writer:
    """How one writable field is written to a native record (``EntityMapping.to_native``)."""

    canonical: str
    native: str
    write: Callable[[Any], Any] | None
    """The transform's ``write``, if the field has a transform."""


class EntityMapping:
    """A parsed, compiled mapping of one entity for one connector type."""

    def __init__(
        self,
        entity: model.EntitySpec,
        fields: Iterable[FieldMapping],
        source: str = "",
        match_keys: Sequence[str] | None = None,
        region: str = model.DEFAULT_REGION,
    ) -> None:
        self.entity = entity
        self.fields: tuple[FieldMapping, ...] = tuple(fields)
        self.source = source
        self.region = region
        """The region of phone numbers written without a country code (the config's
        ``region``): how this member's phone fields are read."""
        self.readable: frozenset[str] = frozenset(
            f.canonical for f in self.fields if f.direction in ("both", "read")
        )
        self.writable: frozenset[str] = frozenset(
            f.canonical
            for f in self.fields
            if f.direction in ("both", "write") and not entity.is_meta(f.canonical)
        )
        self.match_keys: tuple[str, ...] = (
            entity.match_keys if match_keys is None else tuple(match_keys)
        )
        """The file's ``match_keys``, else the entity's defaults."""

        self.refs: dict[str, tuple[str, tuple[str, ...] | None]] = {
            f.canonical: (entity.by_name[f.canonical].ref, f.ref_by)
            for f in self.fields
            if f.canonical in entity.by_name and entity.by_name[f.canonical].type == "ref"
        }
        """Reference fields -> (entity referred to, its field shown natively or None = id)."""
        self._fingerprint: str | None = None
        self._paths: dict[str, NativePath] = {}
        self._containers: list[NativePath] = []
        """Distinct containers of the read paths, each resolved once per record."""
        self._readers: list[_Reader] = []
        self._writers: list[_Writer] = []
        for f in self.fields:
            try:
                path = f.path()
            except ValueError as exc:
                raise ConfigError([Problem(source or "mapping", str(exc))]) from None
            self._paths.setdefault(f.native, path)
            if f.direction != "write":
                if path.key is not None:
                    key, container = path.key, -1
                else:
                    key = path.steps[-1][0]
                    parent = NativePath(path.text, path.steps[:-1])
                    if parent not in self._containers:
                        self._containers.append(parent)
                    container = self._containers.index(parent)
                self._readers.append(
                    _Reader(
                        canonical=f.canonical,
                        key=key,
                        container=container,
                        read=f.transform.read if f.transform else None,
                        normalise=_normaliser(entity, f.canonical, region),
                        default=f.default,
                        native=f.native,
                    )
                )
            if f.direction != "read" and not entity.is_meta(f.canonical):
                self._writers.append(
                    _Writer(f.canonical, f.native, f.transform.write if f.transform else None)
                )

    def fingerprint(self) -> str:
        """A digest of how this mapping reads a member's records: which native names feed
        which canonical fields, through which transform, with which default, and the region
        of phone numbers. It changes when a read field is added, removed or read otherwise
        (not when only what is written changes), so that the engine reads every record of
        the member again once, with the new mapping."""
        if self._fingerprint is None:
            read = sorted(
                (
                    f.canonical,
                    f.native,
                    f.literal,
                    f.ref_by,
                    repr(f.default),
                    _transform_key(f.transform),
                )
                for f in self.fields
                if f.direction in ("both", "read")
            )
            text = repr((read, self.region, self.entity.name))
            self._fingerprint = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"EntityMapping({self.entity.name!r}, {len(self.fields)} fields, {self.source!r})"

    def without(self, names: Iterable[str]) -> EntityMapping:
        """This mapping without some canonical fields (references to entities a pipeline does
        not sync)."""
        dropped = set(names)
        return EntityMapping(
            self.entity,
            [f for f in self.fields if f.canonical not in dropped],
            self.source,
            self.match_keys,
            self.region,
        )

    def equivalent(self, name: str, a: Any, b: Any) -> bool:
        """Whether two canonical values of a field look the same on this member: written and
        read back they agree (a local date shows 09:00Z and 17:00Z of one day alike)."""
        if a == b:
            return True
        if a is None or b is None:
            return False
        field = next((f for f in self.fields if f.canonical == name), None)
        if field is None or field.transform is None:
            return False
        normalise = _normaliser(self.entity, name, self.region)
        try:
            return bool(
                normalise(field.transform.read(field.transform.write(a)))
                == normalise(field.transform.read(field.transform.write(b)))
            )
        except (ValueError, TypeError):
            return False

    def native_name(self, canonical: str) -> str | None:
        """The native name a canonical field is read from (else written to), if mapped."""
        for f in self.fields:
            if f.canonical == canonical and f.direction != "write":
                return f.native
        for f in self.fields:
            if f.canonical == canonical:
                return f.native
        return None

    def held(self, native: Mapping[str, Any], canonical: str) -> Any:
        """What a native record holds at the name a write-only field is written to, as a
        canonical value (None when missing, empty or unreadable). A write-only field never
        takes part in the merge: this only tells whether a write changes anything, and what
        it replaces."""
        for f in self.fields:
            if f.canonical != canonical or f.direction != "write":
                continue
            raw = self._paths[f.native].get(native)
            if raw is None or raw == "":
                return None
            try:
                value = f.transform.read(raw) if f.transform is not None else raw
                return _normaliser(self.entity, canonical, self.region)(value)
            except (ValueError, TypeError):
                return None
        return None

    def to_canonical(self, native: Mapping[str, Any], *, location: str = "") -> dict[str, Any]:
        """The canonical record of a native record: every readable field that holds a value,
        in normal form. A field without one is left out (``record.get(name)`` is None), as the
        base leaves it out: a customer's twelve empty address parts cost a read nothing,
        nor the state that keeps the record as last seen. Raises one ``RecordError`` naming
        every bad field."""
        record: dict[str, Any] = {}
        bad: list[tuple[str, str]] | None = None
        containers = [c.get(native) for c in self._containers]
        for reader in self._readers:
            if reader.container < 0:
                raw = native.get(reader.key)
            else:
                parent = containers[reader.container]
                if type(parent) is dict or isinstance(parent, Mapping):
                    raw = parent.get(reader.key)
                else:
                    raw = None
            if raw is None or raw == "":
                default = reader.default
                if default is not None:
                    record[reader.canonical] = list(default) if type(default) is list else default
                continue
            read = reader.read
            try:
                value = reader.normalise(raw if read is None else read(raw))
            except (ValueError, TypeError) as exc:
                message = str(exc) if isinstance(exc, ValueError) else f"{raw!r} is not valid here"
                if bad is None:
                    bad = []
                bad.append((reader.native, message))
                record[reader.canonical] = None
                continue
            if value is None:
                default = reader.default
                if default is None:
                    continue
                value = list(default) if type(default) is list else default
            record[reader.canonical] = value
        if bad:
            raise _record_error(bad, location)
        if self.entity.belongs_to and record.get(self.entity.belongs_to) is None:
            self._belongs(native, location)
        if self.entity.required:
            self._require(record, location)
        if self.entity.checks:
            self._check(record, location)
        return record

    def _belongs(self, native: Mapping[str, Any], location: str) -> None:
        """Refuse a record that leaves blank the reference its entity belongs by
        (``EntitySpec.belongs_to``: a payment's invoice) where the member shows that field:
        a totals or note row typed under the payments is no payment. A member whose records
        lack the field altogether (a column missing from its sheet) is not refused here."""
        name = self.entity.belongs_to
        field = next((f for f in self.fields if f.canonical == name), None)
        if field is None or field.direction == "write" or not field.path().holds(native):
            return
        target, ref_by = self.refs.get(name, (name + "s", None))
        shown = " or ".join(r.replace("_", " ") for r in ref_by) if ref_by else "id"
        owner = target.removesuffix("s")
        raise _record_error(
            [
                (
                    field.native,
                    f"is empty: every {self.entity.name.removesuffix('s')} belongs to "
                    f"{with_article(owner)}; type the {owner}'s {shown} (a totals or note row "
                    "belongs outside the table)",
                )
            ],
            location,
        )

    def _require(self, record: dict[str, Any], location: str) -> None:
        """Refuse a record that leaves a field the entity requires blank (``required``)
        where this mapping reads it: a blank Quantity typed into a sheet is that row's
        problem, never a quantity to clear on the other members."""
        blank = [
            (
                self.native_name(name) or name,
                "is empty: every line needs one (0 is a value: type 0 where it is nothing)",
            )
            for name in self.entity.required
            if name in self.readable and record.get(name) is None
        ]
        if blank:
            raise _record_error(blank, location)

    def _check(self, record: dict[str, Any], location: str) -> None:
        """Refuse a record whose fields break a rule between them (``EntitySpec.checks``),
        naming the native field at fault: a refund above its payment is that row's problem,
        reported like a bad value, never passed on."""
        bad = [
            (self.native_name(problem.field) or problem.field, problem.message)
            for check in self.entity.checks
            for problem in check(record)
        ]
        if bad:
            raise _record_error(bad, location)

    def to_native(
        self,
        record: Mapping[str, Any],
        fields: Iterable[str] | None = None,
        *,
        location: str = "",
    ) -> dict[str, Any]:
        """A flat patch ``{native name: native value}`` of the writable fields present in
        ``record`` (only those in ``fields`` when given). ``None`` is written as ``None``.
        Raises one ``RecordError`` naming every value that cannot be written."""
        wanted = None if fields is None else set(fields)
        patch: dict[str, Any] = {}
        bad: list[tuple[str, str]] | None = None
        for writer in self._writers:
            canonical, native_name, write = writer.canonical, writer.native, writer.write
            if wanted is not None and canonical not in wanted:
                continue
            if canonical not in record:
                continue
            value = record[canonical]
            if value is not None and write is not None:
                try:
                    value = write(value)
                except (ValueError, TypeError) as exc:
                    if bad is None:
                        bad = []
                    message = (
                        str(exc) if isinstance(exc, ValueError) else f"{value!r} cannot be written"
                    )
                    bad.append((native_name, message))
                    continue
            elif isinstance(value, list | dict):
                value = _copy(value)
            patch[native_name] = value
        if bad:
            raise _record_error(bad, location)
        return patch

    def apply_patch(self, native: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
        """A new native record: a deep copy of ``native`` with every path of ``patch`` set.
        Neither argument is modified."""
        result: dict[str, Any] = _copy(dict(native))
        # values first, then Nones: clearing a key never depends on the order of the patch
        for clearing in (False, True):
            for name, value in patch.items():
                if (value is None) is clearing:
                    path = self._paths.get(name)
                    if path is None:
                        path = parse_path(name)
                    path.set(result, _copy(value))
        return result

    def build_native(self, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A new native record holding just ``patch``."""
        return self.apply_patch({}, patch)


def _record_error(bad: list[tuple[str, str]], location: str) -> RecordError:
    if len(bad) == 1:
        native_name, message = bad[0]
        return RecordError(message, location=location, field=native_name)
    message = "; ".join(f"{name!r}: {text}" for name, text in bad)
    return RecordError(message, location=location, field=", ".join(name for name, _ in bad))


def _normaliser(
    entity: model.EntitySpec, name: str, region: str = model.DEFAULT_REGION
) -> Callable[[Any], Any]:
    """``model.normalise`` of one field, looked up once instead of per value; a phone field
    reads numbers without a country code as numbers of ``region``."""
    spec = entity.field_spec(name)
    kind = spec.type if spec else "str"
    if kind == "phone" and region != model.DEFAULT_REGION:
        return functools.partial(model.norm_phone, region=region)
    if spec is not None and kind != "str":
        return spec.normalise
    norm_str = model.NORMALISERS["str"]

    def normalise_str(value: Any) -> Any:
        # as model.normalise: values a transform made non-strings keep their type
        return norm_str(value) if value is None or isinstance(value, str) else value

    return normalise_str


_IMMUTABLE = (str, int, float, bool, type(None), Decimal, dt.date, dt.time, tuple, frozenset)


def _copy(value: Any) -> Any:
    """A deep copy of JSON-like data, fast for dicts, lists and scalars."""
    if type(value) is str or value is None:  # most of what a record holds
        return value
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, _IMMUTABLE):
        return value
    return copy.deepcopy(value)


# ------------------------------------------------------------------------------------ parsing


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _groups(spec: model.EntitySpec) -> frozenset[str]:
    """The names that group canonical fields: ``addresses``, ``addresses.service``, ...,
    and ``custom`` (``custom.<name>`` fields are the integrator's)."""
    found = {"custom"}
    for f in spec.fields:
        parts = f.name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(found)


def _is_field_table(name: str, value: Mapping[str, Any], spec: model.EntitySpec) -> bool:
    """Whether a table under ``[fields]`` maps one field (``company = { native = ... }``)
    rather than grouping several (``[fields.addresses.service]``). A table with a field key,
    or one named after a canonical field that groups nothing, maps a field; so does an
    unknown name whose keys look like mistyped field keys (``{ nativ = ... }``), so that the
    typo is reported as such."""
    if any(k in value for k in FIELD_KEYS):
        return True
    if name in _groups(spec):
        return False
    if spec.field_spec(name) is not None:
        return True
    return any(difflib.get_close_matches(k, FIELD_KEYS, n=1, cutoff=0.75) for k in value)


def _flatten_fields(
    table: Mapping[str, Any], spec: model.EntitySpec, prefix: str = ""
) -> Iterable[tuple[str, Any]]:
    """Canonical names and their specs; ``[fields.addresses.service]`` tables and unquoted
    dotted keys (``addresses.service.street = ...``) are flattened to dotted names."""
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not _is_field_table(name, value, spec):
            yield from _flatten_fields(value, spec, f"{name}.")
        else:
            yield name, value


def _close(word: str, choices: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)


def parse_mapping(
    data: Mapping[str, Any],
    *,
    entity: str,
    source: str,
    timezone: str | None = None,
    region: str | None = None,
) -> EntityMapping:
    """Check and compile the parsed TOML of a mapping file. Every problem is reported at once
    in one ``ConfigError``. ``region`` (the config's) is the default region of its phone
    fields and ``phone`` transforms; a transform's own ``region`` parameter wins."""
    region = region or model.DEFAULT_REGION
    try:
        spec = model.entity_spec(entity)
    except KeyError as exc:
        raise ConfigError([Problem(source, str(exc.args[0]))]) from None
    problems: list[Problem] = []

    def problem(where: str, message: str, fix: str = "") -> None:
        problems.append(Problem(f"{source}: {where}" if where else source, message, fix))

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            close = _close(key, TOP_LEVEL_KEYS)
            problem(
                _toml_key(key),
                f"unknown key {key!r}",
                f"did you mean {close[0]!r}?"
                if close
                else "a mapping has " + ", ".join(TOP_LEVEL_KEYS) + " at its top level",
            )

    flat = data.get("flat", False)
    if not isinstance(flat, bool):
        problem("flat", f"must be true or false, not {describe_value(flat)}")
        flat = False

    table = data.get("fields")
    if table is None:
        problem("fields", "no [fields] table", 'add [fields] with lines like email = "Email"')
        table = {}
    elif not isinstance(table, Mapping):
        problem("fields", f"must be a table, not {describe_value(table)}")
        table = {}
    elif not table:
        problem("fields", "no fields are mapped", 'add lines like email = "Email"')

    field_names = [f.name for f in spec.fields]
    mappings: list[FieldMapping] = []
    paths: list[tuple[str, NativePath, FieldMapping]] = []
    for canonical, value in _flatten_fields(table, spec):
        where = f"fields.{_toml_key(canonical)}"
        fspec = spec.field_spec(canonical)
        if fspec is None:
            close = _close(canonical, field_names)
            fix = (
                f"did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else f"{spec.name} fields are: {', '.join(field_names)}; "
                "or name your own as custom.<name>"
            )
            problem(where, f"unknown canonical field {canonical!r} for {spec.name}", fix)
        fm = _parse_field(canonical, value, where, spec, flat, problem, timezone, region)
        if fm is None or fspec is None:
            continue
        try:
            path = fm.path()
        except ValueError as exc:
            problem(f"{where}.native", str(exc))
            continue
        mappings.append(fm)
        paths.append((where, path, fm))

    _check_duplicates(spec, paths, problem)

    match_keys: list[str] | None = None
    raw_keys = data.get("match_keys")
    if raw_keys is not None:
        if not isinstance(raw_keys, list) or not all(isinstance(k, str) for k in raw_keys):
            problem(
                "match_keys",
                f"must be a list of canonical field names, not {describe_value(raw_keys)}",
                'e.g. match_keys = ["email", "mobile_number"]',
            )
        else:
            readable = {f.canonical for f in mappings if f.direction in ("both", "read")}
            match_keys = []
            for key in raw_keys:
                if spec.field_spec(key) is None:
                    close = _close(key, field_names)
                    problem(
                        "match_keys",
                        f"unknown canonical field {key!r}",
                        f"did you mean {close[0]!r}?" if close else "",
                    )
                elif key not in readable:
                    problem(
                        "match_keys",
                        f"{key!r} is not read from this member, so it cannot match records",
                        f"map {key!r} in [fields] (direction both or read), or drop it here",
                    )
                elif key not in match_keys:
                    match_keys.append(key)

    if problems:
        raise ConfigError(problems)
    return EntityMapping(spec, mappings, source, match_keys, region)


def _parse_field(
    canonical: str,
    value: Any,
    where: str,
    spec: model.EntitySpec,
    flat: bool,
    problem: Callable[..., None],
    timezone: str | None = None,
    region: str = model.DEFAULT_REGION,
) -> FieldMapping | None:
    if isinstance(value, str):
        if not value:
            problem(where, "the native name is empty", 'write e.g. email = "Email"')
            return None
        return FieldMapping(canonical, value, literal=flat)
    if not isinstance(value, Mapping):
        problem(
            where,
            f"must be a native name or a table, not {describe_value(value)}",
            f'write {_toml_key(canonical)} = "Native Name" or '
            f'{_toml_key(canonical)} = {{ native = "...", transform = "..." }}',
        )
        return None
    ok = True
    mistyped: set[str] = set()
    for key in value:
        if key not in FIELD_KEYS:
            close = _close(key, FIELD_KEYS)
            mistyped.update(close[:1])
            problem(
                f"{where}.{_toml_key(key)}",
                f"unknown key {key!r} in the mapping of {canonical}",
                (f"did you mean {close[0]!r}? " if close else "")
                + "a field table has: "
                + ", ".join(FIELD_KEYS),
            )
            ok = False

    native = value.get("native")
    native_key = value.get("native_key")
    literal = flat
    if native is not None and native_key is not None:
        problem(where, "has both native and native_key", "keep one of them")
        ok = False
    elif native_key is not None:
        native, literal = native_key, True
    name_key = "native_key" if native_key is not None else "native"
    if native is None:
        if not mistyped & {"native", "native_key"}:  # else the typo above says it all
            problem(where, "has no native name", 'add native = "..." (the column or JSON path)')
        ok = False
    elif not isinstance(native, str) or not native:
        problem(f"{where}.{name_key}", f"must be a non-empty string, not {describe_value(native)}")
        ok = False

    direction = value.get("direction", "both")
    if direction not in DIRECTIONS:
        problem(
            f"{where}.direction",
            f"{direction!r} is not a direction",
            "use one of: " + ", ".join(repr(d) for d in DIRECTIONS),
        )
        ok = False
    elif direction == "write" and spec.is_meta(canonical):
        problem(
            f"{where}.direction",
            f"{canonical!r} is metadata: it is read, never written to a member",
            'use direction = "read"',
        )
        ok = False

    ref_by = value.get("ref_by")
    fspec_ = spec.field_spec(canonical)
    if ref_by is not None:
        if fspec_ is None or fspec_.type != "ref":
            problem(
                f"{where}.ref_by",
                f"{canonical!r} is not a reference field",
                "ref_by belongs to fields such as an invoice's customer; drop it here",
            )
            ok = False
        else:
            target = model.ENTITIES[fspec_.ref]
            names = [ref_by] if isinstance(ref_by, str) else ref_by
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) for n in names)
            ):
                problem(
                    f"{where}.ref_by",
                    f"must be a field name or a list of them, not {describe_value(ref_by)}",
                    'e.g. ref_by = "email"',
                )
                ok = False
            else:
                for name in names:
                    if target.field_spec(name) is None:
                        problem(
                            f"{where}.ref_by",
                            f"{name!r} is not a field of {target.name}",
                            "use one of: " + ", ".join(f.name for f in target.fields if not f.meta),
                        )
                        ok = False

    transform: Transform | None = None
    if "transform" in value:
        try:
            transform = build_transform(
                _regioned(_zoned(value["transform"], timezone), region), f"{where}.transform"
            )
        except ConfigError as exc:
            # the transform's problems already name this file's key; prefix the file
            for p in exc.problems:
                problem(p.location, p.message, p.fix)
            ok = False
        if transform is not None and spec.field_spec(canonical) is not None:
            normalise = _normaliser(spec, canonical, region)
            for mapped in canonical_values(transform):
                try:
                    normal = normalise(mapped)
                except (ValueError, TypeError) as exc:
                    problem(
                        f"{where}.transform",
                        f"maps to {mapped!r}, which is not a valid {canonical}: {exc}",
                        f"map each native value to a value {canonical} takes",
                    )
                    ok = False
                    continue
                if normal != mapped:  # written back, the normal form would find no native
                    scalar = not isinstance(normal, list | tuple | set | frozenset)
                    problem(
                        f"{where}.transform",
                        f"maps to {mapped!r}, which {canonical} holds as {normal!r}"
                        + ("" if scalar else ": a map gives one value, never a list"),
                        f"write it as {normal!r}" if scalar else "drop the map from this field",
                    )
                    ok = False

    default = value.get("default")
    if default is not None:
        if direction == "write":
            problem(
                f"{where}.default",
                "a default is used when reading, but this field is only written",
                'drop default, or use direction = "both"',
            )
            ok = False
        elif (
            (fspec := spec.field_spec(canonical)) is not None
            and fspec.type == "str"
            and not canonical.startswith("custom.")
            and not isinstance(default, str)
        ):
            problem(f"{where}.default", f"must be a string, not {describe_value(default)}")
            ok = False
        elif fspec is not None:
            try:
                default = _normaliser(spec, canonical, region)(default)
            except (ValueError, TypeError) as exc:
                problem(f"{where}.default", f"is not a valid {canonical}: {exc}")
                ok = False

    if not ok:
        return None
    return FieldMapping(
        canonical,
        cast(str, native),
        transform,
        cast(Direction, direction),
        default,
        literal,
        (ref_by,) if isinstance(ref_by, str) else tuple(ref_by) if ref_by else None,
    )


def _zoned(spec: Any, timezone: str | None) -> Any:
    """A transform spec whose ``date`` transforms default to ``timezone`` (a member's
    ``timezone`` option) instead of UTC; an explicit ``timezone`` parameter wins."""
    if timezone is None:
        return spec
    if spec == "date":
        return {"name": "date", "timezone": timezone}
    if isinstance(spec, Mapping) and spec.get("name") == "date" and "timezone" not in spec:
        return {**spec, "timezone": timezone}
    if isinstance(spec, list):
        return [_zoned(s, timezone) for s in spec]
    return spec


def _check_duplicates(
    spec: model.EntitySpec,
    paths: list[tuple[str, NativePath, FieldMapping]],
    problem: Callable[..., None],
) -> None:
    read_by: dict[str, str] = {}
    written_by: dict[str, str] = {}
    writers: list[tuple[str, NativePath, FieldMapping]] = []
    for where, path, fm in paths:
        if fm.direction in ("both", "read"):
            if fm.canonical in read_by:
                problem(
                    where,
                    f"{fm.canonical!r} is already read from {read_by[fm.canonical]!r}",
                    'map each canonical field once, or make one direction = "write"',
                )
            read_by.setdefault(fm.canonical, fm.native)
        if fm.direction in ("both", "write") and not spec.is_meta(fm.canonical):
            if fm.canonical in written_by:
                problem(
                    where,
                    f"{fm.canonical!r} is already written to {written_by[fm.canonical]!r}",
                    'map each canonical field once, or make one direction = "read"',
                )
            written_by.setdefault(fm.canonical, fm.native)
            for other_where, other_path, other in writers:
                if path.overlaps(other_path):
                    clash = (
                        f"the native name {fm.native!r} is already written by {other_where}"
                        if path == other_path
                        else f"the native name {fm.native!r} overlaps {other.native!r}, "
                        f"written by {other_where}"
                    )
                    problem(
                        where,
                        clash,
                        'write each native name from one field; make the others direction = "read"',
                    )
                    break
            writers.append((where, path, fm))


# ------------------------------------------------------------------------------------ loading


def _regioned(spec: Any, region: str) -> Any:
    """A transform spec whose ``phone`` transforms default to ``region`` (the config's
    ``region``) instead of the US; an explicit ``region`` parameter wins."""
    if region == model.DEFAULT_REGION:
        return spec
    if spec == "phone":
        return {"name": "phone", "region": region}
    if isinstance(spec, Mapping) and spec.get("name") == "phone" and "region" not in spec:
        return {**spec, "region": region}
    if isinstance(spec, list):
        return [_regioned(s, region) for s in spec]
    return spec


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


def _parse_text(
    text: str,
    *,
    entity: str,
    source: str,
    timezone: str | None = None,
    region: str | None = None,
) -> EntityMapping:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        location = source
        position = _TOML_POSITION.search(message)
        if position:
            location = f"{source}:{position.group(1)}:{position.group(2)}"
            message = message[: position.start()]
        elif _TOML_END.search(message):
            location = f"{source}: end of file"
            message = _TOML_END.sub("", message)
        raise ConfigError(
            [
                Problem(
                    location,
                    f"TOML syntax error: {message}",
                    'check quotes, brackets and "=" on that line',
                )
            ]
        ) from None
    return parse_mapping(data, entity=entity, source=source, timezone=timezone, region=region)


def _read_text(path: Path | Traversable, source: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(source, f"is not UTF-8 text ({exc.reason})", "save the file as UTF-8")]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [
                Problem(
                    source,
                    f"cannot read the mapping file: {exc.strerror or exc}",
                    "check the path and the file's permissions",
                )
            ]
        ) from None


def load_mapping_file(
    path: Path | str, *, entity: str, timezone: str | None = None, region: str | None = None
) -> EntityMapping:
    """Load and check one mapping file of ``entity``."""
    source = str(path)
    return _parse_text(
        _read_text(Path(path), source),
        entity=entity,
        source=source,
        timezone=timezone,
        region=region,
    )


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def default_mapping_path(connector_type: str, entity: str) -> Traversable:
    """Where the default mapping of (connector type, entity) is installed."""
    for what, name in (("connector type", connector_type), ("entity", entity)):
        if not _NAME.fullmatch(name) or ".." in name:
            raise ConfigError([Problem(what, f"{name!r} is not a valid {what} name")])
    try:
        root: Traversable = importlib.resources.files("syncengine.mappings")
    except ModuleNotFoundError:
        # a source checkout that is not installed: mappings/ sits beside syncengine/
        root = Path(__file__).resolve().parent.parent / "mappings"
    return root / connector_type / f"{entity}.toml"


def load_mapping(
    connector_type: str,
    entity: str,
    override: str | Path | None = None,
    *,
    timezone: str | None = None,
    region: str | None = None,
) -> EntityMapping:
    """The mapping of ``entity`` for ``connector_type``: the ``override`` file when given (it
    replaces the default entirely), else the default installed with syncengine. ``timezone``
    (a member's option) is the default zone of the ``date`` transforms in it, ``region`` (the
    config's) the default region of its phone numbers."""
    if override is not None:
        return load_mapping_file(Path(override), entity=entity, timezone=timezone, region=region)
    path = default_mapping_path(connector_type, entity)
    source = f"mappings/{connector_type}/{entity}.toml"
    if not path.is_file():
        raise ConfigError(
            [
                Problem(
                    source,
                    f"there is no default mapping of {entity} for connector type "
                    f"{connector_type!r}",
                    "a member syncs every entity of its pipeline unless "
                    "[pipelines.member_entities] says otherwise: if the member holds no "
                    f"{entity} (a CRM of customers only), list what it syncs there "
                    '(crm = ["customers"]); or write a mapping file of '
                    f"{entity} for it and name it in the pipeline's [pipelines.mappings.MEMBER] "
                    f'table ({entity} = "FILE")',
                )
            ]
        )
    return _parse_text(
        _read_text(path, source), entity=entity, source=source, timezone=timezone, region=region
    )


def _transform_key(transform: Any) -> str:
    """A stable text for a transform: its name and its plain settings (never an object's
    address, which changes from run to run)."""
    if transform is None:
        return ""
    parts = getattr(transform, "parts", None)
    if isinstance(parts, list | tuple):
        return " | ".join(_transform_key(p) for p in parts)
    name = str(getattr(transform, "name", type(transform).__name__))
    settings = getattr(transform, "__dict__", {})
    plain = sorted(
        (k, repr(v))
        for k, v in settings.items()
        if k != "name" and isinstance(v, str | int | float | bool | type(None) | tuple)
    )
    return f"{name}{plain}" if plain else name
