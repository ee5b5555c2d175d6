"""Formula-injection neutralisation for text cells ("CSV injection").

A spreadsheet program treats a cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or
carriage return in front of one) as a formula. Text that came from another system must never
run as one, so :func:`neutralise` prefixes such text with a single quote, which spreadsheet
programs show as text. Plain numbers and phone numbers (``-12.50``, ``+1 (555) 123-4567``:
a sign followed only by digits, spaces, dots, parentheses and dashes) cannot do harm and are
written as they are.

:func:`restore` removes that quote again when reading, and the pair is a fixed point:
``restore(neutralise(v)) == v`` for every string ``v``. That includes text that itself starts
with quotes before a trigger (``'=x``): it gets one more quote on the way out, which reading
takes off again.
"""

from __future__ import annotations

import re

TRIGGERS = frozenset("=+-@\t\r")
_HARMLESS = re.compile(r"[+-][0-9 .()\-]*")


def neutralise(value: str) -> str:
    """The cell text that shows ``value`` as text and never runs it as a formula."""
    body = value.lstrip("'")
    if not body or body[0] not in TRIGGERS:
        return value
    if len(body) == len(value) and _HARMLESS.fullmatch(value):
        return value
    return "'" + value


def restore(cell: str) -> str:
    """The value a neutralised cell stands for (the inverse of :func:`neutralise`)."""
    if cell.startswith("'"):
        body = cell.lstrip("'")
        if body and body[0] in TRIGGERS:
            return cell[1:]
    return cell
