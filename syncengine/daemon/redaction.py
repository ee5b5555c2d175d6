"""What of a failure the daemon may log: the error and its traceback, every secret masked.

Both go through the one redactor, ``syncengine.logging.redact_text``."""

from __future__ import annotations

import traceback
from collections.abc import Iterable

from syncengine.errors import describe
from syncengine.logging import REDACTOR, redact_text

__all__ = ["describe_error", "redacted_traceback"]


def describe_error(exc: BaseException, secrets: Iterable[str]) -> str:
    """A failure as a person is shown it (``syncengine.errors.describe``), with ``secrets``
    (the config's) and every secret the logger knows masked: what a run outcome, the run
    history and the log may show."""
    return redact_text(describe(exc), (*secrets, *REDACTOR.secrets))


def redacted_traceback() -> str:
    """The traceback of the exception being handled, secrets masked (logged for bugs only)."""
    return redact_text(traceback.format_exc(), REDACTOR.secrets)
