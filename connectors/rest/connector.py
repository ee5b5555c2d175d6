"""The generic REST connector: any JSON REST API described in configuration.

See ``syncengine.connectors.rest.options`` for the options, ``.auth`` and ``.paging`` for the
auth and pagination styles. Behaviour:

- **read** lists every record of an entity page by page through its pagination style; a
  record is the object as the API gives it, its id the value at ``id_field`` (numbers become
  text). A response not shaped as described (no list at ``records_path``, a record without an
  id), a pagination loop or an auth failure stops the read with an error naming the
  connector, the entity and the setting; since the engine reads every member before it writes,
  nothing is written then.
- **create** sends the record (without the id and ``read_only_fields``, inside ``body_wrap``)
  and takes the created record from the response (at ``response_path``). It is never retried:
  a create whose outcome is unknown is looked up with ``find`` by the engine's recovery. A
  create refused as a duplicate (``duplicate``: HTTP 409 by default) returns the existing
  record instead: fetched by the id ``duplicate.id_pattern`` finds in the answer, else looked
  up with ``find`` by the searched fields. The engine links to it like to a created record,
  and the next sync merges it by the normal rules.
- **update** sends, for ``PATCH`` and ``POST``, only the changed fields, nested as their
  paths say (``properties.lastname`` -> ``{"properties": {"lastname": ...}}``; a path with
  a list selection sends its whole top-level key); for ``PUT``, the whole record as read with
  the changes applied. Either way without the id and ``read_only_fields`` (dotted paths,
  wildcards allowed). An update of a missing record raises ``NotFoundError``.
- **delete** treats 404/410 as already deleted.
- **find** sends the ``find`` request (a POST search with a templated body) when there is
  one, else filters the list by ``find_params`` (one parameter at a time, in order), and keeps
  the records holding every value written; when no search applies or finds anything it
  scans the whole list (``find_scan = false`` trusts the searches instead).
- **read_incremental** (only with ``incremental.enabled``) reads what changed since a mark;
  see ``.incremental``.

Test hooks in ``ConnectorContext.extra``: ``transport`` (an ``httpx.BaseTransport``),
``sleep`` (replaces ``time.sleep``) and ``clock`` (replaces ``time.time`` for incremental
passes).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import httpx

from syncengine.connector import (
    Capabilities,
    Connector,
    ConnectorContext,
    ConnectorOptions,
    NativeData,
    NativeRecord,
    ReadPass,
    Structure,
)
from syncengine.connectors.rest.options import EntityOptions, RestOptions, Route
from syncengine.connectors.rest.paging import PAGINATORS, Page, PageRequest, origin_of
from syncengine.connectors.rest.presence import Presence, readable_paths
from syncengine.connectors.rest.shape import (
    MISSING,
    Where,
    dig,
    dotted,
    fill,
    id_of,
    records_of,
    unwrap,
    without,
    wrap,
)
from syncengine.errors import (
    AuthError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
)
from syncengine.http import QueryScalar, connector_client, error_message, is_html
from syncengine.incremental import (
    HighWater,
    Mark,
    decode_token,
    encode_token,
    full_pass_due,
    mark_param,
)
from syncengine.mapping import EntityMapping, NativePath, parse_path

Pairs = list[tuple[str, QueryScalar]]


class RestConnector(Connector):
    """A REST API described in configuration. See the module docstring."""

    type_name: ClassVar[str] = "rest"
    Options: ClassVar[type[ConnectorOptions]] = RestOptions
    reads_json: ClassVar[bool] = True  # records as the API's JSON decodes

    def __init__(self, options: ConnectorOptions, context: ConnectorContext) -> None:
        super().__init__(options, context)
        if not isinstance(options, RestOptions):
            options = RestOptions.model_validate(options.model_dump())
        self.opts: RestOptions = options
        self.auth_params: dict[str, str] = options.auth.params()
        self.clock: Callable[[], float] = context.extra.get("clock", time.time)
        self.http = connector_client(
            context,
            options.base_url,
            headers={**options.headers, **options.auth.headers()},
            timeout=options.timeout,
            max_retries=options.max_retries,
            rate_limit=options.rate_limit,
            secrets=options.auth.secrets(),
        )
        self.origin = origin_of(options.base_url)
        self._paths: dict[str, dict[str, NativePath]] = {}
        """entity -> the native paths the mapping in force reads (``prepare``)."""
        self._presence: dict[str, Presence] = {}
        """entity -> what its last complete listing showed of them (``structure``)."""

    # ---------------------------------------------------------------------------- description
    def entities(self) -> tuple[str, ...]:
        return tuple(self.opts.entities)

    def capabilities(self, entity: str) -> Capabilities:
        routes = self._spec(entity).routes()
        return Capabilities(
            read=True,
            create=routes.create is not None,
            update=routes.update is not None,
            delete=routes.delete is not None,
            assigns_ids=False,
        )

    # -------------------------------------------------------------------------------- reading
    def prepare(self, entity: str, mapping: EntityMapping) -> None:
        self._paths[entity] = readable_paths(mapping)

    def structure(self, entity: str) -> Structure:
        """The mapped fields that no record of the last complete listing had (see
        ``connectors.rest.presence``); nothing before a listing, or after a partial one."""
        presence = self._presence.get(entity)
        missing = presence.missing() if presence is not None else ()
        if not missing or presence is None:
            return Structure()
        return Structure(where=f"{self.name} {entity}", missing=missing, listed=presence.records)

    def read(self, entity: str) -> Iterator[NativeRecord]:
        """Every record of ``entity``: always the complete listing (see ``read_incremental``
        for reading only what changed)."""
        spec = self._spec(entity)
        yield from self._complete(entity, self._listing(entity, spec, []))

    def _complete(self, entity: str, records: Iterator[NativeRecord]) -> Iterator[NativeRecord]:
        """``records``, a complete listing, noting which mapped fields they show: known to
        ``structure`` once the listing ended."""
        self._presence.pop(entity, None)
        presence = Presence(self._paths.get(entity, {}))
        for record in records:
            presence.see(record.data)
            yield record
        self._presence[entity] = presence

    def read_incremental(self, entity: str, token: str | None) -> ReadPass | None:
        """Only the records updated since the mark in ``token`` (or everything, when a full
        pass is due), as ``Connector.read_incremental`` describes. None when the entity has no
        incremental reads configured: the engine then uses ``read``. See
        ``syncengine.connectors.rest.incremental``."""
        spec = self._spec(entity)
        inc = spec.incremental
        if not inc.enabled:
            return None
        mark = decode_token(token)
        started = self.clock()
        full = full_pass_due(mark, started, inc.full_every_hours)
        extra: Pairs = []
        if not full and mark.since is not None:
            extra.append((inc.param, mark_param(mark.since, inc.overlap_seconds)))
        water = HighWater(None if full else mark.since)
        updated = spec.steps("updated_field")

        def records() -> Iterator[NativeRecord]:
            listing = self._listing(entity, spec, extra)
            if full:
                listing = self._complete(entity, listing)
            else:  # a partial pass shows only what changed: nothing to go by
                self._presence.pop(entity, None)
            for record in listing:
                water.see(dig(record.data, updated))
                yield record

        def finish() -> str:
            return encode_token(Mark(water.value, started if full else mark.full_at))

        return ReadPass(records(), complete=full, finish=finish)

    def get(self, entity: str, native_id: str) -> NativeRecord | None:
        """One record by id (``get``), or None when there is none. Without a ``get`` route
        the list is scanned."""
        spec = self._spec(entity)
        route = spec.routes().get
        if route is None:
            return super().get(entity, native_id)
        path = self._record_path(entity, route, native_id)
        try:
            body = self._call(entity, route.method, path)
        except NotFoundError:
            return None
        where = self._where(entity)
        return self._native(
            entity, spec, unwrap(body, spec.steps("response_path"), where, f"{route.method} {path}")
        )

    def find(self, entity: str, data: NativeData) -> list[NativeRecord]:
        """Records holding every non-empty value of ``data`` (texts compared ignoring case
        and surrounding spaces), through ``find_params`` where they apply; when none applies
        or none finds anything, the list is scanned (unless ``find_scan = false``)."""
        spec = self._spec(entity)
        wanted = {k: v for k, v in without(data, spec.read_only_patterns()).items()}
        return self._find(entity, spec, data, wanted)

    def _find(
        self, entity: str, spec: EntityOptions, data: NativeData, wanted: NativeData
    ) -> list[NativeRecord]:
        """The records holding ``wanted`` among those the searches for ``data`` give."""
        wanted = {k: v for k, v in wanted.items() if not _empty(v)}

        def matching(records: Iterable[NativeRecord]) -> list[NativeRecord]:
            return [r for r in records if _holds(r.data, wanted)]

        if spec.find is not None:
            searched = self._search(entity, spec, data)
            if searched is None:
                return matching(self._listing(entity, spec, [])) if spec.find_scan else []
            found = matching(searched)
            if found or not spec.find_scan:
                return found
            return matching(self._listing(entity, spec, []))
        searches: Pairs = []
        for native, param in spec.find_params.items():
            value = dig(data, dotted(native))
            if (
                isinstance(value, str | int | float)
                and not isinstance(value, bool)
                and str(value).strip()
            ):
                searches.append((param, value))
        for search in searches:
            found = matching(self._listing(entity, spec, [search]))
            if found:
                return found
        if searches and not spec.find_scan:
            return []
        return matching(self._listing(entity, spec, []))

    def _search(
        self, entity: str, spec: EntityOptions, data: NativeData
    ) -> list[NativeRecord] | None:
        """The records the ``find`` request answers for ``data``; None when a field it names
        is empty in ``data`` (no search can be made)."""
        find = spec.find
        assert find is not None
        body, complete = fill(find.body, data)
        params, params_complete = fill(find.params, data)
        if not (complete and params_complete):
            return None
        where = self._where(entity)
        context = f"{find.method} {find.path} (find)"
        pairs: Pairs = [(k, v) for k, v in params.items()]
        try:
            response = self._send(
                entity, find.method, find.path, params=pairs, json=body or None, retry=True
            )
        except RecordError as exc:
            raise where.fatal(
                f"{context}: the server refused the search ({exc}); check the setting "
                f"{where.setting('find')}"
            ) from None
        decoded = self.http.decode(find.method, find.path, response)
        records = records_of(decoded, find.records_path, where, context)
        return [self._native(entity, spec, r) for r in records]

    # -------------------------------------------------------------------------------- writing
    def create(self, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        spec = self._spec(entity)
        route = self._route(entity, spec.routes().create, "create")
        body = wrap(without(data, spec.read_only_patterns()), spec.steps("body_wrap"))
        path = route.path()
        where = self._where(entity)
        context = f"{route.method} {path}"
        duplicate = spec.duplicate
        allowed = (duplicate.status,) if duplicate is not None else ()
        response = self._send(
            entity, route.method, path, json=body, retry=False, allow_status=allowed
        )
        if duplicate is not None and response.status_code == duplicate.status:
            return self._existing(entity, spec, data, response, context)
        decoded = self.http.decode(route.method, path, response)
        if decoded is None:
            raise where.fatal(
                f"{context}: the server answered without a record, so the new record's id is "
                "unknown; does it return the record at another path (response_path)?"
            )
        record = unwrap(decoded, spec.steps("response_path"), where, context)
        return self._native(entity, spec, record)

    def update(
        self,
        entity: str,
        native_id: str,
        patch: NativeData,
        *,
        full: NativeData,
        new_id: str | None = None,
    ) -> NativeRecord | None:
        spec = self._spec(entity)
        route = self._route(entity, spec.routes().update, "update")
        if new_id is not None and new_id != native_id:
            raise FatalConnectorError(
                f"cannot give record {native_id} the id {new_id}: this API assigns ids",
                connector=self.name,
                entity=entity,
            )
        if route.method == "PUT":
            body = without(full, spec.read_only_patterns())
        else:
            changed = (
                _changed(patch, full)
                if spec.update_body == "leaves"
                else {k: full.get(k) for k in {_top_key(name, full) for name in patch}}
            )
            body = without(changed, spec.read_only_patterns())
        if not body:
            return None
        path = self._record_path(entity, route, native_id)
        decoded = self._call(
            entity, route.method, path, json=wrap(body, spec.steps("body_wrap")), retry=True
        )
        record = dig(decoded, spec.steps("response_path"))
        if not isinstance(record, dict) or dig(record, spec.steps("id_field")) in (MISSING, None):
            return None  # no record in the answer (204, {"ok": true}): the engine takes `full`
        returned = self._native(entity, spec, record)
        return returned if returned.id == native_id else None

    def delete(self, entity: str, native_id: str) -> None:
        spec = self._spec(entity)
        route = self._route(entity, spec.routes().delete, "delete")
        path = self._record_path(entity, route, native_id)
        response = self._send(entity, route.method, path, allow_status=(404, 410))
        if response.status_code == 404 and is_html(response):
            raise self._where(entity).fatal(
                f"{route.method} {path}: the server has no such route (an HTML 404 page); "
                f"check the setting {self._where(entity).setting('delete', str(route))}, or set "
                "delete = false if this API cannot delete"
            )

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------------ internals
    def _spec(self, entity: str) -> EntityOptions:
        spec = self.opts.entities.get(entity)
        if spec is None:
            raise FatalConnectorError(
                f"unknown entity {entity!r} (this connector has: "
                f"{', '.join(self.opts.entities)}); add [connectors.{self.name}.entities."
                f"{entity}]",
                connector=self.name,
                entity=entity,
            )
        return spec

    def _where(self, entity: str) -> Where:
        return Where(self.name, entity, self.http.redact)

    def _route(self, entity: str, route: Route | None, op: str) -> Route:
        if route is None:
            raise FatalConnectorError(
                f"{op} is switched off for {entity} ({op} = false, or no path)",
                connector=self.name,
                entity=entity,
            )
        return route

    def _record_path(self, entity: str, route: Route, native_id: str) -> str:
        if not native_id or native_id.strip() != native_id:
            raise FatalConnectorError(
                f"invalid record id {native_id!r}", connector=self.name, entity=entity
            )
        return route.path(native_id)

    def _params(self, params: Sequence[tuple[str, QueryScalar]]) -> Pairs:
        """``params`` with the auth parameters (replacing any of the same name)."""
        mine = [(k, v) for k, v in params if k not in self.auth_params]
        return [*mine, *self.auth_params.items()]

    def _send(
        self,
        entity: str,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, QueryScalar]] = (),
        json: Any = None,
        retry: bool | None = None,
        allow_status: Sequence[int] = (),
    ) -> httpx.Response:
        try:
            return self.http.request(
                method,
                path,
                params=self._params(params),
                json=json,
                retry=retry,
                allow_status=allow_status,
            )
        except AuthError as exc:
            raise AuthError(
                self.http.redact(self._auth_hint(exc)), connector=self.name, entity=entity
            ) from None

    def _auth_hint(self, exc: AuthError) -> str:
        said = _without_prefix(exc, self.name)
        table = f"[connectors.{self.name}.auth]"
        style = self.opts.auth.style
        if style == "none":
            return (
                f"{said}; the server wants credentials: add {table} (style = bearer, "
                "token, header, basic or query)"
            )
        secret = "username and password" if style == "basic" else "token"
        return (
            f"{said}; the server refused the credentials (auth style {style!r} in {table}: "
            f"check the {secret} and the environment variable it comes from)"
        )

    def _call(
        self, entity: str, method: str, path: str, *, json: Any = None, retry: bool | None = None
    ) -> Any:
        response = self._send(entity, method, path, json=json, retry=retry)
        return self.http.decode(method, path, response)

    def _fetch(self, entity: str, spec: EntityOptions, request: PageRequest) -> Page:
        """One list request and its records."""
        where = self._where(entity)
        context = f"GET {spec.routes().list.template} {request.label}"
        try:
            response = self._send(entity, "GET", request.url, params=request.params)
        except NotFoundError as exc:
            raise where.fatal(
                f"{context}: {exc} — the list path does not exist (setting "
                f"{where.setting('list' if spec.list else 'path', spec.list or spec.path)})"
            ) from None
        except RecordError as exc:
            raise where.fatal(
                f"{context}: the server refused the list request ({exc}); check list_params "
                "and the pagination settings"
            ) from None
        body = self.http.decode("GET", request.url, response)
        records = records_of(body, spec.records_path, where, context)
        return Page(request, str(response.url), response.headers, body, records)

    def _listing(
        self, entity: str, spec: EntityOptions, extra: Sequence[tuple[str, QueryScalar]]
    ) -> Iterator[NativeRecord]:
        """Every record of the list route with ``extra`` query parameters, page by page, each
        once; stopped with a FatalConnectorError when the pages loop."""
        where = self._where(entity)
        options = spec.pagination
        paginator = PAGINATORS[options.style](
            options, page_size=self.opts.page_size, where=where, origin=self.origin
        )
        paginator.ignored = frozenset(self.auth_params)
        route = spec.routes().list
        id_steps = spec.steps("id_field")
        request: PageRequest | None = paginator.first(
            route.path(), [*spec.list_params.items(), *extra]
        )
        seen: set[str] = set()
        previous: list[str] | None = None
        pages = 0
        while request is not None:
            pages += 1
            if pages > options.max_pages:
                raise where.fatal(
                    f"GET {route.template}: more than {options.max_pages} pages; stopped "
                    f"(setting {where.setting('pagination.max_pages', options.max_pages)})."
                )
            page = self._fetch(entity, spec, request)
            context = f"GET {route.template} {request.label}"
            ids = [id_of(item, id_steps, where, context) for item in page.records]
            if ids:
                if ids == previous:
                    raise where.fatal(
                        f"{context}: the page repeats the previous page's records; the server "
                        f"seems to ignore {paginator.advance_setting()}, so the listing "
                        "stopped instead of looping."
                    )
                if all(i in seen for i in ids):
                    raise where.fatal(
                        f"{context}: the page holds only records of earlier pages; the server "
                        f"seems to ignore {paginator.advance_setting()}, so the listing "
                        "stopped instead of looping."
                    )
                for native_id, item in zip(ids, page.records, strict=True):
                    if native_id in seen:
                        continue  # the list shifted while paging: already given
                    seen.add(native_id)
                    yield NativeRecord(
                        native_id, item, location=f"{self.name} {entity} {native_id}"
                    )
                previous = ids
            request = paginator.next(page)

    def _native(self, entity: str, spec: EntityOptions, record: dict[str, Any]) -> NativeRecord:
        native_id = id_of(
            record, spec.steps("id_field"), self._where(entity), f"the {entity} record returned"
        )
        return NativeRecord(native_id, record, location=f"{self.name} {entity} {native_id}")

    def _existing(
        self,
        entity: str,
        spec: EntityOptions,
        data: NativeData,
        response: httpx.Response,
        context: str,
    ) -> NativeRecord:
        """The record a create refused as a duplicate collides with: by the id the answer
        names (``duplicate.id_pattern``), else the one record the searches find holding the
        searched values. A refusal that is not a duplicate (``message_pattern`` does not
        match) or whose record cannot be found is a ``RecordError`` for this record."""
        duplicate = spec.duplicate
        assert duplicate is not None
        text = response.text
        said = self.http.redact(
            f"HTTP {response.status_code}: {error_message(response) or text[:200]}"
        )
        if duplicate.message_pattern and not re.search(duplicate.message_pattern, text):
            raise RecordError(said, location=f"{self.name} {context}")
        if duplicate.id_pattern:
            match = re.search(duplicate.id_pattern, text)
            if match and match.group(1):
                found = self.get(entity, match.group(1))
                if found is not None:
                    return found
        keys = self._searched_fields(spec)
        wanted: dict[str, Any] = {}
        for name in keys:
            value = dig(data, dotted(name))
            if value is not MISSING and not _empty(value):
                _put(wanted, dotted(name), value)
        found_list = self._find(entity, spec, data, wanted) if wanted else []
        if len(found_list) == 1:
            return found_list[0]
        how = (
            f"found {len(found_list)} records holding {', '.join(keys)}"
            if wanted
            else "no find or find_params names a field this record holds"
        )
        raise RecordError(
            f"{said}; refused as a duplicate, but the existing record is not known ({how}); "
            f"set {self._where(entity).setting('duplicate.id_pattern')} to the id in the "
            "answer, or describe find",
            location=f"{self.name} {context}",
        )

    @staticmethod
    def _searched_fields(spec: EntityOptions) -> list[str]:
        """The native paths the lookups search by (``find``'s placeholders or
        ``find_params``): a duplicate is the one record holding these values."""
        if spec.find is not None:
            return list(dict.fromkeys(spec.find.placeholders()))
        return list(spec.find_params)


# ---------------------------------------------------------------------------------- helpers


def _without_prefix(exc: Exception, name: str) -> str:
    text = str(exc)
    prefix = f"{name}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _top_key(name: str, full: Mapping[str, Any]) -> str:
    """The top-level key a native name writes (``address.city`` -> ``address``)."""
    if name in full:
        return name
    try:
        return parse_path(name).steps[0][0]
    except ValueError:
        return name


def _changed(patch: Mapping[str, Any], full: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a partial update: each changed native name's value, nested as its path
    says (``properties.lastname`` -> ``{"properties": {"lastname": ...}}``). A name that is
    a key of the record as it is, or a path through a list selection
    (``emails[type=work].value``), sends its whole top-level value from ``full``."""
    body: dict[str, Any] = {}
    for name, value in patch.items():
        if name in full:
            body[name] = copy.deepcopy(full[name])
            continue
        try:
            steps = parse_path(name).steps
        except ValueError:
            body[name] = copy.deepcopy(value)
            continue
        if any(selection is not None for _key, selection in steps):
            top = steps[0][0]
            body[top] = copy.deepcopy(full.get(top))
            continue
        _put(body, tuple(key for key, _selection in steps), copy.deepcopy(value))
    return body


def _put(node: dict[str, Any], steps: Sequence[str], value: Any) -> None:
    """Set ``value`` at ``steps`` in ``node``, creating the objects on the way."""
    for step in steps[:-1]:
        child = node.get(step)
        if not isinstance(child, dict):
            child = node[step] = {}
        node = child
    node[steps[-1]] = value


def _empty(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, list | dict) and not value)
    )


def _holds(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` carries ``wanted``: objects on wanted's non-empty keys, lists item
    by item, texts ignoring case and surrounding spaces, numbers by value."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            _holds(actual.get(k), v) for k, v in wanted.items() if not _empty(v)
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_holds(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    if isinstance(wanted, str):
        return isinstance(actual, str) and actual.strip().casefold() == wanted.strip().casefold()
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return actual is wanted
    return bool(actual == wanted)
