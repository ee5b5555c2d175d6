"""Helpers for the web console's tests: a console served by uvicorn on a loopback port in a
thread of the test process (real HTTP, the same memory as the test), signing in, reading the
CSRF token of a page, and a config of spreadsheet (CSV folder) pipelines whose files stay
put between the tests of a module."""

from __future__ import annotations

import re
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from syncengine.config import load_config
from syncengine.console.app import ConsoleRunner, create_app
from syncengine.console.auth import add_user

PASSWORD = "correct horse battery staple"
API_KEY = "hcp-live-KEY-7f3a9c2e51d84b06"
"""An API key set in the test config: no page may ever show it."""
SESSION_SECRET = "console-session-secret-0123456789abcdef-XYZ"


def console_config(
    folder: Path,
    pipelines: dict[str, dict[str, Any]],
    *,
    console: str = "",
) -> Path:
    """A config in ``folder`` with a pipeline per entry of ``pipelines``: two CSV folder
    members ``<name>-a`` and ``<name>-b`` syncing customers (options: ``conflicts`` rule
    list, ``deletes`` table as TOML text). An unused Housecall Pro connector carries
    ``API_KEY``. ``console``: the body of the ``[console]`` table."""
    parts = [
        '[state]\nurl = "sqlite:///state.db"\n',
        f"[console]\n{console}\n",
        f'[connectors.hcp]\ntype = "housecallpro"\napi_key = "{API_KEY}"\n',
    ]
    for name, options in pipelines.items():
        for side in ("a", "b"):
            parts.append(
                f'[connectors.{name}-{side}]\ntype = "spreadsheet"\npath = "{name}-{side}"\n'
            )
        rules = options.get("conflicts", [f"{name}-a"])
        parts.append(
            textwrap.dedent(
                f"""\
                [[pipelines]]
                name = "{name}"
                members = ["{name}-a", "{name}-b"]
                entities = ["customers"]
                [pipelines.conflicts]
                default = {rules!r}
                """
            ).replace("'", '"')
        )
        if options.get("deletes"):
            parts.append(f"[pipelines.deletes]\n{options['deletes']}\n")
    parts.append(
        '[[pipelines]]\nname = "hcp-books"\nmembers = ["hcp", "spare"]\n'
        'entities = ["customers"]\n[connectors.spare]\ntype = "spreadsheet"\npath = "spare"\n'
    )
    path = folder / "config.toml"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def add_users(config_path: Path, *names: str) -> None:
    """Console users with the password ``PASSWORD``."""
    cfg = load_config(config_path)
    for name in names:
        add_user(cfg, name, PASSWORD)


class ConsoleServer:
    """The console app served by uvicorn on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)
        self.url = ""

    def start(self) -> ConsoleServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(config_path: Path, runner: ConsoleRunner | None = None) -> ConsoleServer:
    """Create the console for ``config_path`` and serve it."""
    return ConsoleServer(create_app(config_path, runner=runner)).start()


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token in a page's forms."""
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def signed_in_client(url: str, user: str, password: str = PASSWORD) -> httpx.Client:
    """An HTTP client with a session of ``user``."""
    client = httpx.Client(base_url=url, timeout=30.0)
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"csrf": token, "username": user, "password": password})
    assert response.status_code == 303, response.text
    return client
