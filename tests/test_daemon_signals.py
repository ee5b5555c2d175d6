"""The daemon's signals are acted on outside the main thread: a signal that comes while that
thread holds a lock (the log's, as it writes a line) or waits in C (on a locked state store)
still stops, a second one still exits at once, and a log that cannot be written stops
nothing.

Each check runs a real process that installs the daemon's ``Signals`` and sends itself the
signals. Under the lock the Python handler runs while the lock is held, deterministically (a
signal sent to the process itself is handled in its main thread before ``os.kill`` returns
to the next step): when the handlers logged themselves, they waited for that lock for ever.
In SQLite's busy wait the main thread runs no Python code until the wait ends (20 s here), so
a handler could not run before then."""

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


BUSY_OR_BROKEN = textwrap.dedent(
    """
    import contextlib, os, signal, sqlite3, sys, threading, time
    from syncengine.daemon.signals import Signals
    from syncengine.logging import configure

    class Broken:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    configure("info", json_output=True, stream=Broken() if sys.argv[1] == "broken" else None)
    stopped = threading.Event()

    def exit_now(code):
        os._exit(code)

    signals = Signals(stop=stopped.set, exit_now=exit_now, wake=lambda: None)
    signals.install()

    def send(*delays):
        for delay in delays:
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGTERM)

    if sys.argv[1] == "other":  # another signal with a Python handler is not a reload
        signal.signal(signal.SIGUSR1, lambda *_: None)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.5)
        other = signals.take_reload_request()
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not signals.take_reload_request() and time.monotonic() < deadline:
            time.sleep(0.02)
        hup = time.monotonic() < deadline
        print(f"other {other} hup {hup}", flush=True)
        sys.exit(0)
    if sys.argv[1] == "broken":  # the log raises: the stop still comes
        os.kill(os.getpid(), signal.SIGTERM)
        print("stopped" if stopped.wait(5) else "not stopped", flush=True)
        sys.exit(0)
    holder = sqlite3.connect(sys.argv[2], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    waiter = sqlite3.connect(sys.argv[2], timeout=20, isolation_level=None, check_same_thread=False)
    threading.Thread(target=send, args=(0.5, 0.5), daemon=True).start()
    with contextlib.suppress(sqlite3.OperationalError):  # "database is locked", after 20 s
        waiter.execute("BEGIN IMMEDIATE")  # the main thread waits in C meanwhile
    print("the busy wait ended first", flush=True)
    sys.exit(1)
    """
)


def _run(mode: str, tmp_path: Path, script_text: str = SCRIPT) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "signals.py"
    script.write_text(script_text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(script), mode, str(tmp_path / "state.db")],
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


def test_two_signals_while_the_main_thread_waits_on_a_locked_store_exit_at_once(
    tmp_path: Path,
) -> None:
    done = _run("busy", tmp_path, BUSY_OR_BROKEN)
    assert "the busy wait ended first" not in done.stdout, done.stderr
    assert done.returncode == 128 + 15, (done.returncode, done.stdout, done.stderr)


def test_a_log_that_cannot_be_written_does_not_keep_a_signal_from_stopping(
    tmp_path: Path,
) -> None:
    done = _run("broken", tmp_path, BUSY_OR_BROKEN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


def test_sighup_asks_for_a_reload_and_another_signal_does_not(tmp_path: Path) -> None:
    done = _run("other", tmp_path, BUSY_OR_BROKEN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "other False hup True"
