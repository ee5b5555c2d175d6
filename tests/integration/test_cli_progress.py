"""The progress bar of ``syncengine sync``, seen on a real pseudo-terminal.

A sandbox process serves Housecall Pro with every request delayed (``--latency-ms``) and
without payments nested in the invoices (``--no-nest-payments``), so that the payments are
read with one request per invoice, one at a time (``concurrency = 1``): the slowest read
there is. The installed ``syncengine sync`` runs with a pty as its terminal; the test reads
what it draws, strips the terminal's control sequences, and looks at the bar's lines.

The latency is a lower bound on how long the payments read takes (about 40 invoices x
100 ms), so what is asserted (several counts seen while the read was under way, a clock past
zero) follows from it however slow the machine is; nothing is asserted about seconds.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.processes import ServerProcess
from testbed.sandbox import start_sandbox
from tests.integration.books import books_config
from tests.integration.conftest import CLI_TIMEOUT, DEFAULT_KEY, SYNCENGINE, cli_env

SEED = 30
"""Customers in the sandbox: about 40 invoices and 80 payments."""
LATENCY_MS = 100

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78]")
_PAYMENTS_LINE = re.compile(
    r"reading hcp payments\s.*?\s(?P<done>[\d,]+)(?:/(?P<total>[\d,]+))?\s+"
    r"(?:(?P<rate>[\d,.]+)/s\s+)?(?P<elapsed>\d+:\d\d:\d\d)"
)


@dataclass
class Screen:
    returncode: int
    raw: str
    """Everything the command wrote to the terminal (stdout and stderr)."""

    @property
    def text(self) -> str:
        """What was written, control sequences (cursor moves, styles) stripped."""
        return _CONTROL.sub("", self.raw)

    @property
    def lines(self) -> list[str]:
        """The lines drawn; a line drawn again in place is one line per drawing."""
        return [part.strip() for part in re.split(r"[\r\n]+", self.text) if part.strip()]

    def payments_bar(self) -> list[re.Match[str]]:
        return [m for line in self.lines if (m := _PAYMENTS_LINE.search(line))]


def run_in_pty(args: list[str], *, env: dict[str, str], cwd: Path) -> Screen:
    """Run the installed ``syncengine`` with a new pseudo-terminal as its stdin, stdout and
    stderr, and keep everything it writes until it exits."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(SYNCENGINE), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            close_fds=True,
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CLI_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            raise AssertionError(f"syncengine {' '.join(args)} ran past {CLI_TIMEOUT}s")
        returncode = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return Screen(returncode, b"".join(chunks).decode("utf-8", errors="replace"))


def terminal_env(**extra: str) -> dict[str, str]:
    env = cli_env(DEFAULT_KEY, TERM="xterm", **extra)
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def slow_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A sandbox answering every request after LATENCY_MS, payments read per invoice. The
    syncs below only read from it (the books start empty), so the tests can share it."""
    server = start_sandbox(
        api_key=DEFAULT_KEY,
        seed=SEED,
        latency_ms=LATENCY_MS,
        flags=["--no-nest-payments"],
        workdir=tmp_path_factory.mktemp("slow-sandbox"),
    )
    yield server
    server.stop()


def config_for(folder: Path, sandbox: ServerProcess) -> Path:
    # one payments request at a time: the read takes one latency per invoice
    return books_config(folder, sandbox.port, concurrency=1)


def test_the_bar_moves_while_payments_are_read_per_invoice(
    tmp_path: Path, slow_sandbox: ServerProcess
) -> None:
    config = config_for(tmp_path / "run", slow_sandbox)
    screen = run_in_pty(["sync", "-c", str(config)], env=terminal_env(), cwd=tmp_path)
    assert screen.returncode == 0, screen.text
    assert "Traceback" not in screen.text

    drawn = screen.payments_bar()
    assert drawn, f"no payments bar was drawn:\n{screen.lines}"
    during = [m for m in drawn if m["total"] is None]  # the total is known once it ends
    counts = [int(m["done"].replace(",", "")) for m in during]
    assert len(set(counts)) >= 2, f"the count did not move during the read: {counts}"
    assert counts == sorted(counts), f"the count went back: {counts}"
    # the clock is the step's own, and runs while it does
    assert any(m["elapsed"] != "0:00:00" for m in during), [m[0] for m in during]
    assert any(m["rate"] for m in during), [m[0] for m in during]
    # ... and what the bar counted is what the read found (the summary's read column)
    read = re.findall(r"payments\s*│\s*hcp\s*│\s*(\d+)\s*│", screen.text)
    assert len(read) == 1, screen.text
    assert max(counts) <= int(read[0])
    # the bar is gone once the sync is over: the summary is the last thing on the screen
    assert "reading" not in screen.lines[-1]


@pytest.mark.parametrize(
    ("flag", "printed"),
    [
        ("-q", "what hcp-books did"),
        ("--quiet", "what hcp-books did"),
        ("--json", '"pipeline": "hcp-books"'),
    ],
)
def test_no_bar_with_quiet_or_json(
    tmp_path: Path, slow_sandbox: ServerProcess, flag: str, printed: str
) -> None:
    config = config_for(tmp_path / "run", slow_sandbox)
    screen = run_in_pty(["sync", flag, "-c", str(config)], env=terminal_env(), cwd=tmp_path)
    assert screen.returncode == 0, screen.text
    assert printed in screen.text  # the outcome is printed as usual
    for word in ("reading", "applying", "writing books", "committing"):
        assert word not in screen.text, screen.lines


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path: Path, slow_sandbox: ServerProcess) -> None:
    """Output to files (a cron job's log): no bar, even where the environment claims colour
    support (FORCE_COLOR, which rich takes for a terminal)."""
    config = config_for(tmp_path / "run", slow_sandbox)
    env = terminal_env(FORCE_COLOR="1")
    done = subprocess.run(
        [str(SYNCENGINE), "sync", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "what hcp-books did" in done.stdout
    assert done.stderr == ""
