"""Paging through Housecall Pro lists: ``{<resource>: [...], page, page_size, total_pages,
total_items}``, read defensively.

A list stops after ``total_pages``, at an empty page, or, when the envelope lacks
``total_pages``, once ``total_items`` items were seen or (lacking that too) at a page shorter
than the page size. A page holding only items already seen (a server ignoring ``page``) is a
``FatalConnectorError``, not an endless loop; an item repeated on a later page (the list
shifted while paging) is yielded once. With ``guard_shrink``, a total that shrank while
paging (an item deleted mid-read shifts later ones onto pages already read, so one may have
been skipped) ends the read with a ``RetriableError`` rather than letting the engine take a
skipped record for a deleted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from syncengine.errors import FatalConnectorError, RetriableError
from syncengine.http import HttpClient, QueryParams, QueryScalar

Item = dict[str, Any]


class Pager:
    """Reads the pages of one connector's lists through its ``HttpClient``."""

    def __init__(self, http: HttpClient, connector: str, page_size: int) -> None:
        self.http = http
        self.connector = connector
        self.page_size = page_size

    def items(
        self,
        path: str,
        key: str,
        entity: str,
        params: Mapping[str, QueryScalar] | Sequence[tuple[str, QueryScalar]] = (),
        *,
        guard_shrink: bool,
    ) -> Iterator[Item]:
        """Every item of the list at ``path`` (the array under ``key``), each once, as the
        object the API sent; every item is an object with a non-empty string ``id``."""
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        size = self.page_size
        seen: set[str] = set()
        first_total: int | None = None
        last_total: int | None = None
        page = 1
        while True:
            query: QueryParams = [*pairs, ("page", page), ("page_size", size)]
            body = self.http.get_json(path, params=query)
            where = f"GET {path} page {page}"
            items, envelope = self._page_items(body, key, entity, where)
            total = _integer(envelope.get("total_items"))
            if total is not None:
                first_total = total if first_total is None else first_total
                last_total = total
            if not items:
                break
            fresh: list[Item] = []
            for index, item in enumerate(items):
                item_id = self.item_id(item, entity, f"{where}: item {index}")
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
            yield from fresh
            total_pages = _integer(envelope.get("total_pages"))
            if total_pages is not None:
                if page >= total_pages:
                    break
            elif total is not None:
                if len(seen) >= total:
                    break
            else:
                served = _integer(envelope.get("page_size"))
                expected = served if served is not None and served > 0 else size
                if len(items) < min(expected, size):
                    break
            page += 1
        shrank = first_total is not None and last_total is not None and last_total < first_total
        if guard_shrink and shrank:
            raise RetriableError(
                f"the {key} list shrank from {first_total} to {last_total} while it was "
                "being read, so one may have been skipped; read it again",
                connector=self.connector,
                entity=entity,
            )

    def item_id(self, item: Any, entity: str, where: str) -> str:
        """The id of one item of a response; FatalConnectorError when it has none."""
        if not isinstance(item, dict):
            raise self.fail(f"{where} is not an object", entity)
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise self.fail(f"{where} has no id", entity)
        return item_id

    def fail(self, message: str, entity: str) -> FatalConnectorError:
        return FatalConnectorError(message, connector=self.connector, entity=entity)

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


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
