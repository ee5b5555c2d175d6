"""Things looked up by a name from the configuration: transforms, REST auth and pagination
styles.

A ``Registry`` is a dict from name to item that also knows what it holds (``kind``), refuses
a second item under a taken name, and helps a message about an unknown name: ``known()``
lists the names there are, ``closest()`` gives the likeliest one meant. The messages
themselves are worded where the name is looked up, since each says where the name came from::

    STYLES: Registry[type[Style]] = Registry("style")
    STYLES.add("page", PageStyle)
    close = STYLES.closest("pgae")      # 'page'
    STYLES.known()                      # 'page'
"""

from __future__ import annotations

import difflib
from typing import TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict[str, T]):
    """Items by name; see the module docstring.

    ``duplicate`` is the message of the ``ValueError`` for a name already taken; it may use
    ``{kind}`` and ``{name}`` (e.g. ``"a {kind} named {name!r} is already registered"``).
    """

    def __init__(
        self, kind: str, *, duplicate: str = "{kind} {name!r} is already registered"
    ) -> None:
        super().__init__()
        self.kind = kind
        self.duplicate = duplicate

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        """Register ``item`` as ``name`` and return it. A taken name is a ``ValueError``
        unless ``replace``."""
        if name in self and not replace:
            raise ValueError(self.duplicate.format(kind=self.kind, name=name))
        self[name] = item
        return item

    def names(self) -> list[str]:
        """Every name, sorted."""
        return sorted(self)

    def known(self) -> str:
        """Every name, sorted, as a comma-separated list for a message."""
        return ", ".join(self.names())

    def closest(self, name: object) -> str | None:
        """The registered name most like ``name`` (a likely typo of it), or None."""
        close = difflib.get_close_matches(str(name), list(self), n=1)
        return close[0] if close else None
