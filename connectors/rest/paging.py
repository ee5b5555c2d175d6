"""Pagination styles of the REST connector, a registry by name.

The ``[connectors.<name>.entities.<entity>.pagination]`` table picks one with ``style``:

``none``
    One request returns every record.
``page``
    Page numbers: ``?page=1&per_page=100``, then 2, 3, … (``page_param``, ``size_param``,
    ``first_page``). json-server 0.17: ``page_param = "_page"``, ``size_param = "_limit"``.
``offset``
    ``?offset=0&limit=100``, then the offset advanced by the records received
    (``offset_param``, ``limit_param``, ``start``). json-server: ``_start`` / ``_limit``.
``cursor``
    The response body carries the next cursor at ``cursor_path`` (dotted), sent back as
    ``cursor_param``; no cursor (missing, null or "") ends the listing, as does a false
    ``has_more_path`` when one is configured.
``link``
    The RFC 8288 ``Link`` response header's ``rel="next"`` URL is followed until there is none.
    ``page_param`` / ``size_param`` go on the first request only (json-server needs them to
    send links at all).
``total_count``
    Page numbers, ended exactly when a response header (``total_header``, default
    ``X-Total-Count``) says every record was received.

Every style stops at an empty page. ``page`` and ``offset`` read a total too when told where
(``total_header`` or ``total_path``); without one they stop at a page shorter than the pages
before it (a first short page costs one more request, so that a server capping the page size
below ``page_size`` is not mistaken for the end). Loops are stopped with a
``FatalConnectorError`` naming the setting: a cursor or a next link seen before; the driver in
the connector also stops a page that repeats the previous page's records and one holding only
records already seen. ``max_pages`` bounds any listing.

A new style subclasses :class:`Paginator` (with its own ``Options`` model) and is added with
:func:`register_paginator`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urljoin

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from syncengine.connectors.rest.shape import MISSING, Where, describe_shape, dig, dotted
from syncengine.errors import RetriableError
from syncengine.http import QueryScalar
from syncengine.registry import Registry

__all__ = [
    "PAGINATORS",
    "CursorPaginator",
    "LinkPaginator",
    "NoPaginator",
    "OffsetPaginator",
    "Page",
    "PageNumberPaginator",
    "PageRequest",
    "PaginationOptions",
    "Paginator",
    "TotalCountPaginator",
    "next_link",
    "parse_link_header",
    "register_paginator",
]

Pairs = tuple[tuple[str, QueryScalar], ...]


@dataclass(frozen=True)
class PageRequest:
    """One list request: a path (or an absolute URL, for links) and its query."""

    url: str
    params: Pairs
    label: str
    """How messages name it: ``page 3``, ``offset 200``, ``cursor 'abc'``, ``next link``."""


@dataclass(frozen=True)
class Page:
    """One list response, with the records found at ``records_path``."""

    request: PageRequest
    url: str
    """The URL actually requested (relative links resolve against it)."""
    headers: httpx.Headers
    body: Any
    records: list[dict[str, Any]]


# ---------------------------------------------------------------------------------- options


def _param_name(value: str) -> str:
    if value and not re.fullmatch(r"[^\s&=#?]+", value):
        raise ValueError(f"{value!r} is not a usable query parameter name")
    return value


def _path(value: str) -> str:
    dotted(value)  # raises ValueError with the reason
    return value


class PaginationOptions(BaseModel):
    """Settings every style has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    style: str = "none"
    page_size: int | None = Field(default=None, ge=1, le=10_000)
    """Records per page for this entity; the connector's ``page_size`` when unset."""
    max_pages: int = Field(default=100_000, ge=1)
    """A listing longer than this many pages stops with an error instead of running on."""


class NoPaginationOptions(PaginationOptions):
    style: str = "none"


class CountedOptions(PaginationOptions):
    """Page-number and offset styles: where a total may be found."""

    total_header: str = ""
    """A response header holding the total number of records (``X-Total-Count``)."""
    total_path: str = ""
    """A dotted path in the response body holding the total number of records."""

    _check_path = field_validator("total_path")(_path)


class PageOptions(CountedOptions):
    style: str = "page"
    page_param: str = "page"
    size_param: str = "per_page"
    """Empty: the page size is not sent (the server's own size is used)."""
    first_page: int = Field(default=1, ge=0)

    _check_params = field_validator("page_param", "size_param")(_param_name)

    @field_validator("page_param")
    @classmethod
    def _needed(cls, value: str) -> str:
        if not value:
            raise ValueError("is required for page-number pagination")
        return value


class TotalCountOptions(PageOptions):
    style: str = "total_count"
    total_header: str = "X-Total-Count"

    @field_validator("total_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is required for the total_count style (e.g. X-Total-Count)")
        return value


class OffsetOptions(CountedOptions):
    style: str = "offset"
    offset_param: str = "offset"
    limit_param: str = "limit"
    """Empty: the page size is not sent."""
    start: int = Field(default=0, ge=0)

    _check_params = field_validator("offset_param", "limit_param")(_param_name)

    @field_validator("offset_param")
    @classmethod
    def _needed(cls, value: str) -> str:
        if not value:
            raise ValueError("is required for offset pagination")
        return value


class CursorOptions(PaginationOptions):
    style: str = "cursor"
    cursor_param: str = "cursor"
    """The query parameter the cursor is sent back in."""
    cursor_path: str = "next_cursor"
    """The dotted path of the next cursor in the response body."""
    size_param: str = "limit"
    has_more_path: str = ""
    """Optional: a dotted path to a boolean that is false on the last page."""

    _check_params = field_validator("cursor_param", "size_param")(_param_name)
    _check_paths = field_validator("cursor_path", "has_more_path")(_path)

    @field_validator("cursor_param", "cursor_path")
    @classmethod
    def _needed(cls, value: str) -> str:
        if not value:
            raise ValueError("is required for cursor pagination")
        return value


class LinkOptions(PaginationOptions):
    style: str = "link"
    rel: str = "next"
    page_param: str = ""
    """Sent with ``first_page`` on the first request only (json-server: ``_page``)."""
    first_page: int = Field(default=1, ge=0)
    size_param: str = ""
    """Sent on the first request only; the links carry it on (json-server: ``_limit``)."""

    _check_params = field_validator("page_param", "size_param")(_param_name)


# -------------------------------------------------------------------------------- paginators


class Paginator(ABC):
    """One listing's pagination state: the first request, then each next one (or None)."""

    style_name: ClassVar[str] = ""
    Options: ClassVar[type[PaginationOptions]] = PaginationOptions

    def __init__(
        self, options: PaginationOptions, *, page_size: int, where: Where, origin: str = ""
    ) -> None:
        self.options = options
        self.size = options.page_size or page_size
        self.where = where
        self.origin = origin
        """``scheme://host:port`` of the base URL: links elsewhere are not followed."""
        self.ignored: frozenset[str] = frozenset()
        """Query parameters that do not tell pages apart (the API key of query auth)."""
        self.base: Pairs = ()
        self.path = ""
        self.pages = 0

    def first(self, path: str, params: Sequence[tuple[str, QueryScalar]]) -> PageRequest:
        """The first request for ``path`` with the entity's own ``params``."""
        self.path = path
        self.base = tuple(params)
        return self._first()

    def next(self, page: Page) -> PageRequest | None:
        """The request after ``page``, or None when the listing is complete."""
        self.pages += 1
        return self._next(page)

    @abstractmethod
    def _first(self) -> PageRequest: ...

    @abstractmethod
    def _next(self, page: Page) -> PageRequest | None: ...

    def advance_setting(self) -> str:
        """The setting that should make the server move on (for loop messages)."""
        return f"pagination.style = {self.style_name!r}"

    def _setting(self, name: str, value: Any) -> str:
        return self.where.setting(f"pagination.{name}", value)


class NoPaginator(Paginator):
    """A single request returns everything."""

    style_name: ClassVar[str] = "none"
    Options: ClassVar[type[PaginationOptions]] = NoPaginationOptions

    def _first(self) -> PageRequest:
        return PageRequest(self.path, self.base, "the list request")

    def _next(self, page: Page) -> PageRequest | None:
        return None


def _int_total(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class _Counted(Paginator):
    """Shared by page-number and offset styles: totals, and the end by a short page."""

    def __init__(
        self, options: PaginationOptions, *, page_size: int, where: Where, origin: str = ""
    ) -> None:
        super().__init__(options, page_size=page_size, where=where, origin=origin)
        assert isinstance(options, CountedOptions)
        self.counted: CountedOptions = options
        self.received = 0
        self.longest = 0
        self.total: int | None = None

    def _read_total(self, page: Page) -> int | None:
        opts = self.counted
        if opts.total_header:
            raw: Any = page.headers.get(opts.total_header)
            setting = self._setting("total_header", opts.total_header)
            if raw is None:
                raise self.where.fatal(
                    f"GET {self.path} {page.request.label}: the response has no "
                    f"{opts.total_header} header (setting {setting}); remove the setting or "
                    "name the header the server sends"
                )
        elif opts.total_path:
            raw = dig(page.body, dotted(opts.total_path))
            setting = self._setting("total_path", opts.total_path)
            if raw is MISSING:
                raise self.where.fatal(
                    f"GET {self.path} {page.request.label}: the response has no "
                    f"{opts.total_path!r} (setting {setting}); the response is "
                    f"{describe_shape(page.body)}"
                )
        else:
            return None
        total = _int_total(raw)
        if total is None or total < 0:
            raise self.where.fatal(
                f"GET {self.path} {page.request.label}: the total is not a whole number "
                f"(setting {setting})"
            )
        if self.total is not None and total < self.total:
            raise RetriableError(
                f"GET {self.path} {page.request.label}: the total fell from {self.total} to "
                f"{total} while paging; a record may have moved onto a page already read, so "
                "this listing is not complete. Read again later.",
                connector=self.where.connector,
                entity=self.where.entity,
            )
        self.total = total
        return total

    def _ended(self, page: Page) -> bool:
        count = len(page.records)
        self.received += count
        total = self._read_total(page)
        if count == 0:
            return True
        if total is not None:
            return self.received >= total
        ended = count < self.longest
        self.longest = max(self.longest, count)
        return ended

    def _size_pair(self, name: str) -> Pairs:
        return ((name, self.size),) if name else ()


class PageNumberPaginator(_Counted):
    """``?page=N&per_page=S``."""

    style_name: ClassVar[str] = "page"
    Options: ClassVar[type[PaginationOptions]] = PageOptions

    def __init__(
        self, options: PaginationOptions, *, page_size: int, where: Where, origin: str = ""
    ) -> None:
        super().__init__(options, page_size=page_size, where=where, origin=origin)
        assert isinstance(options, PageOptions)
        self.page_opts: PageOptions = options
        self.number = options.first_page

    def _request(self) -> PageRequest:
        o = self.page_opts
        params = (*self.base, (o.page_param, self.number), *self._size_pair(o.size_param))
        return PageRequest(self.path, params, f"page {self.number}")

    def _first(self) -> PageRequest:
        return self._request()

    def _next(self, page: Page) -> PageRequest | None:
        if self._ended(page):
            return None
        self.number += 1
        return self._request()

    def advance_setting(self) -> str:
        return self._setting("page_param", self.page_opts.page_param)


class TotalCountPaginator(PageNumberPaginator):
    """Page numbers, ended by a total-count header."""

    style_name: ClassVar[str] = "total_count"
    Options: ClassVar[type[PaginationOptions]] = TotalCountOptions


class OffsetPaginator(_Counted):
    """``?offset=N&limit=S``, the offset advanced by the records received."""

    style_name: ClassVar[str] = "offset"
    Options: ClassVar[type[PaginationOptions]] = OffsetOptions

    def __init__(
        self, options: PaginationOptions, *, page_size: int, where: Where, origin: str = ""
    ) -> None:
        super().__init__(options, page_size=page_size, where=where, origin=origin)
        assert isinstance(options, OffsetOptions)
        self.offset_opts: OffsetOptions = options
        self.offset = options.start

    def _request(self) -> PageRequest:
        o = self.offset_opts
        params = (*self.base, (o.offset_param, self.offset), *self._size_pair(o.limit_param))
        return PageRequest(self.path, params, f"offset {self.offset}")

    def _first(self) -> PageRequest:
        return self._request()

    def _next(self, page: Page) -> PageRequest | None:
        if self._ended(page):
            return None
        self.offset += len(page.records)
        return self._request()

    def advance_setting(self) -> str:
        return self._setting("offset_param", self.offset_opts.offset_param)


class CursorPaginator(Paginator):
    """The next cursor from the body, sent back as a query parameter."""

    style_name: ClassVar[str] = "cursor"
    Options: ClassVar[type[PaginationOptions]] = CursorOptions

    def __init__(
        self, options: PaginationOptions, *, page_size: int, where: Where, origin: str = ""
    ) -> None:
        super().__init__(options, page_size=page_size, where=where, origin=origin)
        assert isinstance(options, CursorOptions)
        self.cursor_opts: CursorOptions = options
        self.seen: set[str] = set()

    def _sized(self) -> Pairs:
        name = self.cursor_opts.size_param
        return ((name, self.size),) if name else ()

    def _first(self) -> PageRequest:
        return PageRequest(self.path, (*self.base, *self._sized()), "the first page")

    def _next(self, page: Page) -> PageRequest | None:
        o = self.cursor_opts
        where = f"GET {self.path} {page.request.label}"
        if not page.records:
            return None
        if o.has_more_path:
            more = dig(page.body, dotted(o.has_more_path))
            if more is MISSING or not isinstance(more, bool):
                raise self.where.fatal(
                    f"{where}: {o.has_more_path!r} is "
                    f"{'missing' if more is MISSING else describe_shape(more)}, not true or "
                    f"false (setting {self._setting('has_more_path', o.has_more_path)})"
                )
            if not more:
                return None
        cursor = dig(page.body, dotted(o.cursor_path))
        setting = self._setting("cursor_path", o.cursor_path)
        if cursor is MISSING:
            # a cursor found on an earlier page shows the path is right: its absence (a
            # nested ``paging`` left out on the last page) is the end
            if o.has_more_path or (len(page.records) >= self.size and not self.seen):
                raise self.where.fatal(
                    f"{where}: the response has no {o.cursor_path!r} although more records "
                    f"seem to follow (setting {setting}); the response is "
                    f"{describe_shape(page.body)}."
                )
            return None
        if cursor is None or cursor == "":
            if o.has_more_path:
                raise self.where.fatal(
                    f"{where}: {o.has_more_path!r} is true but there is no cursor at "
                    f"{o.cursor_path!r} (setting {setting})"
                )
            return None
        if isinstance(cursor, bool) or not isinstance(cursor, str | int):
            raise self.where.fatal(
                f"{where}: the cursor at {o.cursor_path!r} is {describe_shape(cursor)}, not a "
                f"string (setting {setting})"
            )
        text = str(cursor)
        if text in self.seen:
            raise self.where.fatal(
                f"{where}: the server gave the cursor {_short(text)} a second time; "
                f"following it would loop, so the listing stopped (setting {setting})."
            )
        self.seen.add(text)
        params = (*self.base, (o.cursor_param, text), *self._sized())
        return PageRequest(self.path, params, f"cursor {_short(text)}")

    def advance_setting(self) -> str:
        return self._setting("cursor_param", self.cursor_opts.cursor_param)


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


class LinkPaginator(Paginator):
    """Follows the ``Link`` header's ``rel="next"`` (RFC 8288)."""

    style_name: ClassVar[str] = "link"
    Options: ClassVar[type[PaginationOptions]] = LinkOptions

    def __init__(
        self, options: PaginationOptions, *, page_size: int, where: Where, origin: str = ""
    ) -> None:
        super().__init__(options, page_size=page_size, where=where, origin=origin)
        assert isinstance(options, LinkOptions)
        self.link_opts: LinkOptions = options
        self.seen: set[str] = set()
        self.probed = 0

    def _first(self) -> PageRequest:
        o = self.link_opts
        extra: list[tuple[str, QueryScalar]] = []
        if o.page_param:
            extra.append((o.page_param, o.first_page))
        if o.size_param:
            extra.append((o.size_param, self.size))
        return PageRequest(self.path, (*self.base, *extra), "the first page")

    def _next(self, page: Page) -> PageRequest | None:
        o = self.link_opts
        where = f"GET {self.path} {page.request.label}"
        self.seen.add(_url_key(page.url, self.ignored))
        if not page.records:
            return None
        header = page.headers.get("link")
        if header is None:
            return self._probe(page, where)
        target = next_link(header, o.rel)
        if target is None:
            return None
        absolute = httpx.URL(urljoin(page.url, target))
        origin = _origin(absolute)
        if self.origin and origin != self.origin:
            raise self.where.fatal(
                f"{where}: the next link points to {origin}, not to {self.origin}; it is not "
                "followed (our credentials go to the configured server only)"
            )
        key = _url_key(str(absolute), self.ignored)
        if key in self.seen:
            shown = absolute.copy_with(query=None).path
            raise self.where.fatal(
                f"{where}: the next link leads to a page already read ({shown} with the same "
                "query); following it would loop, so the listing stopped (setting "
                f"{self._setting('rel', o.rel)})."
            )
        self.seen.add(key)
        params = tuple((k, v) for k, v in absolute.params.multi_items())
        return PageRequest(str(absolute.copy_with(query=None)), params, "the next link")

    def _probe(self, page: Page, where: str) -> PageRequest | None:
        """No Link header. The end, unless the page was full: then, when pages can be asked
        for by number, the next one is asked for (some APIs send no Link on a single page);
        records there mean the server pages without links, which this style cannot follow."""
        o = self.link_opts
        if page.request.label.startswith("probe"):
            raise self.where.fatal(
                f"{where}: the server pages ({o.page_param}={self.probed} has records) but "
                f"sends no Link header (setting {self._setting('style', 'link')}); use "
                "style = 'page' for this API."
            )
        if len(page.records) < self.size or not o.page_param or self.probed:
            return None
        self.probed = o.first_page + 1
        params = (
            *self.base,
            (o.page_param, self.probed),
            *(((o.size_param, self.size),) if o.size_param else ()),
        )
        return PageRequest(self.path, params, f"probe of page {self.probed} (no Link header)")

    def advance_setting(self) -> str:
        return f"the Link header's rel={self.link_opts.rel!r} ({self._setting('style', 'link')})"


def _origin(url: httpx.URL) -> str:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return f"{url.scheme}://{url.host}:{port}"


def origin_of(base_url: str) -> str:
    """``scheme://host:port`` of a base URL."""
    return _origin(httpx.URL(base_url))


def _url_key(url: str, ignored: frozenset[str] = frozenset()) -> str:
    """A URL with its query sorted (without the ``ignored`` parameters, such as an API key),
    so that the same page is recognised however it is written."""
    parsed = httpx.URL(url)
    pairs = sorted((k, v) for k, v in parsed.params.multi_items() if k not in ignored)
    return str(parsed.copy_with(query=None)) + "?" + "&".join(f"{k}={v}" for k, v in pairs)


# ------------------------------------------------------------------------------ Link headers

_LINK_TARGET = re.compile(r"\s*<([^>]*)>")
_LINK_PARAM = re.compile(
    r"\s*;\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s;,]*))?"
)


def parse_link_header(value: str) -> list[tuple[str, dict[str, str]]]:
    """The links of an RFC 8288 ``Link`` header: ``[(target, {param: value})]``.

    Parameter names are lower-cased; quoted values are unquoted. Malformed parts are skipped
    (a server's broken header must not break the listing more than it has to)."""
    links: list[tuple[str, dict[str, str]]] = []
    position = 0
    while position < len(value):
        match = _LINK_TARGET.match(value, position)
        if match is None:
            comma = value.find(",", position)
            if comma < 0:
                break
            position = comma + 1
            continue
        target = match.group(1).strip()
        position = match.end()
        params: dict[str, str] = {}
        while True:
            param = _LINK_PARAM.match(value, position)
            if param is None:
                break
            raw = param.group(2) or ""
            if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params.setdefault(param.group(1).lower(), raw)
            position = param.end()
        links.append((target, params))
        comma = value.find(",", position)
        if comma < 0:
            break
        position = comma + 1
    return links


def next_link(header: str, rel: str = "next") -> str | None:
    """The target of the first link whose ``rel`` (a space-separated list) includes ``rel``."""
    wanted = rel.lower()
    for target, params in parse_link_header(header):
        if wanted in params.get("rel", "").lower().split():
            return target or None
    return None


# ---------------------------------------------------------------------------------- registry

PAGINATORS: Registry[type[Paginator]] = Registry(
    "pagination style", duplicate="a {kind} named {name!r} is already registered"
)


def register_paginator(cls: type[Paginator]) -> type[Paginator]:
    """Add a pagination style to the registry (usable as a class decorator). Registering the
    same class again does nothing; another class under a taken name is a ``ValueError``."""
    name = cls.style_name
    if not name:
        raise ValueError(f"{cls.__name__} has no style_name")
    if PAGINATORS.get(name) is not cls:
        PAGINATORS.add(name, cls)
    return cls


for _style in (
    NoPaginator,
    PageNumberPaginator,
    OffsetPaginator,
    CursorPaginator,
    LinkPaginator,
    TotalCountPaginator,
):
    register_paginator(_style)
