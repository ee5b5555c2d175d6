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
  a create whose outcome is unknown is looked up with ``find`` by the engine's recovery.
- **update** sends, for ``PATCH`` and ``POST``, the changed top-level keys of the record
  (a change inside a nested object sends that whole object); for ``PUT``, the whole record.
  An update of a missing record raises ``NotFoundError``.
- **delete** treats 404/410 as already deleted.
- **find** filters the list by ``find_params`` (one parameter at a time, in order) and keeps
  the records holding every value written; when no parameter applies or finds anything it
  scans the whole list (``find_scan = false`` trusts the filters instead).
- **read_incremental** (only with ``incremental.enabled``) reads what changed since a mark;
  see ``.incremental``.

Test hooks in ``ConnectorContext.extra``: ``transport`` (an ``httpx.BaseTransport``),
``sleep`` (replaces ``time.sleep``) and ``clock`` (replaces ``time.time`` for incremental
passes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
)
from syncengine.connectors.rest.incremental import (
    HighWater,
    Mark,
    decode_token,
    encode_token,
    mark_param,
)
from syncengine.connectors.rest.options import EntityOptions, RestOptions, Route
from syncengine.connectors.rest.paging import PAGINATORS, Page, PageRequest, origin_of
from syncengine.connectors.rest.shape import (
    MISSING,
    Where,
    dig,
    dotted,
    id_of,
    records_of,
    unwrap,
    wrap,
)
from syncengine.errors import (
    AuthError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
)
from syncengine.http import QueryScalar, connector_client, is_html
from syncengine.mapping import parse_path

Pairs = list[tuple[str, QueryScalar]]


class RestConnector(Connector):
    """A REST API described in configuration. See the module docstring."""

    type_name: ClassVar[str] = "rest"
    Options: ClassVar[type[ConnectorOptions]] = RestOptions

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
    def read(self, entity: str) -> Iterator[NativeRecord]:
        """Every record of ``entity``: always the complete listing (see ``read_incremental``
        for reading only what changed)."""
        spec = self._spec(entity)
        yield from self._listing(entity, spec, [])

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
        full = (
            mark.since is None
            or mark.full_at is None
            or started - mark.full_at >= inc.full_every_hours * 3600
            or started < mark.full_at  # a clock that went back: trust nothing
        )
        extra: Pairs = []
        if not full and mark.since is not None:
            extra.append((inc.param, mark_param(mark.since, inc.overlap_seconds)))
        water = HighWater(None if full else mark.since)
        updated = spec.steps("updated_field")

        def records() -> Iterator[NativeRecord]:
            for record in self._listing(entity, spec, extra):
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
        read_only = spec.read_only_keys()
        wanted = {k: v for k, v in data.items() if k not in read_only and not _empty(v)}

        def matching(records: Iterator[NativeRecord]) -> list[NativeRecord]:
            return [r for r in records if _holds(r.data, wanted)]

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

    # -------------------------------------------------------------------------------- writing
    def create(self, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        spec = self._spec(entity)
        route = self._route(entity, spec.routes().create, "create")
        body = wrap(self._writable(spec, data), spec.steps("body_wrap"))
        path = route.path()
        decoded = self._call(entity, route.method, path, json=body, retry=False)
        where = self._where(entity)
        context = f"{route.method} {path}"
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
            body = self._writable(spec, full)
        else:
            tops = {_top_key(name, full) for name in patch}
            body = self._writable(spec, {k: full.get(k) for k in tops})
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
                    f"(setting {where.setting('pagination.max_pages', options.max_pages)}). "
                    "Nothing was written."
                )
            page = self._fetch(entity, spec, request)
            context = f"GET {route.template} {request.label}"
            ids = [id_of(item, id_steps, where, context) for item in page.records]
            if ids:
                if ids == previous:
                    raise where.fatal(
                        f"{context}: the page repeats the previous page's records; the server "
                        f"seems to ignore {paginator.advance_setting()}, so the listing "
                        "stopped instead of looping. Nothing was written."
                    )
                if all(i in seen for i in ids):
                    raise where.fatal(
                        f"{context}: the page holds only records of earlier pages; the server "
                        f"seems to ignore {paginator.advance_setting()}, so the listing "
                        "stopped instead of looping. Nothing was written."
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

    @staticmethod
    def _writable(spec: EntityOptions, data: Mapping[str, Any]) -> dict[str, Any]:
        read_only = spec.read_only_keys()
        return {k: v for k, v in data.items() if k not in read_only}


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
