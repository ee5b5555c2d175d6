"""The options of a ``rest`` member: one REST API described in configuration.

Everything is checked when the configuration is loaded (``syncengine validate``), before any
request: paths and method templates, dotted paths, the auth and pagination styles (registries
by name: an unknown name lists the known ones) and their settings, and the settings that only
make sense together. Problems are reported at the setting's location
(``connectors.crm.entities.customers.pagination``) with the fix in the message.

An example, for json-server::

    [connectors.crm]
    type = "rest"
    base_url = "http://127.0.0.1:3000"
    page_size = 100

    [connectors.crm.auth]                     # optional; see syncengine.connectors.rest.auth
    style = "bearer"
    token = "${CRM_TOKEN}"

    [connectors.crm.entities.customers]
    path = "/customers"                       # list GET /customers, get GET /customers/{id},
                                              # create POST /customers, update PATCH
                                              # /customers/{id}, delete DELETE /customers/{id}
    update = "PUT /customers/{id}"            # any operation can be given explicitly,
    delete = false                            # or switched off (the member cannot delete)
    id_field = "id"
    updated_field = "updatedAt"
    records_path = ""                         # the list response is the list itself
    find_params = { email = "email" }         # crash recovery: GET /customers?email=...
    pagination = { style = "link", page_param = "_page", size_param = "_limit" }
"""

from __future__ import annotations

import builtins
import difflib
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from syncengine import model
from syncengine.connector import ConnectorOptions
from syncengine.connectors.rest.auth import AUTH_STYLES, AuthOptions, NoAuth
from syncengine.connectors.rest.paging import PAGINATORS, NoPaginationOptions, PaginationOptions
from syncengine.connectors.rest.shape import dotted
from syncengine.numbers import Float, Int
from syncengine.registry import Registry

__all__ = [
    "OPERATIONS",
    "DuplicateOptions",
    "EntityOptions",
    "FindOptions",
    "IncrementalOptions",
    "RestOptions",
    "Route",
    "Routes",
]

T = TypeVar("T")

Operation = Literal["list", "get", "create", "update", "delete"]
OPERATIONS: tuple[Operation, ...] = ("list", "get", "create", "update", "delete")
METHODS: dict[str, tuple[str, ...]] = {
    "list": ("GET",),
    "get": ("GET",),
    "create": ("POST", "PUT"),
    "update": ("PATCH", "PUT", "POST"),
    "delete": ("DELETE", "POST"),
}
"""The methods each operation may use; the first is the default."""
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
QueryValue = str | int | float | bool


def _problem(message: str) -> PydanticCustomError:
    """A validation error whose text is ``message`` exactly (no "Value error," prefix)."""
    return PydanticCustomError("rest_config", "{message}", {"message": message})


def _checked_route(text: str, op: str) -> Route:
    try:
        return parse_route(text, op)
    except ValueError as exc:
        raise _problem(str(exc)) from None


def _checked_dotted(text: str) -> str:
    try:
        dotted(text)
    except ValueError as exc:
        raise _problem(str(exc)) from None
    return text


# ------------------------------------------------------------------------------------ routes


@dataclass(frozen=True)
class Route:
    """One operation's method and path template (``PATCH /contacts/{id}``)."""

    method: str
    template: str

    def path(self, native_id: str | None = None) -> str:
        if native_id is None:
            return self.template
        return self.template.replace("{id}", quote(native_id, safe=""))

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


@dataclass(frozen=True)
class Routes:
    list: Route
    get: Route | None
    create: Route | None
    update: Route | None
    delete: Route | None


def parse_route(text: str, op: str) -> Route:
    """``"PATCH /contacts/{id}"`` or ``"/contacts/{id}"`` (the operation's default method).
    Raises ``ValueError`` saying what is wrong."""
    parts = text.split()
    if len(parts) == 1:
        method, template = METHODS[op][0], parts[0]
    elif len(parts) == 2:
        method, template = parts[0].upper(), parts[1]
    else:
        raise ValueError(
            f"{text!r} is not 'METHOD /path' (e.g. {METHODS[op][0]} "
            f"/contacts{'/{id}' if op in ('get', 'update', 'delete') else ''})"
        )
    if method not in METHODS[op]:
        raise ValueError(f"{op} cannot use {method} (use {' or '.join(METHODS[op])})")
    if not template.startswith("/"):
        raise ValueError(f"the path {template!r} must start with '/' (it is relative to base_url)")
    if "?" in template or "#" in template:
        raise ValueError(f"the path {template!r} has a query; put query parameters in list_params")
    names = _PLACEHOLDER.findall(template)
    unknown = [n for n in names if n != "id"]
    if unknown:
        raise ValueError(
            f"the path {template!r} has the placeholder {{{unknown[0]}}}; only {{id}} is known"
        )
    stray = _PLACEHOLDER.sub("", template)
    if "{" in stray or "}" in stray:
        raise ValueError(f"the path {template!r} has an unmatched brace")
    needs_id = op in ("get", "update", "delete")
    if needs_id and names.count("id") != 1:
        raise ValueError(
            f"the path {template!r} must hold {{id}} once (where the record's id goes)"
        )
    if not needs_id and names:
        raise ValueError(f"the path {template!r} must not hold {{id}} ({op} names no record)")
    return Route(method, template)


# ------------------------------------------------------------------------- registry dispatch


def _styled(
    value: Any,
    registry: Registry[T],
    options_of: Callable[[T], type[BaseModel]],
    kind: str,
    example: str,
) -> Any:
    """Validate a ``{style = ..., ...}`` table with the options model of the style it names
    (``options_of`` the registered item)."""
    if isinstance(value, BaseModel):
        return value
    if isinstance(value, str):
        value = {"style": value}
    if not isinstance(value, Mapping):
        raise _problem(f'must be a table such as {{ style = "{example}" }}')
    known = registry.known()
    style = value.get("style")
    if style is None:
        raise _problem(f"style is required (use one of: {known})")
    if not isinstance(style, str) or style not in registry:
        close = registry.closest(style)
        hint = f"did you mean {close!r}? " if close else ""
        raise _problem(f"unknown {kind} style {style!r} ({hint}use one of: {known})")
    options_model = options_of(registry[style])
    try:
        return options_model.model_validate(dict(value))
    except ValidationError as err:
        raise _problem("; ".join(_describe_errors(err, options_model, kind, style))) from None


def _describe_errors(
    err: ValidationError, options_model: type[BaseModel], kind: str, style: str
) -> list[str]:
    """The errors of a style's table, named by key; never showing a value (secrets)."""
    out = []
    known = sorted(options_model.model_fields)
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            out.append(f"unknown key {key!r} for {kind} style {style!r} ({fix})")
        elif item["type"] == "missing":
            out.append(f"{key} is required for {kind} style {style!r}")
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            out.append(f"{key}: {message}")
    return out


def _with_known_keys(err: ValidationError, model_cls: type[BaseModel]) -> ValidationError:
    """``err`` with each unknown-key error saying which keys are known (and the closest)."""
    details: builtins.list[InitErrorDetails] = []
    for item in err.errors():
        if item["type"] != "extra_forbidden":  # kept as it was (its type, message, input)
            kept = PydanticCustomError(item["type"], "{message}", {"message": item["msg"]})
            details.append(InitErrorDetails(type=kept, loc=item["loc"], input=item["input"]))
            continue
        loc = item["loc"]
        key = str(loc[-1])
        known = _fields_at(model_cls, loc[:-1])
        close = difflib.get_close_matches(key, known, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        details.append(
            InitErrorDetails(type=_problem(f"unknown key {key!r} ({fix})"), loc=loc, input=key)
        )
    return ValidationError.from_exception_data(err.title, details)


def _fields_at(model_cls: type[BaseModel], loc: tuple[int | str, ...]) -> builtins.list[str]:
    current: type[BaseModel] | None = model_cls
    for part in loc:
        if current is None or str(part) not in current.model_fields:
            return []
        annotation = current.model_fields[str(part)].annotation
        choices = typing.get_args(annotation) or (annotation,)  # X | None: X
        current = next(
            (c for c in choices if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return sorted(current.model_fields) if current is not None else []


def _auth_options(value: Any) -> Any:
    return _styled(value, AUTH_STYLES, lambda style: style, "auth", "bearer")


def _pagination_options(value: Any) -> Any:
    return _styled(value, PAGINATORS, lambda paginator: paginator.Options, "pagination", "page")


# ------------------------------------------------------------------------------- per entity

_FIELD_PATTERN_PART = re.compile(r"[^.\s\[\]{}]+")
_BODY_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _checked_pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise _problem(f"{text!r} is not a regular expression ({exc})") from None


_NOT_DUPLICATE = {
    401: "the credentials were refused",
    407: "the proxy wants credentials",
    429: "too many requests (it is waited out and retried)",
}
"""Statuses a duplicate refusal cannot have: taking one for a duplicate would link a record
to whatever a lookup finds instead of reporting (or retrying) the refusal."""


class DuplicateOptions(BaseModel):
    """How the API refuses a create as a duplicate (``duplicate = { status = 409, id_pattern =
    "Existing ID: (\\d+)" }``). Such a refusal links the record to the existing one: its id
    is taken from the answer with ``id_pattern`` (its first group), else the record is looked
    up with ``find``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Int = Field(default=409, ge=400, le=499)
    """The HTTP status of a duplicate refusal."""
    message_pattern: str = ""
    """Optional: a regular expression the answer's text must match to count as a duplicate
    (for APIs whose duplicate status also means other things, such as 400)."""
    id_pattern: str = ""
    """Optional: a regular expression whose first group is the existing record's id in the
    answer's text; without it (or without a match) the record is looked up with ``find``."""

    @field_validator("status")
    @classmethod
    def _status(cls, value: int) -> int:
        meaning = _NOT_DUPLICATE.get(value)
        if meaning is not None:
            raise _problem(
                f"{value} means {meaning}, never a duplicate: use the status the API refuses "
                "a duplicate create with (409 by default; 400 or 422 with message_pattern)"
            )
        return value

    @field_validator("message_pattern")
    @classmethod
    def _message(cls, value: str) -> str:
        if value:
            _checked_pattern(value)
        return value

    @field_validator("id_pattern")
    @classmethod
    def _id(cls, value: str) -> str:
        if value and _checked_pattern(value).groups < 1:
            raise _problem(
                f'{value!r} has no group: put the id in parentheses, e.g. "Existing ID: (\\d+)"'
            )
        return value


class FindOptions(BaseModel):
    """A lookup request of its own (``find = { method = "POST", path = "/objects/search",
    body = {...}, records_path = "results" }``), for APIs whose search is not a list filter.
    Texts of ``body`` (and of ``params`` for GET) may hold ``{native.path}`` placeholders: the
    record's value at that dotted path (a text that is just one placeholder takes the value
    with its JSON type)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["GET", "POST"] = "POST"
    path: str
    body: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, QueryValue] = Field(default_factory=dict)
    records_path: str = ""
    """Dotted path of the list of records in the answer; empty: the body is the list."""

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _route(cls, value: str) -> str:
        if len(value.split()) > 1:
            raise _problem(
                f'{value!r} is not a path: give the path alone (path = "/contacts/search") '
                'and the method in method = "POST" or "GET"'
            )
        if "?" in value or "#" in value:
            raise _problem(
                f"the path {value!r} has a query; put query parameters in params "
                '(params = { archived = "false" })'
            )
        if "{" in value or "}" in value:
            raise _problem(
                f"the path {value!r} holds a brace: a find path is sent as written; the "
                "record's values go in body or params placeholders"
            )
        _checked_route(value, "list")
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(item, QueryValue):
                    raise _problem(
                        f"{key} is a {type(item).__name__}: a query parameter is a "
                        'text, a number or true/false (e.g. q = "{email}")'
                    )
        return value

    @field_validator("records_path")
    @classmethod
    def _records(cls, value: str) -> str:
        return _checked_dotted(value)

    @model_validator(mode="after")
    def _placeholders(self) -> FindOptions:
        if self.method == "GET" and self.body:
            raise _problem('a GET find sends no body: use params, or method = "POST"')
        for where, text, is_key in self._texts():
            if is_key and _BODY_PLACEHOLDER.search(text):
                raise _problem(
                    f"{where}: the key {text!r} holds a placeholder, which only values "
                    "may hold (a key is sent as written)"
                )
            if "{}" in text:
                raise _problem(
                    f"{where}: {text!r} has an empty placeholder {{}}: name the record's "
                    'field in it, e.g. "{email}"'
                )
            stray = _BODY_PLACEHOLDER.sub("", text)
            if "{" in stray or "}" in stray:
                raise _problem(
                    f"{where}: {text!r} has an unmatched brace; braces only mark "
                    'placeholders, e.g. "{email}" (a dotted native path)'
                )
        names = self.placeholders()
        if not names:
            raise _problem(
                "the find request names no field of the record: put a placeholder such as "
                '"{email}" (a dotted native path) in its body or params'
            )
        for name in names:
            try:
                dotted(name)
            except ValueError as exc:
                raise _problem(f"placeholder {{{name}}}: {exc}") from None
        return self

    def _texts(self) -> builtins.list[tuple[str, str, bool]]:
        """Every text of the body and params, with where it is (``body.filters.0.value``) and
        whether it is a key."""
        found: builtins.list[tuple[str, str, bool]] = []

        def walk(value: Any, where: str) -> None:
            if isinstance(value, str):
                found.append((where, value, False))
            elif isinstance(value, Mapping):
                for key, item in value.items():
                    found.append((f"{where}.{key}", str(key), True))
                    walk(item, f"{where}.{key}")
            elif isinstance(value, builtins.list):
                for index, item in enumerate(value):
                    walk(item, f"{where}.{index}")

        walk(self.body, "body")
        walk(self.params, "params")
        return found

    def placeholders(self) -> builtins.list[str]:
        """The native paths the request's texts name, in order."""
        found: builtins.list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, str):
                found.extend(_BODY_PLACEHOLDER.findall(value))
            elif isinstance(value, Mapping):
                for item in value.values():
                    walk(item)
            elif isinstance(value, builtins.list):
                for item in value:
                    walk(item)

        walk(self.body)
        walk(self.params)
        return found


def _duplicate_options(value: Any) -> Any:
    if value is True:
        return DuplicateOptions()
    if value is False:
        return None
    return value


class IncrementalOptions(BaseModel):
    """Reading only what changed since the last read, where the API can filter by update time.

    Off by default. When enabled, ``read()`` still lists everything (the engine takes a record
    missing from a read as deleted); the connector's ``read_incremental`` (for an engine that
    supports partial reads) sends ``param`` = the newest ``updated_field`` value seen, less
    ``overlap_seconds``, and makes a full pass at least every ``full_every_hours`` so that
    deletes are still seen.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    param: str = ""
    """The query parameter that filters by update time (``updated_since``, ``updatedAt_gte``)."""
    full_every_hours: Float = Field(default=24.0, gt=0)
    overlap_seconds: Float = Field(default=60.0, ge=0)
    """Records updated this long before the newest one seen are read again (a record updated
    while a pass was reading could otherwise be missed)."""


class EntityOptions(BaseModel):
    """``[connectors.<name>.entities.<entity>]``: one resource of the API."""

    model_config = ConfigDict(extra="forbid")

    path: str = ""
    """The collection's path; each operation not given defaults from it."""
    list: str = Field(default="", validate_default=True)
    get: str | bool | None = None
    create: str | bool | None = None
    update: str | bool | None = None
    delete: str | bool | None = None
    id_field: str = "id"
    updated_field: str = ""
    records_path: str = ""
    """Dotted path of the list of records in a list response; empty: the body is the list."""
    response_path: str = ""
    """Dotted path of the record in a single-record response (``contact``); empty: the body."""
    body_wrap: str = ""
    """Dotted path the record is put under in request bodies (``contact``); empty: bare."""
    list_params: dict[str, QueryValue] = Field(default_factory=dict)
    """Query parameters sent with every list request (a sort order, a filter)."""
    read_only_fields: builtins.list[str] = Field(default_factory=builtins.list)
    """Fields never sent in a create or update: dotted paths (``properties.createdate``),
    each part may use ``*`` and ``?`` wildcards (``properties.hs_*``). The id field is never
    sent either."""
    find_params: dict[str, str] = Field(default_factory=dict)
    """Native field -> query parameter that filters the list by it, tried in order to find a
    record an interrupted run may have created; without any, the whole list is scanned."""
    find_scan: bool = True
    """Scan the whole list when no ``find_params`` search found the record (false: trust the
    server's filters, and save a listing per interrupted create that never arrived)."""
    update_body: Literal["leaves", "top_level"] = "leaves"
    """What a PATCH (or POST) update sends: ``leaves``, only the changed fields nested as
    their paths say (for APIs that merge nested objects, RFC 7396); ``top_level``, each
    changed top-level key whole (for APIs that replace a nested object sent, such as
    json-server)."""
    find: FindOptions | None = None
    """A lookup request of its own (a POST search), used instead of ``find_params``."""
    duplicate: DuplicateOptions | None = Field(default_factory=DuplicateOptions)
    """How a create refused as a duplicate is recognised (default: HTTP 409); such a create
    links to the existing record. ``duplicate = false``: a refusal is a failure."""
    pagination: PaginationOptions = Field(default_factory=NoPaginationOptions)
    incremental: IncrementalOptions = Field(default_factory=IncrementalOptions)

    _routes: Routes | None = PrivateAttr(default=None)

    # Field validators see the fields declared before theirs (``info.data``), so the checks
    # that involve two settings run with the second one and every problem is reported at once.

    @field_validator("path")
    @classmethod
    def _collection(cls, value: str) -> str:
        if value:
            _checked_route(value, "list")
        return value.rstrip("/") if value != "/" else value

    @field_validator("list", mode="after")
    @classmethod
    def _list_route(cls, value: str, info: ValidationInfo) -> str:
        if value:
            _checked_route(value, "list")
        elif "path" in info.data and not info.data["path"]:
            raise _problem(
                'say where the records are: path = "/contacts" (every operation defaults '
                'from it) or at least list = "GET /contacts"'
            )
        return value

    @field_validator("get", "create", "update", "delete")
    @classmethod
    def _op_route(cls, value: str | bool | None, info: ValidationInfo) -> str | bool | None:
        op = str(info.field_name)
        if isinstance(value, str):
            _checked_route(value, op)
        elif value is True and "path" in info.data and not info.data["path"]:
            raise _problem(f"{op} = true needs path (or give {op} as 'METHOD /path')")
        return value

    @field_validator("id_field")
    @classmethod
    def _id_path(cls, value: str) -> str:
        if not value:
            raise _problem("is required: the key holding each record's id")
        return _checked_dotted(value)

    @field_validator("updated_field", "records_path", "response_path", "body_wrap")
    @classmethod
    def _dotted(cls, value: str) -> str:
        return _checked_dotted(value)

    @field_validator("find_params")
    @classmethod
    def _finders(cls, value: dict[str, str]) -> dict[str, str]:
        for native, param in value.items():
            _checked_dotted(native)
            if not param.strip():
                raise _problem(f"the query parameter for {native!r} is empty")
        return value

    @field_validator("read_only_fields", mode="before")
    @classmethod
    def _read_only_list(cls, value: Any) -> Any:
        if not isinstance(value, builtins.list) or not all(isinstance(v, str) for v in value):
            raise _problem(
                'must be a list of dotted field paths, e.g. read_only_fields = ["createdAt", '
                '"properties.hs_*"]'
            )
        return value

    @field_validator("read_only_fields")
    @classmethod
    def _read_only(cls, value: builtins.list[str]) -> builtins.list[str]:
        for text in value:
            parts = text.split(".")
            bad = [p for p in parts if not _FIELD_PATTERN_PART.fullmatch(p)]
            if bad:
                raise _problem(
                    f"{text!r} is not a dotted field path (part {bad[0]!r}); write keys "
                    "separated by '.', with * or ? as wildcards: properties.hs_*"
                )
            if len(parts) == 1 and "*" in text and not text.strip("*?"):
                raise _problem(
                    f"{text!r} matches every field, so nothing would ever be sent: name the "
                    "fields the API sets itself (createdAt, properties.hs_*)"
                )
        return value

    @field_validator("find")
    @classmethod
    def _find(cls, value: FindOptions | None, info: ValidationInfo) -> FindOptions | None:
        if value is not None and info.data.get("find_params"):
            raise _problem(
                "find replaces find_params, which would never be used: remove find_params "
                "(or find, to filter the list instead)"
            )
        return value

    @field_validator("duplicate", mode="before")
    @classmethod
    def _duplicate(cls, value: Any) -> Any:
        return _duplicate_options(value)

    @field_validator("pagination", mode="before")
    @classmethod
    def _pagination(cls, value: Any) -> Any:
        return _pagination_options(value)

    @field_validator("incremental")
    @classmethod
    def _incremental(cls, value: IncrementalOptions, info: ValidationInfo) -> IncrementalOptions:
        if not value.enabled:
            return value
        problems = []
        if "updated_field" in info.data and not info.data["updated_field"]:
            problems.append(
                "incremental.enabled needs updated_field (the key holding each "
                "record's update time)"
            )
        if not value.param:
            problems.append(
                "incremental.enabled needs incremental.param (the query parameter "
                "that filters by update time, e.g. updated_since)"
            )
        if problems:
            raise _problem("; ".join(problems))
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _unknown_keys(
        cls, data: Any, handler: ModelWrapValidatorHandler[EntityOptions]
    ) -> EntityOptions:
        """Unknown keys named with the known ones (the loader cannot look inside the
        ``entities`` table to list them)."""
        try:
            return handler(data)
        except ValidationError as err:
            raise _with_known_keys(err, cls) from None

    @model_validator(mode="after")
    def _whole(self) -> EntityOptions:
        self._routes = self._make_routes()
        return self

    def _make_routes(self) -> Routes:
        base = self.path
        defaults = {
            "list": f"GET {base}",
            "get": f"GET {base}/{{id}}",
            "create": f"POST {base}",
            "update": f"PATCH {base}/{{id}}",
            "delete": f"DELETE {base}/{{id}}",
        }
        found: dict[str, Route | None] = {}
        for op in ("get", "create", "update", "delete"):
            given = getattr(self, op)
            if given is False or (given is None and not base):
                found[op] = None
            elif isinstance(given, str):
                found[op] = parse_route(given, op)
            else:
                found[op] = parse_route(defaults[op], op)
        listing = parse_route(self.list or defaults["list"], "list")
        return Routes(listing, found["get"], found["create"], found["update"], found["delete"])

    def routes(self) -> Routes:
        if self._routes is None:
            self._routes = self._make_routes()
        return self._routes

    def steps(self, name: str) -> tuple[str, ...]:
        """A dotted setting as its keys (``records_path`` -> ``("data", "items")``)."""
        value = getattr(self, name)
        assert isinstance(value, str)
        return dotted(value)

    def read_only_keys(self) -> frozenset[str]:
        """Top-level keys never sent: the id field's and ``read_only_fields`` without dots
        or wildcards."""
        plain = {f for f in self.read_only_fields if "." not in f and not _has_wildcard(f)}
        return frozenset({self.steps("id_field")[0], *plain})

    def read_only_patterns(self) -> tuple[tuple[str, ...], ...]:
        """Every field never sent, as path parts that may hold wildcards: the id field and
        ``read_only_fields``."""
        return (self.steps("id_field"), *(tuple(f.split(".")) for f in self.read_only_fields))


def _has_wildcard(text: str) -> bool:
    return any(c in text for c in "*?[")


# ------------------------------------------------------------------------------ the member


def _entity_name(name: str) -> str:
    if name not in model.ENTITIES:
        close = difflib.get_close_matches(name, list(model.ENTITIES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _problem(
            f"unknown entity {name!r} ({hint}use one of: {', '.join(sorted(model.ENTITIES))}; "
            "the API's own name for it goes in path)"
        )
    return name


class RestOptions(ConnectorOptions):
    """``[connectors.<name>]`` of ``type = "rest"``."""

    type: str = "rest"
    base_url: str
    auth: AuthOptions = Field(default_factory=NoAuth)
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every request (``Accept``, an API version). Credentials go in ``auth``."""
    timeout: Float = Field(default=30.0, gt=0)
    max_retries: Int = Field(default=5, ge=0, le=20)
    rate_limit: Float = Field(default=5.0, ge=0)
    """Requests per second, client side; 0 turns the limit off."""
    page_size: Int = Field(default=100, ge=1, le=10_000)
    concurrency: Int = Field(default=4, ge=1, le=32)
    """How many writes the engine may run at once against this member."""
    entities: dict[Annotated[str, AfterValidator(_entity_name)], EntityOptions] = Field(
        min_length=1
    )
    """The entities this API holds, by canonical name (customers, invoices, payments, jobs)."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise _problem(
                "must be an http:// or https:// URL without a query, "
                "e.g. https://api.example.com/v2"
            )
        return value.rstrip("/")

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: Any) -> Any:
        return _auth_options(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.fullmatch(name):
                raise _problem(f"{name!r} is not a valid header name")
            if name.lower() in ("authorization", "proxy-authorization", "cookie"):
                raise _problem(
                    f"{name} carries credentials: describe them in [auth] instead (style = "
                    "bearer, token, header, basic or query), so that they are redacted"
                )
        return value
