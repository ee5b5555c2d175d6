"""How the ``syncengine`` console script ends its process (``cli.entry``).

It skips the interpreter's teardown once a command is done, so each check runs a real
process: what a command printed, its exit code and the exit handlers must survive that, and
a thread that is not a daemon must still be waited for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from testbed.sandbox import syncengine_command


def _run(body: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``cli.entry()`` in a new interpreter with ``cli.main`` replaced by ``body``."""
    script = textwrap.dedent(
        """\
        import atexit, sys, threading, time
        from syncengine import cli

        def command():
        {body}

        cli.main = command
        atexit.register(lambda: open("atexit-ran", "w").write("yes"))
        cli.entry()
        """
    ).format(body=textwrap.indent(textwrap.dedent(body), "    "))
    # stdout to a pipe is block-buffered then (PYTHONUNBUFFERED, which the CLI tests set,
    # would hide a missing flush)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_output_larger_than_a_pipe_and_the_exit_code_survive(tmp_path: Path) -> None:
    done = _run(
        """\
        sys.stdout.write("x" * 1_000_000 + "\\n")
        sys.stdout.write("then a little, buffered")
        sys.stderr.write("said on stderr\\n")
        sys.exit(3)
        """,
        tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "x" * 1_000_000 + "\nthen a little, buffered"
    assert done.stderr == "said on stderr\n"
    assert (tmp_path / "atexit-ran").read_text() == "yes"


def test_a_command_that_returns_exits_0_with_its_buffered_output(tmp_path: Path) -> None:
    done = _run('print("fine")\nsys.stdout.write("no line end")', tmp_path)
    assert (done.returncode, done.stdout) == (0, "fine\nno line end")
    assert (tmp_path / "atexit-ran").exists()


def test_a_text_exit_status_is_printed_and_exits_1(tmp_path: Path) -> None:
    done = _run('sys.exit("stopped: the reason")', tmp_path)
    assert done.returncode == 1
    assert done.stderr == "stopped: the reason\n"


def test_the_teardown_is_skipped(tmp_path: Path) -> None:
    # an object alive at the end is not finalised: that is the time saved
    done = _run(
        """\
        class Left:
            def __del__(self, open=open):  # builtins are gone by then
                open("finalised", "w").write("yes")

        sys.modules["__main__"].left = Left()
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "atexit-ran").exists()
    assert not (tmp_path / "finalised").exists()


def test_a_thread_that_is_not_a_daemon_is_waited_for(tmp_path: Path) -> None:
    done = _run(
        """\
        def late():
            time.sleep(0.5)
            open("thread-done", "w").write("yes")

        threading.Thread(target=late).start()
        sys.exit(4)
        """,
        tmp_path,
    )
    assert done.returncode == 4, done.stderr
    assert (tmp_path / "thread-done").read_text() == "yes"
    assert (tmp_path / "atexit-ran").exists()


def test_the_console_script_reports_a_user_error_with_its_code(tmp_path: Path) -> None:
    # the installed script goes through entry(): a missing config is exit 2, said plainly
    done = subprocess.run(
        [*syncengine_command(), "validate", "-c", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "missing.toml" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
