"""Authentication styles of the REST connector, a registry by name.

The ``[connectors.<name>.auth]`` table picks one with ``style``::

    style = "none"                                   # the default
    style = "bearer", token = "${CRM_TOKEN}"         # Authorization: Bearer TOKEN
    style = "token",  token = "${CRM_TOKEN}"         # Authorization: Token TOKEN
                      scheme = "Token"               #   (any scheme word)
    style = "header", token = "${CRM_KEY}"           # X-API-Key: KEY
                      header = "X-API-Key", prefix = ""
    style = "basic",  username = "me", password = "${CRM_PASSWORD}"
    style = "query",  token = "${CRM_KEY}"           # ?api_key=KEY on every request
                      param = "api_key"

Secrets live in ``token`` and ``password`` only: the configuration loader treats keys with
those names as secrets, so their values are redacted from every log line and message, and the
options keep them as ``SecretStr`` (never shown by ``repr``).

A new style is a subclass of :class:`AuthOptions` with a ``Literal`` ``style`` default, added
with :func:`register_auth`.
"""

from __future__ import annotations

import base64
import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from syncengine.connector import EMPTY_SECRET
from syncengine.registry import Registry

__all__ = [
    "AUTH_STYLES",
    "AuthOptions",
    "BasicAuth",
    "BearerAuth",
    "HeaderAuth",
    "NoAuth",
    "QueryAuth",
    "TokenAuth",
    "register_auth",
]

_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""RFC 9110 token characters: header names, scheme words."""


def _non_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError(EMPTY_SECRET)
    return value


def _token_word(value: str, what: str) -> str:
    if not _TOKEN_CHARS.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what} (letters, digits and -_.!#$%&'*+^`|~)")
    return value


class AuthOptions(BaseModel):
    """Base of every auth style: what it adds to each request, and which values are secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    style: str
    style_name: ClassVar[str] = ""

    def headers(self) -> dict[str, str]:
        """Headers sent with every request."""
        return {}

    def params(self) -> dict[str, str]:
        """Query parameters sent with every request."""
        return {}

    def secrets(self) -> tuple[str, ...]:
        """Values to redact wherever they might show (header values, encoded forms)."""
        return ()

    def setting(self) -> str:
        """How the style is named in messages."""
        return f"auth style {self.style!r}"


class NoAuth(AuthOptions):
    """No credentials (a local server such as json-server)."""

    style_name: ClassVar[str] = "none"
    style: Literal["none"] = "none"


class _WithToken(AuthOptions):
    """A style whose secret is one ``token``."""

    token: SecretStr

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        return _non_empty(value)


class BearerAuth(_WithToken):
    """``Authorization: Bearer TOKEN``."""

    style_name: ClassVar[str] = "bearer"
    style: Literal["bearer"] = "bearer"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.get_secret_value().strip()}"}

    def secrets(self) -> tuple[str, ...]:
        return (self.token.get_secret_value().strip(),)


class TokenAuth(_WithToken):
    """``Authorization: Token TOKEN`` (or another ``scheme`` word)."""

    style_name: ClassVar[str] = "token"
    style: Literal["token"] = "token"
    scheme: str = "Token"

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _token_word(value, "scheme word")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"{self.scheme} {self.token.get_secret_value().strip()}"}

    def secrets(self) -> tuple[str, ...]:
        return (self.token.get_secret_value().strip(),)


class HeaderAuth(_WithToken):
    """A custom header carries the key: ``X-API-Key: KEY`` (``prefix`` goes before it)."""

    style_name: ClassVar[str] = "header"
    style: Literal["header"] = "header"
    header: str = "X-API-Key"
    prefix: str = ""

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        return _token_word(value, "header name")

    def headers(self) -> dict[str, str]:
        token = self.token.get_secret_value().strip()
        return {self.header: f"{self.prefix}{token}"}

    def secrets(self) -> tuple[str, ...]:
        token = self.token.get_secret_value().strip()
        return (token, f"{self.prefix}{token}")


class BasicAuth(AuthOptions):
    """HTTP basic authentication (RFC 7617)."""

    style_name: ClassVar[str] = "basic"
    style: Literal["basic"] = "basic"
    username: str
    password: SecretStr

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        return _non_empty(value)

    @field_validator("username")
    @classmethod
    def _user(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("must not contain ':' (basic authentication separates with it)")
        if not value.strip():
            raise ValueError("is empty")
        return value

    def _encoded(self) -> str:
        pair = f"{self.username}:{self.password.get_secret_value()}"
        return base64.b64encode(pair.encode("utf-8")).decode("ascii")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Basic {self._encoded()}"}

    def secrets(self) -> tuple[str, ...]:
        return (self.password.get_secret_value(), self._encoded())


class QueryAuth(_WithToken):
    """The key in the query string (``?api_key=KEY``); redacted from URLs in messages."""

    style_name: ClassVar[str] = "query"
    style: Literal["query"] = "query"
    param: str = "api_key"

    @field_validator("param")
    @classmethod
    def _param(cls, value: str) -> str:
        return _token_word(value, "query parameter name")

    def params(self) -> dict[str, str]:
        return {self.param: self.token.get_secret_value().strip()}

    def secrets(self) -> tuple[str, ...]:
        return (self.token.get_secret_value().strip(),)


AUTH_STYLES: Registry[type[AuthOptions]] = Registry(
    "auth style", duplicate="an {kind} named {name!r} is already registered"
)


def register_auth(cls: type[AuthOptions]) -> type[AuthOptions]:
    """Add an auth style to the registry (usable as a class decorator). Registering the same
    class again does nothing; another class under a taken name is a ``ValueError``."""
    name = cls.style_name
    if not name:
        raise ValueError(f"{cls.__name__} has no style_name")
    if AUTH_STYLES.get(name) is not cls:
        AUTH_STYLES.add(name, cls)
    return cls


for _style in (NoAuth, BearerAuth, TokenAuth, HeaderAuth, BasicAuth, QueryAuth):
    register_auth(_style)
