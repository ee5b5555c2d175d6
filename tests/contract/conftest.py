"""Fixtures for the contract tests: Prism as a validating proxy in front of an upstream.

``prism proxy --errors SPEC UPSTREAM`` (Prism 5) checks every request against the OpenAPI
document before forwarding it: a request that violates it is answered by Prism itself (422
``application/problem+json``, or 401 when the ``Authorization`` header the security schemes
ask for is missing) and never reaches the upstream. It then checks the upstream's response:
a violation of severity *error* turns the response into a 500 ``application/problem+json``
of type ``…#VIOLATIONS``; *warnings* (such as a status code the document does not declare)
let the response through with an ``sl-violations`` header. ``RecordingTransport`` keeps every
exchange so that tests can assert on those and show Prism's findings when one fails.

Fixture names are prefixed (``prism_``, ``hcp_``) because the connector contract suites share
this directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.tools

from testbed import REPO_ROOT
from testbed.processes import ServerProcess, ServerStartError, free_port
from testbed.sandbox import start_sandbox as start_sandbox_process
from tests.tools import FakeUpstream, RecordingTransport, ensure_prism, tool_missing

HCP_API_KEY = "contract-test-key"
HCP_SEED = 11
"""Seeded customers in the sandbox: with a page size of 3 the connector reads four pages."""
SPEC_ENV = "SYNCENGINE_HCP_SPEC"
SPEC_NAME = "housecallpro-openapi.yaml"
PRISM_START_ATTEMPTS = 3

# ------------------------------------------------------------------------ tools and contract


def spec_candidates() -> list[Path]:
    """Where the Housecall Pro OpenAPI document may be, first match wins: ``$SYNCENGINE_HCP_SPEC``,
    ``<repo>/spec/``, and the ``shared/spec/`` folder beside the checkout (where DESIGN.md and
    the spec live in the development workspace)."""
    candidates = []
    configured = os.environ.get(SPEC_ENV, "").strip()
    if configured:
        candidates.append(Path(configured))
    candidates.append(REPO_ROOT / "spec" / SPEC_NAME)
    candidates.append(REPO_ROOT.parent / "shared" / "spec" / SPEC_NAME)
    return candidates


@pytest.fixture(scope="session")
def hcp_openapi_spec() -> Path:
    """The Housecall Pro OpenAPI document (skip, or fail under SYNCENGINE_REQUIRE_TOOLS=1,
    when it cannot be found)."""
    for candidate in spec_candidates():
        if candidate.is_file():
            return candidate.resolve()
    tool_missing(
        f"the Housecall Pro OpenAPI document {SPEC_NAME} was not found (looked at "
        f"{', '.join(str(c) for c in spec_candidates())}; set {SPEC_ENV} to its path)"
    )


@pytest.fixture(scope="session")
def hcp_api_key() -> str:
    """The API key the sandbox accepts (``Authorization: Token KEY`` or ``Bearer KEY``)."""
    return HCP_API_KEY


@pytest.fixture(scope="session")
def prism_bin() -> str:
    """A working Prism 5 (installed with npm on first use when missing)."""
    return ensure_prism()


# ------------------------------------------------------------------------ processes


def start_sandbox(*, api_key: str = HCP_API_KEY, seed: int = HCP_SEED) -> ServerProcess:
    """The Housecall Pro sandbox in a subprocess, on a port the system picks."""
    return start_sandbox_process(api_key=api_key, seed=seed)


def start_prism_proxy(prism: str, spec: Path, upstream: str) -> ServerProcess:
    """``prism proxy --errors`` in front of ``upstream``, on a free port. The port is picked
    before Prism binds it, so a start that fails (another process took the port meanwhile)
    is retried on a new one."""
    failures: list[str] = []
    for _ in range(PRISM_START_ATTEMPTS):
        port = free_port()
        command = [
            prism, "proxy", "--errors", str(spec), upstream,
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        server = ServerProcess(
            command,
            name="prism-proxy",
            ready=rf"Prism is listening on http://127\.0\.0\.1:{port}\b",
            port=port,
            env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        )
        try:
            return server.start()
        except ServerStartError as exc:
            failures.append(str(exc))
    raise ServerStartError("\n\n".join(failures))


@pytest.fixture(scope="module")
def hcp_sandbox_process() -> Iterator[ServerProcess]:
    """The sandbox, one per test module; use ``hcp_sandbox`` to get it freshly reset."""
    with start_sandbox() as server:
        yield server


@pytest.fixture(scope="module")
def hcp_prism_proxy(
    prism_bin: str, hcp_openapi_spec: Path, hcp_sandbox_process: ServerProcess
) -> Iterator[ServerProcess]:
    """Prism validating every request to, and every response from, the sandbox."""
    with start_prism_proxy(prism_bin, hcp_openapi_spec, hcp_sandbox_process.url) as server:
        yield server


@pytest.fixture(scope="module")
def hcp_direct_client(hcp_sandbox_process: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=hcp_sandbox_process.url,
        headers={"Authorization": f"Token {HCP_API_KEY}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture
def hcp_sandbox(
    hcp_sandbox_process: ServerProcess, hcp_direct_client: httpx.Client
) -> ServerProcess:
    """The sandbox with its seeded data restored and an empty request log."""
    hcp_direct_client.post("/_sandbox/reset").raise_for_status()
    hcp_direct_client.delete("/_sandbox/requests").raise_for_status()
    return hcp_sandbox_process


@pytest.fixture
def hcp_direct(hcp_sandbox: ServerProcess, hcp_direct_client: httpx.Client) -> httpx.Client:
    """An authenticated client straight to the (freshly reset) sandbox, bypassing Prism: for
    its ``/_sandbox/`` helper endpoints (not in the spec) and to look behind Prism's back."""
    return hcp_direct_client


@pytest.fixture
def prism_recorder() -> Iterator[RecordingTransport]:
    # loopback plain HTTP only: no certificate store to load
    transport = RecordingTransport(verify=False)
    yield transport
    transport.close()


@pytest.fixture(scope="module")
def prism_fake_upstream(
    prism_bin: str, hcp_openapi_spec: Path
) -> Iterator[tuple[FakeUpstream, ServerProcess]]:
    """A ``FakeUpstream`` (no replies yet: set ``upstream.replies`` in the test) behind a
    validating Prism proxy, shared by the tests of a module because Prism takes seconds to
    start. ``seen`` and ``replies`` are emptied before each test that uses ``fake_upstream``."""
    with (
        FakeUpstream({}) as upstream,
        start_prism_proxy(prism_bin, hcp_openapi_spec, upstream.url) as proxy,
    ):
        yield upstream, proxy


@pytest.fixture
def fake_upstream(
    prism_fake_upstream: tuple[FakeUpstream, ServerProcess],
) -> tuple[FakeUpstream, ServerProcess]:
    """``prism_fake_upstream`` with no replies and nothing seen."""
    upstream, proxy = prism_fake_upstream
    upstream.replies.clear()
    upstream.seen.clear()
    return upstream, proxy
