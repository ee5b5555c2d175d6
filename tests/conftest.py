"""Shared fixtures and the hypothesis profiles (``HYPOTHESIS_PROFILE=ci`` in CI)."""

from __future__ import annotations

import compileall
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog
from hypothesis import HealthCheck, settings

from tests.tools import tool_missing

if TYPE_CHECKING:
    from syncengine.state import StateStore

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"
"""Where the PostgreSQL tests connect to create (and drop) their databases."""
PG_PASSWORD = "pg-secret"
"""Put in every ``pg_url``: trust authentication ignores it, and tests can check it is masked."""
PG_HOW_TO_START = (
    "start one that trusts local connections and has a database 'test', e.g. "
    "`docker run -d -p 127.0.0.1:5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust "
    "-e POSTGRES_DB=test postgres:16`"
)

settings.register_profile(
    "ci",
    # 200: the six state machines were 10 of CI's 19 minutes at 300; dev runs and
    # ``--hypothesis-seed`` explore further
    max_examples=200,
    # the same examples on every CI run: a green run stays green and a red one replays.
    # Random exploration is what dev runs do; what they find is fixed, or kept as a strict
    # xfail regression test until it is
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


REPO = Path(__file__).resolve().parent.parent

# a record read keeps only some canonical fields in memory until it is planned; the suite
# makes a look at any other field an error (``syncengine.spill.STRICT``), in its own process
# and in every process it starts
os.environ["SYNCENGINE_TEST_STRICT_PROJECTION"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    """Before any test starts: hand the tests to the xdist workers one or two at a time, and
    compile the package's modules to bytecode once.

    Scheduling: xdist's load scheduler sends each worker a share of the tests up front; with
    ``maxschedchunk`` at 1 it sends a worker a test as it finishes one (two at the start),
    so the longest tests, sorted first (``pytest_collection_modifyitems``), start at once on
    every worker. Set here rather than in ``addopts`` so that ``pytest -p no:xdist`` (or
    pytest without the plugin) still starts.

    Bytecode: the integration tests start ``syncengine`` as a process well over a thousand
    times. An editable install is not compiled by pip, and where ``PYTHONDONTWRITEBYTECODE``
    is set (this project's Dockerfile sets it, and so do many CI images) no process writes
    the bytecode it made, so each one compiled every module it imported again: about 0.13 s
    of CPU a process. Compiling changes nothing a test sees; a module edited later is
    compiled again by Python as usual, and a checkout we may not write to is left as it
    is. Done once, by the process that starts the xdist workers (or the only one)."""
    if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk") is None:
        config.option.maxschedchunk = 1
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for package in ("syncengine", "connectors", "mappings"):
        if os.access(REPO / package, os.W_OK):
            compileall.compile_dir(REPO / package, quiet=2)


def _start_rank(item: pytest.Item) -> tuple[bool, int]:
    """How early a test starts: the long ones (marked ``slow``) first, then the others; the
    property tests, then the integration tests, then the quick rest."""
    part = item.path.parent.name
    return (
        item.get_closest_marker("slow") is None,
        0 if part == "property" else 1 if part == "integration" else 2,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the longest tests first. With ``pytest -n N`` each worker takes the next test as it
    finishes one (``pytest_configure``), so the long tests start at once, side by side with
    the short ones, instead of ending the run on one busy worker while the others wait. A
    stable sort: within a rank, collection order (so a module's tests stay together)."""
    items.sort(key=_start_rank)


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Each test leaves logging as it found it: a test that runs the CLI in-process configures
    structlog (``--quiet`` filters out all but errors) and adds the CLI's stdlib handler, and the
    next test on the same xdist worker, whichever it is, must not depend on that."""
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])  # a test may change the list in place
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.configure(**saved)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)


@pytest.fixture(autouse=True)
def _first_sync_slices(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SYNCENGINE_TEST_FIRST_SLICE=N`` applies every first sync of at least N records of
    an entity in slices (``syncengine.slices``) in the tests' own process: the suite then
    checks that slicing decides and writes what a whole plan does. Tests marked
    ``whole_first_sync`` look at how a whole plan is batched, journalled, interrupted or
    compacted (the records a stop leaves, the intents a kill leaves): they keep it whole."""
    size = os.environ.get("SYNCENGINE_TEST_FIRST_SLICE")
    if size and request.node.get_closest_marker("whole_first_sync") is None:
        monkeypatch.setattr("syncengine.slices.FIRST_SLICE", int(size))


@pytest.fixture(autouse=True)
def _fresh_memory_datasets() -> Iterator[None]:
    """Each test starts with empty in-memory members."""
    from syncengine.connectors.memory import MemoryConnector

    MemoryConnector.reset()
    yield
    MemoryConnector.reset()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL of a PostgreSQL database created for this test alone (dropped after).

    When there is no psycopg or no server on ``127.0.0.1:5432`` the test is skipped, saying how
    to start one; under ``SYNCENGINE_REQUIRE_TOOLS=1`` (CI) it fails instead, so that CI never
    silently skips the PostgreSQL tests.
    """
    try:
        import psycopg
    except ImportError:
        tool_missing(
            "psycopg is not installed (it is in the test extras: pip install -e '.[test]')"
        )
    name = f"syncengine_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        tool_missing(f"no PostgreSQL server on 127.0.0.1:5432 ({exc}); {PG_HOW_TO_START}")
    try:
        yield f"postgresql+psycopg://postgres:{PG_PASSWORD}@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """A state store on a SQLite file, then on PostgreSQL (``pg_url``)."""
    from syncengine.state import StateStore

    url = f"sqlite:///{tmp_path / 'either-state.db'}"
    if request.param == "postgresql":
        url = str(request.getfixturevalue("pg_url"))
    store = StateStore.open(url)
    yield store
    store.close()
