"""The README's first hour, run as written: the demo, every command the demo then suggests,
and the configuration walk-through.

Everything is real: the installed ``syncengine`` command in a folder of its own, the sandbox
as a process on loopback, started the way the demo or the README says (in the background, as
a user would in a second terminal) and stopped after. The commands come from the README and
from the demo's own output (its ``$ syncengine ...`` lines), so this test follows them: a
printed suggestion that fails, fails the test. Nothing is substituted in them, except in the
configuration walk-through the README's fixed port 8765 (by a free one, in the command and in
the copy of config.example.toml alike: tests run in parallel).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from syncengine import demo
from testbed.processes import ServerProcess, free_port
from testbed.sandbox import READY
from tests.csvfiles import read_csv
from tests.integration.conftest import (
    CLI_TIMEOUT,
    SYNCENGINE,
    CliResult,
    assert_clean_exit,
    cli_env,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
PRINTED = re.compile(r"^\s*\$ (syncengine .+)$", re.MULTILINE)
"""How the demo prints a command to run: on a line of its own after ``$``."""
KEPT = re.compile(r"The sandbox is serving on http://127\.0\.0\.1:(?P<port>\d+)\. Press Ctrl-C")
BOOKS_NUMBER = "+15550109999"
"""The mobile number the demo's bookkeeper typed for the customer in conflict."""
OTHER_KEY = "hcp-live-key-of-this-shell"
"""An HCP_API_KEY the user may have set for the live API: the demo's commands must not care."""


# ------------------------------------------------------------------------------ helpers


def sh_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", markdown, re.DOTALL)


def section(markdown: str, title: str) -> str:
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


def argv(command: str) -> list[str]:
    """A printed command line as the shell splits it, run by the installed command."""
    words = shlex.split(command)
    assert words[0] == "syncengine", command
    return [str(SYNCENGINE), *words[1:]]


def run(command: str, cwd: Path, env: dict[str, str]) -> CliResult:
    words = argv(command)
    done = subprocess.run(
        words, capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd=cwd, env=env
    )
    return CliResult(words[1:], done.returncode, done.stdout, done.stderr)


def printed_commands(output: str) -> list[str]:
    return PRINTED.findall(output)


def sandbox_process(command: str, cwd: Path, env: dict[str, str]) -> ServerProcess:
    """A printed ``syncengine sandbox ...`` started in the background, ready."""
    assert shlex.split(command)[1] == "sandbox", command
    return ServerProcess(argv(command), name="sandbox", ready=READY, env=env, cwd=cwd).start()


def customer_by_mobile(base_url: str, mobile: str) -> list[str]:
    """The HCP customers (first names) with this mobile number (in any format), read from
    the sandbox."""
    digits = re.sub(r"\D", "", mobile)[-10:]
    response = httpx.get(
        f"{base_url}/customers",
        params={"page_size": 200},
        headers={"Authorization": f"Token {demo.API_KEY}"},
        timeout=30,
    )
    response.raise_for_status()
    return [
        c["first_name"]
        for c in response.json()["customers"]
        if re.sub(r"\D", "", c.get("mobile_number") or "").endswith(digits)
    ]


def readme_demo(home: Path, env: dict[str, str]) -> tuple[CliResult, list[str]]:
    """The README's first command (after the install it chains to), in an empty folder;
    returns its result and the commands it prints."""
    first = sh_blocks(README)[0].strip()
    command = first.split("&&")[-1].strip()
    assert command == "syncengine demo", first
    home.mkdir()
    demo = run(command, home, env)
    assert_clean_exit(demo, 0)
    assert "The books reconcile" in demo.stdout
    return demo, printed_commands(demo.stdout)


def kind(command: str) -> str:
    """``conflicts resolve``, ``sync``, ...: the command's words before its options."""
    words = []
    for word in shlex.split(command)[1:]:
        if word.startswith("-") or word[0].isdigit() or "/" in word:
            break
        words.append(word)
    return " ".join(words)


# ------------------------------------------------------------------------------ the demo


def test_every_command_the_demo_suggests_works_as_printed(tmp_path: Path) -> None:
    # A new user's shell: no HCP_API_KEY.
    env = cli_env(api_key=None)
    home = tmp_path / "home"
    demo, printed = readme_demo(home, env)
    folder = home / "syncengine-demo"

    kinds = [kind(c) for c in printed]
    assert kinds == [
        "sandbox",
        "demo",
        "conflicts list",
        "conflicts resolve",
        "sync",
        "reconcile-report",
        "status",
    ], printed
    # The sandbox stopped with the demo: the commands that talk to it say so, and the
    # command that starts it again comes first.
    out = demo.stdout
    assert "The sandbox stopped with the demo" in out
    for needed in ("sync", "reconcile-report"):
        at = out.index(printed[kinds.index(needed)])
        assert out[:at].endswith("(needs the sandbox):\n    $ "), (needed, out)
    assert printed[0].endswith(f"--data {folder / 'hcp-data.json'}"), printed[0]

    # Without the sandbox, a command that needs it says so in one line, quickly: the message
    # below is the one of a refused connection on this machine, which is tried again only
    # briefly (its delays: tests/unit/test_http.py), not the one of a backoff given up.
    report = run(printed[kinds.index("reconcile-report")], home, env)
    assert_clean_exit(report, 4)  # it could not read; not 1, "the books do not reconcile"
    assert report.stdout == ""
    [line] = report.stderr.splitlines()
    assert re.fullmatch(
        r"reconcile-report could not read: hcp: GET /\w+: cannot connect to "
        r"http://127\.0\.0\.1:\d+ \(connection refused\): nothing is listening there; start "
        r"that server, or check the base_url; nothing was written, run it again later",
        line,
    ), report

    # Start it as printed, in the background (a second terminal), and run the rest in order.
    box = sandbox_process(printed[0], home, env)
    try:
        results = {}
        for command in printed[2:]:
            result = run(command, home, env)
            assert_clean_exit(result, 0)
            results[kind(command)] = result
        assert customer_by_mobile(box.url, BOOKS_NUMBER), "the settled number did not reach HCP"
    finally:
        box.stop()

    listed = results["conflicts list"].stdout
    conflict_id = re.search(r"^#(\d+) hcp-books · customers · ", listed, re.MULTILINE)
    assert conflict_id is not None, listed
    resolve = printed[kinds.index("conflicts resolve")]
    assert shlex.split(resolve)[3] == conflict_id.group(1), (resolve, listed)
    assert BOOKS_NUMBER in results["conflicts resolve"].stdout
    assert "The books reconcile" in results["reconcile-report"].stdout
    assert "open conflicts: 0" in results["status"].stdout
    # The demo wrote the customers without an e-mail by mobile number in the invoices sheet.
    shown = {r["Customer Email"] for r in read_csv(folder / "books" / "invoices.csv")}
    assert any(s.startswith("+1") for s in shown) and any("@" in s for s in shown), shown


def test_the_demo_keeps_its_sandbox_for_the_suggestions_until_ctrl_c(tmp_path: Path) -> None:
    env = cli_env(api_key=None)
    home = tmp_path / "home"
    _, printed = readme_demo(home, env)
    [keep] = [c for c in printed if kind(c) == "demo"]
    assert "--keep-sandbox" in shlex.split(keep)

    log = tmp_path / "demo-keep.log"
    # The user's shell may hold a key for the live API: the demo's config does not use it.
    keep_env = {**env, "HCP_API_KEY": OTHER_KEY}
    with log.open("wb") as sink:
        demo = subprocess.Popen(
            argv(keep), cwd=home, env=keep_env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while (kept := KEPT.search(log.read_text(encoding="utf-8"))) is None:
            assert demo.poll() is None, log.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
            time.sleep(0.1)
        output = log.read_text(encoding="utf-8")
        suggested = printed_commands(output)
        assert [kind(c) for c in suggested] == [
            "conflicts list",
            "conflicts resolve",
            "sync",
            "reconcile-report",
            "status",
        ], output
        assert "(needs the sandbox)" not in output
        for command in suggested:
            result = run(command, home, keep_env)
            assert_clean_exit(result, 0)
            assert OTHER_KEY not in result.output
        # Ctrl-C stops it: exit 0, and what the sandbox held is saved.
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0, log.read_text(encoding="utf-8")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    output = log.read_text(encoding="utf-8")
    assert "The sandbox stopped; what it held is saved in" in output
    assert "Traceback" not in output
    [restart] = printed_commands(output[output.index("The sandbox stopped;") :])
    assert f"--port {kept.group('port')}" in restart
    box = sandbox_process(restart, home, env)
    try:
        assert customer_by_mobile(box.url, BOOKS_NUMBER), "the saved data lost the sync's write"
        status = run(f"syncengine status -c {home / 'syncengine-demo' / 'config.toml'}", home, env)
        assert_clean_exit(status, 0)
        again = run(f"syncengine sync -c {home / 'syncengine-demo' / 'config.toml'}", home, env)
        assert_clean_exit(again, 0)
        assert "Nothing to do" in again.stdout, again
    finally:
        box.stop()


# ------------------------------------------------------------------- the configuration example


def test_the_configuration_walk_through_runs_as_written_and_leaves_only_ignored_files(
    tmp_path: Path,
) -> None:
    blocks = sh_blocks(section(README, "Configuration"))
    start, script = blocks[0].strip(), blocks[1]
    assert kind(start) == "sandbox" and "--port 8765" in start, start
    assert "config.example.toml" in script, script

    port = free_port()
    # A checkout of the repository, as far as the walk-through reads it.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    example = (REPO / "config.example.toml").read_text(encoding="utf-8")
    assert example.count("127.0.0.1:8765") == 1
    (checkout / "config.example.toml").write_text(
        example.replace("127.0.0.1:8765", f"127.0.0.1:{port}"), encoding="utf-8"
    )
    env = cli_env(api_key=None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    box = sandbox_process(start.replace("--port 8765", f"--port {port}"), checkout, env)
    try:
        done = subprocess.run(
            ["bash", "-e", "-x", "-c", script],
            capture_output=True,
            text=True,
            timeout=4 * CLI_TIMEOUT,
            cwd=checkout,
            env=env,
        )
    finally:
        box.stop()
    shown = f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    assert done.returncode == 0, shown
    assert "Traceback" not in done.stdout + done.stderr, shown
    assert "config.toml: ok" in done.stdout, shown
    assert "Dry run: nothing was written" in done.stdout, shown
    rows = read_csv(checkout / "syncengine-example" / "books" / "customers.csv")
    assert len(rows) == 50 and all(r["Sync ID"] for r in rows), rows

    # Everything the walk-through wrote is in files the repository's .gitignore covers.
    written = sorted(
        str(p.relative_to(checkout))
        for p in checkout.rglob("*")
        if p.is_file() and p.name != "config.example.toml"
    )
    assert "syncengine-example/syncengine-state.db" in written, written
    ignored = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(written),
        capture_output=True,
        text=True,
        check=False,
    )
    assert sorted(ignored.stdout.split()) == written, (written, ignored)
