"""Exit codes through the real ``syncengine`` command: 4 when a command could not run or
complete (a member down or refusing the key, the sandbox's port taken), 2 for what a person
must fix in a file or on the command line (a damaged workbook, ``--port 99999``); never a
traceback, and nothing written.

A read-only command that cannot read (``reconcile-report`` with HCP down) says so in one line
and exits 4, never 1 (that means "the books do not reconcile") and never "sync failed".
"""

from __future__ import annotations

import io
import re
import socket
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import openpyxl
import pytest

from tests.csvfiles import write_csv
from tests.integration.books import books_config
from tests.integration.conftest import CliResult, Sandbox, assert_clean_exit, hcp_books_config

pytestmark = pytest.mark.integration

Cli = Callable[..., CliResult]
SandboxFactory = Callable[..., Sandbox]

UNAVAILABLE = 4
CONFIG = 2


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _customers_csv(folder: Path) -> tuple[Path, bytes]:
    path = folder / "books" / "customers.csv"
    data = write_csv(
        path,
        [
            {"First Name": "Ann", "Last Name": "Able", "Email": "ann.able@example.org"},
            {"First Name": "Bo", "Last Name": "Baker", "Email": "bo.baker@example.org"},
        ],
    )
    return path, data


# ------------------------------------------------------------------- a member unavailable


def test_reconcile_report_with_the_sandbox_stopped_says_it_cannot_read_and_exits_4(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=3)
    config = books_config(tmp_path, box.port)
    assert_clean_exit(cli("sync", "--config", config), 0)
    assert_clean_exit(cli("reconcile-report", "--config", config), 0)
    books = {p.name: p.read_bytes() for p in (tmp_path / "books").iterdir()}
    box.stop()

    report = cli("reconcile-report", "--config", config)

    assert_clean_exit(report, UNAVAILABLE)
    assert report.stdout == ""
    [line] = report.stderr.splitlines()
    assert re.fullmatch(
        r"reconcile-report could not read: hcp: GET /\w+: cannot connect to "
        rf"http://127\.0\.0\.1:{box.port} \(connection refused\): nothing is listening there; "
        r"start that server, or check the base_url; nothing was written, run it again later",
        line,
    ), str(report)
    assert "sync failed" not in report.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "books").iterdir()} == books


def test_sync_with_a_wrong_api_key_exits_4_and_writes_nothing(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(api_key="the-key-the-sandbox-expects", seed=3)
    config = hcp_books_config(tmp_path, box.port)
    csv_path, csv_bytes = _customers_csv(tmp_path)

    for args, said in (
        (("sync",), "sync failed:"),
        (("sync", "--dry-run"), "sync --dry-run could not read:"),
    ):
        done = cli(*args, "--config", config, api_key="a-wrong-key-12345")
        assert_clean_exit(done, UNAVAILABLE)
        assert f"{said} hcp: GET /customers: HTTP 401: Unauthorized" in done.stderr, str(done)
        assert "writes already made" not in done.stderr
        assert (
            "the member refused the credentials: check them in the config (api_key" in done.stderr
        )
        assert "a-wrong-key-12345" not in done.output
    assert box.writes() == []
    assert {r["status"] for r in box.requests()} == {401}
    assert csv_path.read_bytes() == csv_bytes


def test_sync_with_the_sandbox_stopped_exits_4_and_writes_nothing(
    tmp_path: Path, cli: Cli, sandbox_factory: SandboxFactory
) -> None:
    box = sandbox_factory(seed=3)
    config = hcp_books_config(tmp_path, box.port)
    csv_path, csv_bytes = _customers_csv(tmp_path)
    box.stop()

    done = cli("sync", "--config", config)

    assert_clean_exit(done, UNAVAILABLE)
    assert "sync failed: hcp: GET /customers: cannot connect to" in done.stderr
    assert "(connection refused)" in done.stderr, str(done)
    assert csv_path.read_bytes() == csv_bytes


# --------------------------------------------------------------------- a damaged workbook


def _damage(data: bytes, part: str) -> bytes:
    """``data`` (a zip) with eight bytes in the middle of ``part``'s deflate stream flipped."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(part)
    damaged = bytearray(data)
    name_length, extra_length = struct.unpack("<HH", damaged[info.header_offset + 26 :][:4])
    start = info.header_offset + 30 + name_length + extra_length + info.compress_size // 2
    for i in range(start, start + 8):
        damaged[i] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize("part", ["xl/worksheets/sheet1.xml", "_rels/.rels"])
def test_a_damaged_workbook_is_a_structure_error_naming_the_file_and_the_fix(
    tmp_path: Path, cli: Cli, idle_sandbox: Sandbox, part: str
) -> None:
    idle_sandbox.clear_requests()
    config = books_config(tmp_path, idle_sandbox.port, path="books.xlsx")
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Customers"
    sheet.append(["Sync ID", "First Name", "Last Name", "Email"])
    for n in range(40):
        sheet.append(["", f"Person{n}", "Lastname" * 5, f"person{n}@example.org"])
    buffer = io.BytesIO()
    book.save(buffer)
    workbook = tmp_path / "books.xlsx"
    data = _damage(buffer.getvalue(), part)
    workbook.write_bytes(data)
    with pytest.raises(zlib.error):  # the part really is damaged
        zipfile.ZipFile(workbook).read(part)

    for args in (("sync",), ("sync", "--dry-run"), ("sync", "--json")):
        done = cli(*args, "--config", config)
        assert_clean_exit(done, CONFIG)
        message = " ".join(done.stderr.split())
        assert f"structure error: books: {workbook} is damaged: its part {part} is damaged" in (
            message
        ), str(done)
        assert "Restore it from a backup" in message
        assert "save it as an Excel workbook (.xlsx)" in message
        assert "nothing was read into a plan and nothing was written" in message
        assert "sync failed" not in done.output
        assert workbook.read_bytes() == data
    assert [r for r in idle_sandbox.requests() if r["method"] not in ("GET", "HEAD")] == []


# ------------------------------------------------------------------------------ sandbox


def test_sandbox_on_a_port_out_of_range_is_a_usage_error(cli: Cli) -> None:
    done = cli("sandbox", "--port", "99999")
    assert_clean_exit(done, CONFIG)
    assert done.stderr == (
        "usage error: --port 99999: use a port from 1 to 65535, or 0 for any free one\n"
    )
    assert done.stdout == ""


def test_sandbox_with_a_key_no_config_could_send_is_a_usage_error(cli: Cli) -> None:
    done = cli("sandbox", "--port", "0", "--api-key", "abc")
    assert_clean_exit(done, CONFIG)
    assert done.stderr == (
        "usage error: --api-key is 3 characters long; a config takes keys of at least 8, so "
        "use a longer one (the default is sandbox-key)\n"
    )


def test_sandbox_on_a_taken_port_says_so_in_one_line_and_exits_4(cli: Cli, taken_port: int) -> None:
    done = cli("sandbox", "--port", str(taken_port), timeout=60)
    assert_clean_exit(done, UNAVAILABLE)
    assert done.stdout == ""
    assert done.stderr == (
        f"sandbox could not run: cannot listen on 127.0.0.1:{taken_port}: Address already in "
        "use; stop what uses that port, or choose another with --port (0: any free one)\n"
    )
