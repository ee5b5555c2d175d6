"""Log lines go to ``sys.stderr`` as it is when they are written."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from syncengine.logging import configure


def test_a_log_line_goes_to_the_stderr_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    configure("warning")
    # a progress bar swaps sys.stderr while it is drawn, to print log lines above itself
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    structlog.get_logger("syncengine.test").warning("retrying", attempt=2)
    assert "retrying" in swapped.getvalue() and "attempt=2" in swapped.getvalue()


def test_a_stream_given_is_kept() -> None:
    stream = io.StringIO()
    configure("info", stream=stream, secrets=["s3cr3t-token-value"])
    structlog.get_logger("syncengine.test").info("hello", token="s3cr3t-token-value")
    assert "hello" in stream.getvalue()
    assert "s3cr3t-token-value" not in stream.getvalue()
