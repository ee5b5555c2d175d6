"""The daemon's signal handlers take no lock: a signal that comes while the main thread holds
one (the log's, as it writes a line) still stops, and a second one still exits at once.

Each check runs a real process that installs the daemon's ``Signals``, takes the lock and
sends itself the signals while holding it: the handlers run then, deterministically (a
signal sent to the process itself is handled in its main thread before ``os.kill`` returns
to the next step). When a handler logged itself, it waited for that lock for ever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import structlog
    from syncengine.daemon.signals import Signals
    from syncengine.logging import configure

    configure("info", json_output=True)
    log_lock = structlog.get_config()["logger_factory"]()._lock  # the log's write lock
    stopped = threading.Event()

    def exit_now(code):
        sys.stderr.flush()
        os._exit(code)

    def stop():
        stopped.set()
        if sys.argv[1] == "stuck":  # a stop that never returns holds the signals' thread
            threading.Event().wait()

    signals = Signals(stop=stop, exit_now=exit_now, wake=lambda: None)
    signals.install()
    with log_lock:  # as if the main thread were writing a line of the log
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    if not stopped.wait(5):
        sys.exit("the first signal did not stop")
    print("stopped", flush=True)
    if sys.argv[1] in ("twice", "stuck"):
        with log_lock:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        time.sleep(10)
        sys.exit("the second signal did not exit")
    """
)


def _run(mode: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "signals_under_lock.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(script), mode],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def _events(stderr: str) -> list[str]:
    return [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]


def test_a_signal_while_the_log_is_being_written_stops_the_daemon(tmp_path: Path) -> None:
    done = _run("once", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"
    assert _events(done.stderr) == ["signal received: finishing running syncs, then exiting"]


def test_a_second_signal_while_the_log_is_being_written_exits_at_once(tmp_path: Path) -> None:
    done = _run("twice", tmp_path)
    assert done.returncode == 128 + 15, (done.returncode, done.stderr)
    assert _events(done.stderr) == [
        "signal received: finishing running syncs, then exiting",
        "second signal: exiting at once",
    ]


def test_a_second_signal_exits_even_while_the_first_ones_stop_hangs(tmp_path: Path) -> None:
    done = _run("stuck", tmp_path)
    assert done.returncode == 128 + 15, (done.returncode, done.stderr)
    assert _events(done.stderr) == ["signal received: finishing running syncs, then exiting"]
