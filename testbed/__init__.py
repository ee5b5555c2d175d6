"""What the tests and the benchmarks both set up: real server processes, the HCP sandbox as a
process, the npm tools (Prism, json-server) and json-server itself.

It lives at the top of the repository, beside ``tests/`` and ``bench/``, because both use it
and neither may import the other (benchmarks run as ``python bench/x.py`` and must not import
``tests``). It is not part of the shipped package (``pyproject.toml`` lists the packages it
ships), and it does not import pytest: a missing tool raises :class:`ToolUnavailable`, which
the tests turn into a skip (a failure under ``SYNCENGINE_REQUIRE_TOOLS=1``, see
``tests/tools.py``) and a benchmark into a message.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"


class ToolUnavailable(RuntimeError):
    """An external tool can be neither found nor installed; the message says why."""
