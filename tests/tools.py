"""Helpers for tests that need external tools or real server processes.

- ``find_prism()`` / ``ensure_prism()``: locate Stoplight Prism (the OpenAPI validating proxy the
  contract tests run), installing it from npm into ``<repo>/.cache/node`` when it is missing.
  Several pytest-xdist workers may call ``ensure_prism()`` at once: the install runs under a
  file lock, so only one of them installs and the others wait and reuse it.
- ``tool_missing(reason)``: skip the test, or fail it when ``SYNCENGINE_REQUIRE_TOOLS=1``
  (CI sets it, so that a missing tool can never turn the contract tests into silent skips).
- ``free_port()`` and ``ServerProcess``: run a server command in its own process group, with
  its output in a log file, wait until it is ready (an output line such as ``listening on
  http://127.0.0.1:PORT``, and/or a TCP port accepting connections), and stop it (SIGTERM,
  then SIGKILL) afterwards.
- ``RecordingTransport``: a real httpx transport that keeps every exchange, with Prism's
  findings (``sl-violations`` header, ``application/problem+json`` errors) readable on each.
- ``FakeUpstream``: an in-thread HTTP server with canned replies per (method, path).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"
PRISM_PACKAGE = "@stoplight/prism-cli@5"
PRISM_MAJOR = "5"
REQUIRE_TOOLS_ENV = "SYNCENGINE_REQUIRE_TOOLS"
NPM_INSTALL_TIMEOUT = 600.0
PROBLEM_JSON = "application/problem+json"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ------------------------------------------------------------------------ missing tools


def tools_required() -> bool:
    """Whether a missing external tool must fail the tests (CI) instead of skipping them."""
    return os.environ.get(REQUIRE_TOOLS_ENV, "").strip() == "1"


def tool_missing(reason: str) -> NoReturn:
    """Skip the calling test (or fixture) for ``reason``; fail it instead under
    ``SYNCENGINE_REQUIRE_TOOLS=1``."""
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_TOOLS_ENV}=1, so this is a failure)", pytrace=False)
    print(f"skipping: {reason}", file=sys.stderr)
    pytest.skip(reason)


# ------------------------------------------------------------------------ Prism


def _prism_candidates() -> list[Path]:
    candidates: list[Path] = []
    on_path = shutil.which("prism")
    if on_path:
        candidates.append(Path(on_path))
    for base in (REPO_ROOT / ".ci" / "node", CACHE_DIR / "node"):
        candidates.append(base / "node_modules" / ".bin" / "prism")
    return candidates


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_prism() -> str | None:
    """The first Prism found: on PATH, in ``<repo>/.ci/node`` (CI), in ``<repo>/.cache/node``
    (installed by ``ensure_prism``); None when there is none."""
    for candidate in _prism_candidates():
        if _executable(candidate):
            return str(candidate)
    return None


def prism_version(prism: str) -> str | None:
    """What ``prism --version`` prints, or None when it does not run."""
    try:
        done = subprocess.run(
            [prism, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _usable_prism() -> str | None:
    """The first Prism found that runs and is major version 5 (the flags the tests use)."""
    for candidate in _prism_candidates():
        if not _executable(candidate):
            continue
        version = prism_version(str(candidate))
        if version is not None and version.split(".", 1)[0] == PRISM_MAJOR:
            return str(candidate)
    return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _npm_install_prism() -> str:
    """Install Prism into ``<repo>/.cache/node``; its path, or RuntimeError saying why not."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH (install Node.js and npm)")
    prefix = CACHE_DIR / "node"
    command = [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(prefix)]
    try:
        done = subprocess.run(
            [*command, PRISM_PACKAGE],
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"npm install {PRISM_PACKAGE} took more than {NPM_INSTALL_TIMEOUT:.0f}s"
        ) from None
    except OSError as exc:
        raise RuntimeError(f"cannot run npm: {exc}") from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-2000:]
        raise RuntimeError(
            f"npm install {PRISM_PACKAGE} failed with exit code {done.returncode}: {output}"
        )
    prism = prefix / "node_modules" / ".bin" / "prism"
    version = prism_version(str(prism)) if _executable(prism) else None
    if version is None:
        raise RuntimeError(f"npm install {PRISM_PACKAGE} finished but {prism} does not run")
    return str(prism)


def ensure_prism() -> str:
    """The path of a working Prism 5, installing it with npm when none is found.

    When it can be neither found nor installed, the test is skipped with the reason (failed
    under ``SYNCENGINE_REQUIRE_TOOLS=1``).
    """
    found = _usable_prism()
    if found is not None:
        return found
    with _file_lock(CACHE_DIR / "node.lock"):
        found = _usable_prism()  # another worker may have installed it while we waited
        if found is not None:
            return found
        try:
            return _npm_install_prism()
        except RuntimeError as exc:
            reason = str(exc)
    tool_missing(
        f"Prism is not installed and npm could not install it: {reason}; the contract tests need it"
    )


# ------------------------------------------------------------------------ servers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may still take it first:
    callers that bind it later should retry with a new port when the bind fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ServerStartError(RuntimeError):
    """A server process exited or was not ready in time; the message carries its output."""


class ServerProcess:
    """A server command run for the duration of a ``with`` block.

    Ready when ``ready`` (a regular expression) matches its output and, once the port is
    known, that port accepts TCP connections. The port is ``port`` when given, otherwise the
    ``port`` named group (or the first group) of the ``ready`` match, e.g.
    ``ready=r"listening on http://[^\\s:]+:(?P<port>\\d+)"`` for a server started on port 0.
    At least one of ``ready`` and ``port`` is needed.

    The process runs in its own process group with stdout and stderr in a temporary log file
    (``output()``); leaving the block sends SIGTERM to the group, then SIGKILL after
    ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str | None = None,
        ready: str | re.Pattern[str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        timeout: float = 60.0,
        stop_timeout: float = 5.0,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        if ready is None and port is None:
            raise ValueError("ServerProcess needs a ready pattern, a port, or both")
        self.command = [str(part) for part in command]
        self.name = name or Path(self.command[0]).name
        self.ready = re.compile(ready) if isinstance(ready, str) else ready
        self.port = port
        self.host = host
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.cwd = str(cwd) if cwd is not None else None
        self.ready_match: re.Match[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._final_output: str | None = None

    # -- context manager
    def __enter__(self) -> Self:
        """Start the server unless ``start()`` already did."""
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- properties
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name}: the port is not known yet")
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr), without colour codes."""
        if self._final_output is not None:
            return self._final_output
        if self._log_path is None:
            return ""
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return _ANSI.sub("", text)

    # -- lifecycle
    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError(f"{self.name} was already started")
        descriptor, log_name = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        self._log_path = Path(log_name)
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=descriptor,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(descriptor)
            self._log_path.unlink(missing_ok=True)
            raise ServerStartError(f"cannot start {self.name}: {exc}") from None
        os.close(descriptor)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.timeout
        while True:
            if self.ready is not None and self.ready_match is None:
                self.ready_match = self.ready.search(self.output())
                if self.ready_match is not None and self.port is None:
                    self.port = self._port_from(self.ready_match)
            line_ok = self.ready is None or self.ready_match is not None
            if line_ok and self.port is not None and port_accepts(self.host, self.port):
                return
            code = process.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {code} before it was ready; "
                    f"command: {' '.join(self.command)}\n--- its output ---\n{self.output()}"
                )
            if time.monotonic() > deadline:
                waiting_for = []
                if not line_ok and self.ready is not None:
                    waiting_for.append(f"output matching {self.ready.pattern!r}")
                if self.port is not None:
                    waiting_for.append(f"port {self.port} to accept connections")
                raise ServerStartError(
                    f"{self.name} was not ready after {self.timeout:.0f}s (waited for "
                    f"{' and '.join(waiting_for)}); command: {' '.join(self.command)}\n"
                    f"--- its output ---\n{self.output()}"
                )
            time.sleep(0.05)

    def _port_from(self, match: re.Match[str]) -> int:
        if "port" in match.re.groupindex:
            text = match.group("port")
        else:
            text = match.group(1) if match.re.groups else None
        if text is None or not text.isdigit():
            raise ServerStartError(
                f"{self.name}: no port given and the ready pattern {match.re.pattern!r} "
                "captured none"
            )
        return int(text)

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it is still there after ``stop_timeout``."""
        process = self._process
        if process is None or self._final_output is not None:
            return
        if process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait(timeout=self.stop_timeout)
        # children the server forked may outlive it: the group goes too
        self._signal_group(signal.SIGKILL)
        self._final_output = self.output()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)


# ------------------------------------------------------------------------ HTTP recording


@dataclass
class Exchange:
    """One request and the response it got (from Prism, when it goes through Prism)."""

    method: str
    url: httpx.URL
    request_body: bytes
    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def path(self) -> str:
        return self.url.path

    def violations(self) -> list[dict[str, Any]]:
        """Prism's findings: the ``sl-violations`` header (passed-through responses) or the
        ``validation`` list of its problem+json error."""
        found: list[dict[str, Any]] = []
        header = self.response.headers.get("sl-violations")
        if header:
            found.extend(json.loads(header))
        problem = self.problem()
        if problem is not None and not header:
            found.extend(problem.get("validation", []))
        return found

    def problem(self) -> dict[str, Any] | None:
        """Prism's own error (``application/problem+json``), None for an upstream response."""
        if PROBLEM_JSON not in self.response.headers.get("content-type", ""):
            return None
        try:
            body = self.response.json()
        except ValueError:
            return {"title": self.response.text[:500]}
        return body if isinstance(body, dict) else {"title": repr(body)}

    def describe(self) -> str:
        text = f"{self.method} {self.url.raw_path.decode()} -> {self.status}"
        if self.request_body:
            text += f"\n  request body: {self.request_body.decode(errors='replace')[:500]}"
        problem = self.problem()
        if problem is not None:
            text += f"\n  Prism error: {problem.get('type')} {problem.get('title')}"
        for violation in self.violations():
            where = ".".join(str(p) for p in violation.get("location", []))
            text += f"\n  [{violation.get('severity')}] {where}: {violation.get('message')}"
        return text


class RecordingTransport(httpx.BaseTransport):
    """A real HTTP transport that remembers every exchange (give it to an ``httpx.Client``, or
    to a connector through ``ConnectorContext.extra["transport"]``)."""

    def __init__(self, **transport_options: Any) -> None:
        """``transport_options`` go to the ``httpx.HTTPTransport`` that does the work."""
        self.inner = httpx.HTTPTransport(**transport_options)
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        upstream = self.inner.handle_request(request)
        try:
            raw = b"".join(upstream.iter_raw())
        finally:
            upstream.close()
        # content= makes the response already read: the client and the test both see it
        response = httpx.Response(
            upstream.status_code, headers=upstream.headers, content=raw, request=request
        )
        self.exchanges.append(Exchange(request.method, request.url, body, response))
        return response

    def close(self) -> None:
        self.inner.close()

    def flagged(self) -> list[Exchange]:
        """Exchanges Prism objected to: its own errors, or any violation, even a warning."""
        return [e for e in self.exchanges if e.problem() is not None or e.violations()]

    def report(self, exchanges: list[Exchange] | None = None) -> str:
        chosen = self.flagged() if exchanges is None else exchanges
        return "\n".join(e.describe() for e in chosen) or "(Prism flagged nothing)"

    def clear(self) -> None:
        self.exchanges.clear()


# ------------------------------------------------------------------------ a fake upstream


Reply = tuple[int, str, bytes]
"""status, content type, body"""


class FakeUpstream:
    """A tiny HTTP server in a thread answering each ``(method, path)`` with a canned reply
    (anything else: 404), e.g. responses that break a contract on purpose. ``seen`` lists the
    requests it got. Use it as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, replies: Mapping[tuple[str, str], Reply]) -> None:
        self.replies = dict(replies)
        self.seen: list[tuple[str, str]] = []
        handler = self._handler()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                upstream.seen.append((self.command, path))
                status, content_type, body = upstream.replies.get(
                    (self.command, path), (404, "application/json", b'{"message": "no reply"}')
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _reply

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def json_reply(body: Any, status: int = 200) -> Reply:
    return status, "application/json", json.dumps(body).encode()
