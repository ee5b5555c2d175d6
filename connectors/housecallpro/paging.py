"""Paging through Housecall Pro lists: ``{<resource>: [...], page, page_size, total_pages,
total_items}``, read defensively, with the next pages read ahead.

A list stops after ``total_pages``, at an empty page, or, when the envelope lacks
``total_pages``, once ``total_items`` items were seen or (lacking that too) at a page shorter
than the page size. A page holding only items already seen (a server ignoring ``page``) is a
``FatalConnectorError``, not an endless loop; an item repeated on a later page (the list
shifted while paging) is yielded once. With ``guard_shrink``, a total that shrank while
paging (an item deleted mid-read shifts later ones onto pages already read, so one may have
been skipped) ends the read with a ``RetriableError`` rather than letting the engine take a
skipped record for a deleted one.

A caller that wants only the start of a list (a partial pass reading newest first until past
its mark, ``incremental``) passes ``more``: after each page, whether it wants the list past
that page. Then no page is requested before the page before it asked for more: the next page
is read ahead one at a time, and a list that is not wanted further costs not one request more.

Read-ahead (``Pager(concurrency=N)``): once a page's envelope gives ``total_pages``, the
following pages are requested by a small thread pool while the caller works through the
items of the page before, so that the caller's work overlaps the wait for the next pages.
Items still come in page order, and every rule above is applied to the pages in that order,
exactly as when reading one page after another:

- at most ``concurrency`` pages are requested or held ahead of the page being consumed
  (memory: that many pages), and only one until the second page proved that the server
  honours ``page`` (a server that ignores it costs two requests, as when reading in turn);
- no page past the latest ``total_pages`` is ever requested, so a normal list costs its
  ``total_pages`` requests and nothing more; pages already requested when the list turns out
  to end earlier (it shrank, or ended with an empty page) are the only extra requests;
- without ``total_pages`` the list is read one page after another (the end is only known
  from what the pages hold);
- the error of a page read ahead is raised when the caller reaches that page, never before:
  the items of the pages before it come first. From the moment a page fails, no page after
  it is requested any more (a request already sent finishes and is dropped);
- a caller that stops early (closes the generator) cancels the pages not yet requested and
  waits for the ones on the wire, so that no request outlives the read.

Every request goes through the connector's ``HttpClient``, so its rate limit (a thread-safe
token bucket) spaces the pages read ahead like any other request: read-ahead hides latency,
it never exceeds the rate.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from syncengine.errors import FatalConnectorError, NotFoundError, RetriableError
from syncengine.http import HttpClient, QueryParams, QueryScalar

Item = dict[str, Any]


class Pager:
    """Reads the pages of one connector's lists through its ``HttpClient``, up to
    ``concurrency`` pages ahead of the one being consumed (1: one page ahead, one request at
    a time)."""

    def __init__(
        self, http: HttpClient, connector: str, page_size: int, *, concurrency: int = 1
    ) -> None:
        self.http = http
        self.connector = connector
        self.page_size = page_size
        self.concurrency = max(1, concurrency)

    def items(
        self,
        path: str,
        key: str,
        entity: str,
        params: Mapping[str, QueryScalar] | Sequence[tuple[str, QueryScalar]] = (),
        *,
        guard_shrink: bool,
        ahead: bool = True,
        more: Callable[[list[Item]], bool] | None = None,
        tally: Tally | None = None,
        id_key: str = "id",
        vanishes: bool = False,
    ) -> Iterator[Item]:
        """Every item of the list at ``path`` (the array under ``key``), each once, as the
        object the API sent; every item is an object with a non-empty string ``id`` (or
        ``id_key``: a job's line items are named by ``uuid``).

        Decides, page by page in order, what to yield and where the list ends (the module
        docstring). ``ahead=False`` reads one page after another in the caller's thread
        (for callers that already run several reads at once). ``more`` is given each non-empty
        page's items, in the order sent, before they are yielded: the list ends after a page
        it returns False for, and only the page after one it returned True for is read.
        ``tally`` is filled for the caller to look at after the read (``Tally.shrank``).

        A list that answers 404 does not exist at this ``base_url``: a setting to fix,
        ``FatalConnectorError``; except with ``vanishes`` (the list of one record, such as an
        invoice's payments), where it is that record gone: ``NotFoundError``, for the caller."""
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)

        def get(page: int) -> Any:
            query: QueryParams = [*pairs, ("page", page), ("page_size", self.page_size)]
            return self.http.get_json(path, params=query)

        workers = 1 if more is not None else self.concurrency if ahead else 0
        pages = _Pages(get, workers, f"{self.connector}-pages")
        tally = tally if tally is not None else Tally()
        try:
            page = 1
            while True:
                where = f"GET {path} page {page}"
                try:
                    body = pages.body(page)
                except NotFoundError as exc:
                    if vanishes:
                        raise
                    if page > 1:  # the list was there a page ago: it shrank while read
                        raise RetriableError(
                            f"{where}: {exc}; the list had fewer pages than it said while "
                            "it was read; read it again",
                            connector=self.connector,
                            entity=entity,
                        ) from None
                    raise self.fail(
                        f"{where}: {exc} — there is no such list at {self.http.base_url}: "
                        f"check base_url in [connectors.{self.connector}] (the API's root, "
                        "such as https://api.housecallpro.com, with no path after it)",
                        entity,
                    ) from None
                items, envelope = self._page_items(body, key, entity, where)
                tally.note_total(_integer(envelope.get("total_items")))
                if not items:
                    break
                fresh = self._fresh(items, tally.seen, key, entity, where, id_key)
                last = self._last_page(page, envelope, len(items), len(tally.seen))
                if more is not None:
                    last = not more(items) or last
                if not last:
                    pages.read_ahead(page, _integer(envelope.get("total_pages")))
                yield from fresh
                if last:
                    break
                page += 1
        finally:
            pages.close()
        if guard_shrink and tally.shrank:
            raise RetriableError(
                f"the {key} list shrank from {tally.first_total} to {tally.last_total} while "
                "it was being read, so one may have been skipped; read it again",
                connector=self.connector,
                entity=entity,
            )

    def item_id(self, item: Any, entity: str, where: str, id_key: str = "id") -> str:
        """The id of one item of a response; FatalConnectorError when it has none."""
        if not isinstance(item, dict):
            raise self.fail(f"{where} is not an object", entity)
        item_id = item.get(id_key)
        if not isinstance(item_id, str) or not item_id:
            raise self.fail(f"{where} has no {id_key}", entity)
        return item_id

    def fail(self, message: str, entity: str) -> FatalConnectorError:
        return FatalConnectorError(message, connector=self.connector, entity=entity)

    def _fresh(
        self, items: list[Any], seen: set[str], key: str, entity: str, where: str, id_key: str
    ) -> list[Item]:
        """The items of one page not seen on an earlier page (adding them to ``seen``); a
        page with none is a server ignoring ``page``: FatalConnectorError."""
        fresh: list[Item] = []
        for index, item in enumerate(items):
            item_id = self.item_id(item, entity, f"{where}: item {index}", id_key)
            if item_id in seen:
                continue
            seen.add(item_id)
            fresh.append(item)
        if not fresh:
            raise self.fail(
                f"{where}: the server returned only {key} from earlier pages "
                "(it seems to ignore the page parameter); stopped instead of looping",
                entity,
            )
        return fresh

    def _last_page(self, page: int, envelope: dict[str, Any], count: int, seen: int) -> bool:
        """Whether the non-empty ``page`` (``count`` items; ``seen`` items so far) ends the
        list: by ``total_pages``, else by ``total_items``, else by being short."""
        total_pages = _integer(envelope.get("total_pages"))
        if total_pages is not None:
            return page >= total_pages
        total = _integer(envelope.get("total_items"))
        if total is not None:
            return seen >= total
        served = _integer(envelope.get("page_size"))
        expected = served if served is not None and served > 0 else self.page_size
        return count < min(expected, self.page_size)

    def _page_items(
        self, body: Any, key: str, entity: str, where: str
    ) -> tuple[list[Any], dict[str, Any]]:
        if not isinstance(body, dict):
            raise self.fail(
                f"{where}: expected a JSON object with a {key!r} list, got {type(body).__name__}",
                entity,
            )
        items = body.get(key)
        if items is None:
            items = body.get("data")  # tolerate a generic envelope
        if not isinstance(items, list):
            raise self.fail(
                f"{where}: the response has no {key!r} list (keys: {', '.join(sorted(body))})",
                entity,
            )
        return items, body


@dataclass
class Tally:
    """What one read of a list has seen so far: the item ids, the first and last total."""

    seen: set[str] = field(default_factory=set)
    first_total: int | None = None
    last_total: int | None = None

    def note_total(self, total: int | None) -> None:
        if total is not None:
            self.first_total = total if self.first_total is None else self.first_total
            self.last_total = total

    @property
    def shrank(self) -> bool:
        first, last = self.first_total, self.last_total
        return first is not None and last is not None and last < first


class _Abandoned(Exception):
    """A page read ahead was not requested because an earlier page failed (never reaches
    the caller: it stops at the earlier page's error)."""


class _Pages:
    """The pages of one list read: page 1 (and any page not read ahead) fetched in the
    caller's thread, the others by a pool of ``workers`` threads, at most ``workers`` pages
    ahead of the one consumed (``workers`` 0: never ahead)."""

    def __init__(self, get: Callable[[int], Any], workers: int, name: str) -> None:
        self._get = get
        self._workers = workers
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: deque[tuple[int, Future[Any]]] = deque()
        """Pages requested (or answered) but not consumed yet, in page order."""
        self._failed: int | None = None
        """The first page whose read failed: no page after it is requested any more."""
        self._lock = threading.Lock()
        self._context = contextvars.copy_context()  # log lines keep the run's context

    def body(self, page: int) -> Any:
        """The decoded response of ``page``: the one read ahead (raising its error, here and
        now), or, when it was not read ahead, fetched in this thread."""
        if self._ahead and self._ahead[0][0] == page:
            return self._ahead.popleft()[1].result()
        return self._get(page)

    def read_ahead(self, consumed: int, total_pages: int | None) -> None:
        """Request the pages after ``consumed`` up to ``total_pages``, so that as many pages
        are ahead as the window allows: one until page 2 was consumed (it shows whether the
        server honours ``page``), then ``workers``. Nothing without ``total_pages``."""
        if total_pages is None or self._workers < 1:
            return
        window = 1 if consumed < 2 else self._workers
        following = self._ahead[-1][0] + 1 if self._ahead else consumed + 1
        while len(self._ahead) < window and following <= total_pages:
            if self._stopped(following):
                return
            self._ahead.append((following, self._submit(following)))
            following += 1

    def close(self) -> None:
        """Cancel the pages not requested yet and wait for those on the wire."""
        with self._lock:
            self._failed = 0  # nothing more is requested
        for _page, future in self._ahead:
            future.cancel()
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self, page: int) -> Future[Any]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
        context = self._context.copy()
        return self._pool.submit(context.run, self._fetch, page)

    def _fetch(self, page: int) -> Any:
        """One page, in a pool thread; its failure stops the pages after it."""
        if self._stopped(page):
            raise _Abandoned(page)
        try:
            return self._get(page)
        except BaseException:
            with self._lock:
                self._failed = page if self._failed is None else min(self._failed, page)
            raise

    def _stopped(self, page: int) -> bool:
        with self._lock:
            return self._failed is not None and page > self._failed


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
