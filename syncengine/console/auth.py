"""Console users, their password hashes (argon2, ``argon2-cffi``) and the sign-in limiter.

Users live in the users file (``[console] users_file``, default ``console-users.toml``
beside the config, written with mode 0600)::

    secret_key = "..."            # only when [console] secret_key is not set
    [users.anna]
    hash = "$argon2id$v=19$..."

Nothing but hashes is ever written; a password is never logged or shown.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from syncengine.config import Config
from syncengine.errors import ConfigError, Problem, UsageError

__all__ = [
    "LoginLimiter",
    "UsersFile",
    "add_user",
    "check_password",
    "check_users_file",
    "hash_password",
    "load_users",
    "revoke_session",
    "secret_key",
    "unknown_user_hash",
    "users_file_problem",
    "users_path",
    "valid_name",
]

_HASHER = PasswordHasher()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_SID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MIN_PASSWORD = 10
"""Characters a console password must have at least."""


@cache
def unknown_user_hash() -> str:
    """Checked against when the user is unknown, so that a wrong name takes as long as a wrong
    password (the answer never tells which one was wrong). Made once, when the console starts
    (``create_app``), not on import: ``validate`` imports this module and needs no hash."""
    return _HASHER.hash(secrets.token_urlsafe(16))


@dataclass
class UsersFile:
    """The users file as read: user name -> argon2 hash, and the generated session key."""

    path: Path
    users: dict[str, str] = field(default_factory=dict)
    secret_key: str = ""
    revoked: dict[str, float] = field(default_factory=dict)
    """Signed-out sessions' ids -> when their cookie would have expired (Unix time)."""


def users_path(config: Config) -> Path:
    """The users file of ``config``: ``[console] users_file``, relative to the config's
    folder."""
    path = Path(config.console.users_file).expanduser()
    return path if path.is_absolute() else config.base_dir / path


_USERS_KEYS = frozenset({"secret_key", "users", "revoked"})
"""The only top-level keys a users file holds."""


def users_file_problem(config: Config) -> Problem | None:
    """Why the users file of ``config`` must not be written (or read as one), or None: it
    is the config file itself, its folder does not exist, or it is an existing file that
    holds something else than a users file's keys (another file would be overwritten)."""
    path = users_path(config)
    fix = (
        "set [console] users_file to a file of its own (default console-users.toml beside "
        "the config)"
    )
    try:
        same = path.resolve() == Path(config.path).resolve()
    except OSError:
        same = False
    if same:
        return Problem(
            f"[console] users_file = {str(path)!r}",
            "is the config file itself: adding a user would overwrite the config",
            fix,
        )
    if not path.parent.is_dir():
        return Problem(
            f"[console] users_file = {str(path)!r}",
            f"its folder {path.parent} does not exist",
            f"create the folder, or {fix}",
        )
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None  # load_users names what is wrong with it
        other = sorted(set(data) - _USERS_KEYS)
        if other:
            return Problem(
                f"[console] users_file = {str(path)!r}",
                f"is not a console users file (it holds {', '.join(other)}): adding a user "
                "would overwrite it",
                fix,
            )
    elif path.exists():
        return Problem(f"[console] users_file = {str(path)!r}", "is not a file", fix)
    return None


def check_users_file(config: Config) -> None:
    """Raise the ConfigError of ``users_file_problem`` when there is one."""
    problem = users_file_problem(config)
    if problem is not None:
        raise ConfigError([problem])


def load_users(path: Path) -> UsersFile:
    """Read the users file (a missing file has no users); a broken one is a ConfigError
    naming the file and what to fix."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UsersFile(path)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            [
                Problem(
                    str(path),
                    f"cannot read the console users file: {exc}",
                    "fix it, or delete it and add the users again with "
                    "`syncengine console add-user`",
                )
            ]
        ) from None
    users: dict[str, str] = {}
    table = data.get("users", {})
    if isinstance(table, dict):
        for name, entry in table.items():
            if isinstance(entry, dict) and isinstance(entry.get("hash"), str):
                users[str(name)] = entry["hash"]
    key = data.get("secret_key")
    revoked: dict[str, float] = {}
    ended = data.get("revoked", {})
    if isinstance(ended, dict):
        for sid, until in ended.items():
            if isinstance(until, int | float) and not isinstance(until, bool):
                revoked[str(sid)] = float(until)
    return UsersFile(path, users, key if isinstance(key, str) else "", revoked)


def save_users(users: UsersFile) -> None:
    """Write the users file with mode 0600 (through a temporary file, so that a reader never
    sees half of it)."""
    lines = []
    if users.secret_key:
        lines.append(f'secret_key = "{users.secret_key}"')
    for name, digest in sorted(users.users.items()):
        lines += ["", f'[users."{name}"]', f'hash = "{digest}"']
    if users.revoked:
        lines += ["", "[revoked]  # signed-out sessions: id = when the cookie expires"]
        lines += [f'"{sid}" = {until:.0f}' for sid, until in sorted(users.revoked.items())]
    tmp = users.path.with_name(users.path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# syncengine console users: written by `syncengine console add-user`\n")
        out.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, users.path)


def valid_name(name: str) -> bool:
    """Whether ``name`` is one ``add_user`` takes (letters, digits and . _ @ -)."""
    return bool(_NAME.fullmatch(name))


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (a UsageError when it is shorter than
    ``MIN_PASSWORD``)."""
    if len(password) < MIN_PASSWORD:
        raise UsageError(
            f"the password has {len(password)} characters; use at least {MIN_PASSWORD}"
        )
    return _HASHER.hash(password)


def add_user(config: Config, name: str, password: str) -> Path:
    """Add ``name`` (or change its password) in the users file; the file's path."""
    if not valid_name(name):
        raise UsageError(
            f"user name {name!r}: use letters, digits and . _ @ - (up to 64 characters)"
        )
    digest = hash_password(password)
    check_users_file(config)
    path = users_path(config)
    users = load_users(path)
    users.users[name] = digest
    if not config.console.secret_key and not users.secret_key:
        users.secret_key = secrets.token_urlsafe(48)
    save_users(users)
    return path


def secret_key(config: Config) -> str:
    """The key signing session cookies: ``[console] secret_key``, else the one kept in the
    users file (generated and written there when it has none, so that a restart keeps the
    sessions)."""
    configured = config.console.secret_key
    if configured and not configured.startswith("${"):
        return configured
    check_users_file(config)
    users = load_users(users_path(config))
    if not users.secret_key:
        users.secret_key = secrets.token_urlsafe(48)
        save_users(users)
    return users.secret_key


def revoke_session(config: Config, sid: str, until: float, now: float) -> None:
    """Record that the session ``sid`` was signed out (kept in the users file until
    ``until``, when its cookie expires anyway; ids already expired at ``now`` are
    dropped). Every process serving the console reads it, and a restart keeps it."""
    if not _SID.fullmatch(sid):
        return
    check_users_file(config)
    users = load_users(users_path(config))
    users.revoked = {s: u for s, u in users.revoked.items() if u > now}
    users.revoked[sid] = until
    save_users(users)


def check_password(users: UsersFile, name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s. An unknown user costs one hash check too."""
    digest = users.users.get(name)
    try:
        _HASHER.verify(digest or unknown_user_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return digest is not None


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


@dataclass
class LoginLimiter:
    """Slows sign-in after failures, per user name and per client address.

    The first ``free`` failures of a user name (``client_free`` of a client address: an
    office behind one address has several people) cost nothing; after them each new try
    must wait ``base * 2 ** (failures - free)`` seconds (at most ``cap``) after the last
    failure, and a try made sooner is refused without checking the password. A success
    clears the user's and the client's failures. Keys are ``user:NAME`` or
    ``client:ADDRESS``. Times are given by the caller (``time.monotonic()``), so the
    decisions are pure."""

    free: int = 3
    client_free: int = 10
    base: float = 2.0
    cap: float = 900.0
    _failures: dict[str, _Failures] = field(default_factory=dict)

    def wait(self, keys: list[str], now: float) -> float:
        """Seconds the caller must still wait before a try with ``keys`` (0: try now)."""
        longest = 0.0
        for key in keys:
            f = self._failures.get(key)
            free = self.free if key.startswith("user:") else self.client_free
            if f is None or f.count < free:
                continue
            delay = min(self.cap, self.base * 2 ** (f.count - free))
            longest = max(longest, f.last + delay - now)
        return max(0.0, longest)

    def failed(self, keys: list[str], now: float) -> None:
        """Count a failed try for every key."""
        for key in keys:
            f = self._failures.setdefault(key, _Failures())
            f.count += 1
            f.last = now
        if len(self._failures) > 10_000:  # forget the oldest: memory stays bounded
            oldest = sorted(self._failures, key=lambda k: self._failures[k].last)
            for key in oldest[:5_000]:
                del self._failures[key]

    def succeeded(self, keys: list[str]) -> None:
        """Clear the failures of every key."""
        for key in keys:
            self._failures.pop(key, None)


def console_problems(config: Config) -> list[Problem]:
    """What ``validate`` reports about ``[console]``: a users file that cannot be read, has
    entries that are not argon2 hashes, or can be read by other users of the machine."""
    path = users_path(config)
    wrong = users_file_problem(config)
    if wrong is not None:
        return [wrong]
    if not path.exists():
        return []
    try:
        users = load_users(path)
    except ConfigError as exc:
        return list(exc.problems)
    problems = []
    bad = [name for name, digest in users.users.items() if not digest.startswith("$argon2")]
    if bad:
        problems.append(
            Problem(
                f"{path}: users {', '.join(bad)}",
                "not an argon2 password hash",
                "set the password again with `syncengine console add-user NAME`",
            )
        )
    if path.stat().st_mode & 0o077:
        problems.append(
            Problem(
                str(path),
                "can be read by other users of this machine (it holds password hashes and "
                "may hold the session key)",
                f"chmod 600 {path}",
            )
        )
    return problems
