"""Server processes for tests and benchmarks.

- ``free_port()`` / ``port_accepts()``: a loopback port that was free a moment ago, and
  whether a port accepts TCP connections.
- ``ServerProcess``: run a server command in its own process group, with its output in a log
  file, wait until it is ready (an output line such as ``listening on
  http://127.0.0.1:PORT``, and/or a TCP port accepting connections), and stop it (SIGTERM,
  then SIGKILL) afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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
