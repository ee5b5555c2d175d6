"""Numbers in configuration: a TOML ``true`` or ``false`` is never taken for 1 or 0.

Pydantic's lax mode turns a bool into an int or a float, so ``max_retries = true`` would
silently mean one retry. ``Int`` and ``Float`` refuse a bool and otherwise read numbers as
before (including numbers given as text, such as ``"${RETRIES:-5}"``). A refusal has the
error type ``BOOL_NOT_NUMBER``; ``syncengine.config`` words it as a configuration problem.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

__all__ = ["BOOL_NOT_NUMBER", "Float", "Int"]

BOOL_NOT_NUMBER = "bool_not_number"


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise PydanticCustomError(
            BOOL_NOT_NUMBER,
            "is {value}, which is not a number",
            {"value": "true" if value else "false"},
        )
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
"""An ``int`` option that refuses ``true``/``false``."""
Float = Annotated[float, BeforeValidator(_not_bool)]
"""A ``float`` option that refuses ``true``/``false``."""
