"""The one redactor: known secret values replaced by ``***`` wherever they stand whole.

Everything that may show a secret goes through here: log lines (``syncengine.logging``),
the messages and log fields of the HTTP client (``syncengine.http``), the error text of the
state store, and the messages and tracebacks the command line and the daemon print.

- ``redact_text(text, secrets)`` replaces each secret in a text where it stands as a whole
  token: not inside a longer word or identifier. A secret that begins (ends) with a letter,
  digit or ``_`` is masked only where the character before (after) it is none of these, or
  at the text's start (end). So it is caught in a URL path or query (``/c/KEY``,
  ``?api_key=KEY&``), a header (``Token KEY``), a JSON string (``"KEY"``) or a sentence
  (``bad KEY.``), and other text is never garbled: with a one-character secret ``o``,
  ``hcp-books`` stays ``hcp-books`` while ``o`` alone becomes ``***``;
- ``redact_value(value, secrets)`` does the same for a log field, through containers and
  exceptions;
- ``Redactor`` keeps a growing set of secrets (longest first, so that a secret containing
  another one is not half-redacted) and applies both.

Hiding a part of a structure whose secret is not known as a value (the password of a
database URL, ``syncengine.state.mask_url``; a configuration value under a secret-looking
key, ``syncengine.config``) is done where that structure is understood, with the same
``MASK``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "Redactor", "redact_text", "redact_value"]

MASK = "***"


@lru_cache(maxsize=256)
def _whole(secret: str) -> re.Pattern[str]:
    """The pattern of ``secret`` standing as a whole token: a word character (letter, digit,
    ``_``) at either end of it must not touch another word character."""
    before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return re.compile(before + re.escape(secret) + after)


@lru_cache(maxsize=256)
def _forms(secret: str) -> tuple[str, ...]:
    """``secret`` as it may stand in a text: as it is, and as a URL carries it in a query
    string or a path (``s3cr3t+t0ken/x=`` is sent as ``s3cr3t%2Bt0ken%2Fx%3D``), which a
    server echoing the request URL in its error puts back in front of us."""
    forms = [secret]
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        if encoded not in forms:
            forms.append(encoded)
    return tuple(forms)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty value of ``secrets`` replaced by ``MASK`` where it
    stands as a whole token (see the module's docstring), URL-encoded too, in the order
    given (pass the longest first when one secret may contain another)."""
    for secret in secrets:
        if not secret:
            continue
        for form in _forms(secret):
            if form in text:
                text = _whole(form).sub(MASK, text)
    return text


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """A log field with ``secrets`` redacted: strings are redacted, mappings, lists and
    tuples recursively, an exception becomes its redacted ``Type: message``; anything else
    (numbers, None, ...) is returned as it is."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {k: redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v, secrets) for v in value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}", secrets)
    return value


class Redactor:
    """A growing set of secret values; calling it redacts a text, ``value`` a log field.

    Empty and blank values are never secrets (redacting them would mangle every text);
    ``secrets`` is kept longest first."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Add values to the set (duplicates and blank values are ignored)."""
        found = set(self.secrets)
        found.update(s for s in secrets if s and s.strip())
        self.secrets = tuple(sorted(found, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        return redact_text(text, self.secrets)

    def value(self, value: Any) -> Any:
        """A log field redacted (see ``redact_value``)."""
        return redact_value(value, self.secrets)
