"""The Housecall Pro sandbox as a real process: ``syncengine sandbox --port 0 ...``.

``start_sandbox()`` runs the console script installed next to the running interpreter (or
``python -m syncengine.cli`` where there is none) in its own process group, waits for the
line ``sandbox listening on http://127.0.0.1:PORT`` and for that port to accept connections,
and returns the started :class:`~testbed.processes.ServerProcess` (``url``, ``port``,
``stop()``, or use it as a context manager). ``HCP_API_KEY`` is taken out of its environment,
so that only ``api_key`` is accepted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from testbed.processes import ServerProcess

READY = r"sandbox listening on http://127\.0\.0\.1:(?P<port>\d+)"
"""The line the sandbox prints once it accepts connections."""
START_TIMEOUT = 60.0
"""Seconds a sandbox may take to start (generous: CI machines run other tests beside it)."""


def syncengine_command() -> list[str]:
    """How to run the ``syncengine`` command line with the running interpreter."""
    script = Path(sys.executable).with_name("syncengine")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "syncengine.cli"]


def start_sandbox(
    *,
    api_key: str,
    seed: int = 0,
    latency_ms: int = 0,
    flags: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """``syncengine sandbox --port 0 --api-key API_KEY --seed SEED [--latency-ms N] FLAGS...``,
    started (in ``workdir`` when given) and ready."""
    command = [
        *syncengine_command(),
        "sandbox",
        "--port",
        "0",
        "--api-key",
        api_key,
        "--seed",
        str(seed),
    ]
    if latency_ms:
        command += ["--latency-ms", str(latency_ms)]
    command += list(flags)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "HCP_API_KEY"}
    server = ServerProcess(
        command, name="hcp-sandbox", ready=READY, timeout=timeout, env=env, cwd=workdir
    )
    return server.start()
