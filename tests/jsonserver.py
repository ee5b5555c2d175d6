"""json-server in tests: finding it, and describing it to the ``rest`` connector.

- ``ensure_json_server()``: the path of json-server 0.17.4 (``testbed.npm``: on PATH, in
  ``<repo>/.ci/node`` where CI installs it, in ``<repo>/.cache/node``, installed there with npm
  when missing). When it can be neither found nor installed the test is skipped, or failed
  under ``SYNCENGINE_REQUIRE_TOOLS=1`` (``tests.tools.tool_missing``).
- ``json_server_options()``: the ``[connectors.X]`` options of a ``rest`` member for it.
- The server process itself is ``testbed.jsonserver.JsonServer`` (the benchmarks use it too).

What json-server 0.17 speaks, as the connector is configured for it: a bare JSON list per
collection; ``_page``/``_limit`` with ``Link`` (``rel="next"``) and ``X-Total-Count`` headers;
``_start``/``_limit`` (offset) with ``X-Total-Count``; filters by any field (``?email=...``);
``POST`` assigns integer ids (the largest + 1); ``PUT`` replaces, ``PATCH`` merges top-level keys;
404 with ``{}`` for a missing record.
"""

from __future__ import annotations

from typing import Any

from testbed import ToolUnavailable
from testbed.npm import JSON_SERVER, ensure_tool
from tests.tools import tool_missing


def ensure_json_server() -> str:
    """The path of json-server 0.17.4, installed with npm when missing; skips the test (fails
    it under ``SYNCENGINE_REQUIRE_TOOLS=1``) when it can be neither found nor installed."""
    try:
        return ensure_tool(JSON_SERVER)
    except ToolUnavailable as exc:
        tool_missing(f"{exc}; the REST connector tests need it")


def json_server_options(
    url: str, path: str = "/customers", *, style: str = "link", page_size: int = 100, **entity: Any
) -> dict[str, Any]:
    """``[connectors.X]`` options of a ``rest`` member describing json-server 0.17, with the
    named pagination style: ``link`` (``_page``/``_limit``, following ``Link``),
    ``total_count`` (``_page``/``_limit``, ``X-Total-Count``), ``page`` (``_page``/``_limit``),
    ``offset`` (``_start``/``_limit``) or ``none``."""
    styles: dict[str, dict[str, Any]] = {
        "link": {"style": "link", "page_param": "_page", "size_param": "_limit"},
        "total_count": {"style": "total_count", "page_param": "_page", "size_param": "_limit"},
        "page": {"style": "page", "page_param": "_page", "size_param": "_limit"},
        "offset": {"style": "offset", "offset_param": "_start", "limit_param": "_limit"},
        "none": {"style": "none"},
    }
    table: dict[str, Any] = {
        "path": path,
        "find_params": {"email": "email"},
        "update_body": "top_level",  # json-server's PATCH replaces a nested object sent
        "pagination": styles[style],
        **entity,
    }
    return {
        "type": "rest",
        "base_url": url,
        "rate_limit": 0,
        "max_retries": 1,
        "page_size": page_size,
        "entities": {"customers": table},
    }
