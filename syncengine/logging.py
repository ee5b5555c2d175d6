"""structlog set-up. Processors are pure functions; ``configure()`` is called by entry points only.

Every log line passes through ``REDACTOR`` (``syncengine.redact``, the one redactor), which
replaces each known secret (API keys and tokens interpolated from the environment) with
``***`` wherever it appears, including inside nested values and exception text.
``redact_text`` is re-exported here for the callers that redact a message themselves.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

from syncengine.redact import MASK, Redactor, redact_text

__all__ = ["MASK", "REDACTOR", "Redactor", "configure", "redact_text"]

REDACTOR = Redactor()
"""The secrets of this process (the configuration's, added by the entry points): every log
line passes through ``_redact_event``, which masks them."""


def _redact_event(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The structlog processor masking ``REDACTOR``'s secrets anywhere in an event."""
    if not REDACTOR.secrets:
        return event
    for key, value in list(event.items()):
        event[key] = REDACTOR.value(value)
    return event


class _StdlibBridge(logging.Handler):
    """Sends warnings of libraries that log through ``logging`` (APScheduler) to structlog,
    so that they come out in the same format (one JSON object per line for the daemon)."""

    def emit(self, record: logging.LogRecord) -> None:
        import structlog

        try:
            extra: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                extra["exception"] = logging.Formatter().formatException(record.exc_info)
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **extra)
        except Exception:
            self.handleError(record)


class _CurrentStderr:
    """``sys.stderr`` as it is at each write, not as it was when logging was configured: a
    progress bar replaces it while it is drawn, and prints log lines above the bar."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(
    level: str = "warning",
    *,
    json_output: bool = False,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog for a command-line entry point."""
    # imported here (and in _StdlibBridge): the CLI imports this module for REDACTOR, and
    # `--help` needs no structlog (nor the rich tracebacks and asyncio it loads)
    import structlog

    REDACTOR.add(secrets)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or _CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibBridge(logging.WARNING))
