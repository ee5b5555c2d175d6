"""The web console's pure decisions and files: the sign-in limiter, the Secure cookie
decision, the users file (mode 0600, argon2 hashes, the session key kept), the [console]
config table, the preview's filters, typed conflict values and the advice on skipped
writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from syncengine.config import load_config
from syncengine.console import auth
from syncengine.console.preview import PreviewRow, filter_rows
from syncengine.console.security import SecureCookies, is_public, route_path
from syncengine.console.views import skip_advice
from syncengine.errors import ConfigError, UsageError
from tests.helpers import memory_config, write_config

# ----------------------------------------------------------------------------- the limiter


def test_a_user_is_slowed_after_three_failures_and_the_wait_doubles() -> None:
    limiter = auth.LoginLimiter()
    keys = ["user:anna", "client:10.0.0.1"]
    for t in range(3):
        assert limiter.wait(keys, now=100.0 + t) == 0
        limiter.failed(keys, now=100.0 + t)
    assert limiter.wait(keys, now=102.0) == pytest.approx(2.0)  # the 4th try: wait 2 s
    assert limiter.wait(keys, now=104.5) == 0
    limiter.failed(keys, now=104.5)
    assert limiter.wait(keys, now=104.5) == pytest.approx(4.0)
    for _ in range(20):
        limiter.failed(keys, now=200.0)
    assert limiter.wait(keys, now=200.0) == pytest.approx(limiter.cap)  # capped
    # another user from another address is not slowed; the same user from anywhere is
    assert limiter.wait(["user:bob", "client:10.0.0.2"], now=200.0) == 0
    assert limiter.wait(["user:anna", "client:10.0.0.2"], now=200.0) > 0
    limiter.succeeded(keys)
    assert limiter.wait(keys, now=200.0) == 0


def test_a_client_address_gets_more_failures_than_a_user_name() -> None:
    limiter = auth.LoginLimiter()
    for i in range(limiter.client_free):
        keys = [f"user:u{i}", "client:10.0.0.9"]
        assert limiter.wait(keys, now=float(i)) == 0
        limiter.failed(keys, now=float(i))
    # a tenth name tried from the same address: the address is slowed now
    assert limiter.wait(["user:fresh", "client:10.0.0.9"], now=10.0) > 0


# ----------------------------------------------------------------------------- cookies, paths


def _scope(scheme: str = "http", proto: bytes | None = None) -> dict[str, object]:
    headers = [(b"x-forwarded-proto", proto)] if proto is not None else []
    return {"type": "http", "scheme": scheme, "headers": headers}


def test_the_cookie_is_secure_over_tls_and_behind_a_trusted_proxy_only() -> None:
    untrusting = SecureCookies(app=None, trust_forwarded_proto=False)  # type: ignore[arg-type]
    trusting = SecureCookies(app=None, trust_forwarded_proto=True)  # type: ignore[arg-type]
    assert untrusting.over_tls(_scope("https"))
    assert not untrusting.over_tls(_scope("http", b"https"))  # a header anyone can send
    assert trusting.over_tls(_scope("http", b"https"))
    assert trusting.over_tls(_scope("http", b"HTTPS, http"))
    assert not trusting.over_tls(_scope("http", b"http"))
    assert not trusting.over_tls(_scope("http"))


def test_only_sign_in_and_static_files_are_public() -> None:
    assert is_public("/login") and is_public("/static/console.css")
    for path in ("/", "/loginx", "/login/x", "/static", "/audit", "/conflicts/1/resolve"):
        assert not is_public(path), path
    mounted = {"path": "/console/login", "root_path": "/console"}
    assert route_path(mounted) == "/login"


# ----------------------------------------------------------------------------- users file


def test_add_user_writes_an_argon2_hash_mode_0600_and_keeps_a_session_key(
    tmp_path: Path,
) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    path = auth.add_user(cfg, "anna", "a long enough password")
    assert path == tmp_path / "console-users.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "a long enough password" not in text and "$argon2id$" in text
    users = auth.load_users(path)
    assert auth.check_password(users, "anna", "a long enough password")
    assert not auth.check_password(users, "anna", "a wrong password!")
    assert not auth.check_password(users, "nobody", "a long enough password")
    key = auth.secret_key(cfg)
    assert len(key) >= 32 and auth.secret_key(cfg) == key  # kept: restarts keep sessions
    auth.add_user(cfg, "bob", "another good password")  # the key survives another user
    assert auth.secret_key(cfg) == key and set(auth.load_users(path).users) == {"anna", "bob"}
    assert auth.console_problems(cfg) == []
    path.chmod(0o644)
    (problem,) = auth.console_problems(cfg)
    assert "chmod 600" in (problem.fix or "")


def test_add_user_refuses_short_passwords_and_odd_names(tmp_path: Path) -> None:
    cfg = memory_config(tmp_path, {"a": {}, "b": {}})
    with pytest.raises(UsageError, match="at least 10"):
        auth.add_user(cfg, "anna", "short")
    with pytest.raises(UsageError, match="user name"):
        auth.add_user(cfg, 'anna"]\n[users.x', "a long enough password")
    assert not (tmp_path / "console-users.toml").exists()


CONFIG = """\
[console]
{console}
[connectors.a]
type = "memory"
[connectors.b]
type = "memory"
[[pipelines]]
name = "p"
members = ["a", "b"]
entities = ["customers"]
"""


def test_the_console_table_is_checked(tmp_path: Path) -> None:
    cfg = load_config(
        write_config(tmp_path, CONFIG.format(console='users_file = "/etc/x/users.toml"'))
    )
    assert auth.users_path(cfg) == Path("/etc/x/users.toml")
    key = "k" * 40
    cfg = load_config(write_config(tmp_path, CONFIG.format(console=f'secret_key = "{key}"')))
    assert auth.secret_key(cfg) == key and key in cfg.secrets  # masked wherever it shows
    with pytest.raises(ConfigError) as short:
        load_config(write_config(tmp_path, CONFIG.format(console='secret_key = "short"')))
    assert "at least 32" in str(short.value) and "short" not in str(short.value).split(":")[-1]
    with pytest.raises(ConfigError, match="users_flie"):
        load_config(write_config(tmp_path, CONFIG.format(console='users_flie = "x"')))


# ----------------------------------------------------------------------------- pages' values


def test_preview_filters_by_entity_member_and_operation() -> None:
    rows = [
        PreviewRow("customers", "k1", "Ada", "a", "update", "email", "'x'", "'y'"),
        PreviewRow("customers", "k1", "Ada", "b", "create", "email", "(none)", "'y'"),
        PreviewRow("invoices", "k2", "invoice 7", "a, b", "conflict", "total"),
    ]
    assert filter_rows(rows) == rows
    assert filter_rows(rows, entity="invoices") == rows[2:]
    assert filter_rows(rows, member="b") == rows[1:]  # a conflict names each member
    assert filter_rows(rows, member="a", op="update") == rows[:1]


def test_skipped_writes_come_with_what_to_do() -> None:
    assert "refers to" in skip_advice("waits for the customer it refers to")
    assert "closed" in skip_advice("the books are closed before 2026-01-01 (locked)")
    assert "by hand" in skip_advice("hcp does not take updates of payments")


def test_a_typed_value_is_read_as_its_fields_type(tmp_path: Path) -> None:
    from syncengine import api
    from syncengine.connectors.memory import MemoryConnector
    from syncengine.console.views import parse_typed

    cfg = memory_config(
        tmp_path,
        {"a": {"entities": ["customers"]}, "b": {"entities": ["customers"]}},
        conflicts={"default": ["manual"]},
    )
    a, b = MemoryConnector.get_dataset("a"), MemoryConnector.get_dataset("b")
    a.put("customers", "1", {"first_name": "Ada", "email": "ada@example.com", "tags": ["x"]})
    api.sync(cfg)
    (key,) = b.table("customers")
    a.edit("customers", "1", tags=["vip"])
    b.edit("customers", key, tags=["new"])
    api.sync(cfg)
    (conflict,) = api.list_conflicts(cfg)
    assert parse_typed(cfg, conflict.id, " vip, gold ") == ["vip", "gold"]
    assert parse_typed(cfg, conflict.id, "  ") is None
    with pytest.raises(UsageError, match="no open conflict"):
        parse_typed(cfg, conflict.id + 100, "x")


def test_the_reconcile_page_lists_the_disagreements_first(tmp_path: Path) -> None:
    from syncengine import api
    from syncengine.connectors.memory import MemoryConnector
    from syncengine.console.views import reconcile
    from tests.helpers import hcp_books_config

    config = hcp_books_config(tmp_path)
    hcp, books = MemoryConnector.get_dataset("hcp"), MemoryConnector.get_dataset("books")
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    for number in ("1001", "1002", "1003"):
        hcp.put(
            "invoices",
            f"i{number}",
            {
                "customer": "c1",
                "status": "sent",
                "invoice_number": number,
                "amount": 5_000,
                "balance": 5_000,
            },
        )
    api.sync(config)
    # the books change 1003's balance behind the sync's back: the members disagree on it
    (key,) = [k for k, v in books.table("invoices").items() if v["invoice_number"] == "1003"]
    books.table("invoices")[key]["balance"] = 1_000
    (report,) = reconcile(config)
    assert not report["clean"] and report["bad"] == 1
    assert [i["invoice"] for i in report["invoices"]] == ["1003", "1001", "1002"]
    assert report["invoices"][0]["problems"] and not report["invoices"][1]["problems"]
    assert report["invoices"][1]["cells"] == ["$50.00 / $0.00 / $50.00"] * 2


def test_after_sign_in_only_a_console_path_is_followed() -> None:
    from syncengine.console.app import safe_next

    assert safe_next("/runs?pipeline=p") == "/runs?pipeline=p"
    for elsewhere in ("", "runs", "//evil.example", "/\\evil.example", "https://evil.example",
                      "/a\\b", "/\r\nSet-Cookie: x"):  # fmt: skip
        assert safe_next(elsewhere) == "/", elsewhere


# ----------------------------------------------------------------------------- review fixes


def _cli(*args: str, stdin: str = "") -> tuple[int, str]:
    from typer.testing import CliRunner

    from syncengine.cli import app

    done = CliRunner().invoke(app, list(args), input=stdin)
    assert not isinstance(done.exception, Exception) or isinstance(done.exception, SystemExit), (
        done.exception
    )
    return done.exit_code, done.output


def test_add_user_never_overwrites_the_config_or_another_file(tmp_path: Path) -> None:
    own = CONFIG.format(console='users_file = "c_self.toml"')
    config = tmp_path / "c_self.toml"
    config.write_text(own)
    code, said = _cli("console", "add-user", "zed", "-c", str(config), "--password-stdin",
                      stdin="correcthorse1\n")  # fmt: skip
    assert code == 2 and "config file itself" in said and "users_file" in said, said
    assert config.read_text() == own  # nothing written
    code, said = _cli("validate", "-c", str(config))
    assert code == 2 and "config file itself" in said
    other = tmp_path / "notes.toml"
    other.write_text('title = "keep me"\n')
    path = write_config(tmp_path, CONFIG.format(console=f'users_file = "{other}"'))
    code, said = _cli("console", "add-user", "zed", "-c", str(path), "--password-stdin",
                      stdin="correcthorse1\n")  # fmt: skip
    assert code == 2 and "not a console users file" in said and "title" in said, said
    assert other.read_text() == 'title = "keep me"\n'
    with pytest.raises(ConfigError, match="not a console users file"):
        auth.secret_key(load_config(path))  # the console does not write it either
    assert other.read_text() == 'title = "keep me"\n'


def test_add_user_to_a_folder_that_does_not_exist_is_a_clean_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG.format(console='users_file = "/nonexistent/dir/u.toml"'))
    code, said = _cli("console", "add-user", "zed", "-c", str(path), "--password-stdin",
                      stdin="correcthorse1\n")  # fmt: skip
    assert code == 2 and "/nonexistent/dir" in said and "does not exist" in said, said
    assert "Traceback" not in said
    code, said = _cli("validate", "-c", str(path))
    assert code == 2 and "does not exist" in said


def test_add_user_says_when_a_password_was_replaced(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG.format(console=""))
    args = ("console", "add-user", "zed", "-c", str(path), "--password-stdin")
    code, said = _cli(*args, stdin="correcthorse1\n")
    assert code == 0 and "can sign in" in said
    code, said = _cli(*args, stdin="correcthorse2\n")
    assert code == 0 and "password was replaced" in said, said


def test_the_console_refuses_to_start_on_a_users_file_others_can_read(tmp_path: Path) -> None:
    from syncengine.console.app import create_app

    path = write_config(tmp_path, CONFIG.format(console=""))
    users = auth.add_user(load_config(path), "zed", "correcthorse1")
    users.chmod(0o644)
    with pytest.raises(ConfigError, match="can be read by other users"):
        create_app(path)
    code, said = _cli("console", "-c", str(path), "--http", "127.0.0.1:0")
    assert code == 2 and "can be read by other users" in said, said


def test_audit_prints_control_characters_escaped(tmp_path: Path) -> None:
    from syncengine import api

    path = write_config(tmp_path, CONFIG.format(console=""))
    forged = "root\x1b[31mRED\x1b[0m\nfake line: admin approved all"
    cfg = load_config(path)
    api.record_audit(cfg, forged, "console.sign_in_failed", "[b]console[/b]", None, None)
    code, said = _cli("audit", "-c", str(path))
    assert code == 0, said
    assert "\x1b" not in said and "\nfake line" not in said
    assert "\\x1b[31mRED" in said and "\\nfake line" in said and "[b]console[/b]" in said


def test_a_signed_out_session_is_revoked_in_the_users_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, CONFIG.format(console=""))
    cfg = load_config(path)
    users_file = auth.add_user(cfg, "zed", "correcthorse1")
    auth.revoke_session(cfg, "old-session-id-0123", 50.0, now=10.0)
    auth.revoke_session(cfg, "new-session-id-0123", 500.0, now=100.0)  # the old one expired
    auth.revoke_session(cfg, "bad id\n[users.x]", 500.0, now=100.0)  # not an id: ignored
    users = auth.load_users(users_file)
    assert users.revoked == {"new-session-id-0123": 500.0} and set(users.users) == {"zed"}
    auth.add_user(cfg, "amy", "correcthorse1")  # adding a user keeps the revoked ids
    assert auth.load_users(users_file).revoked == {"new-session-id-0123": 500.0}
    assert auth.console_problems(cfg) == []
