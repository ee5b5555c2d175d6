"""A record read, and a create performed, let go of their native data field by field
(``NativeRecord.released``, ``Create.released``), not through ``dataclasses.replace``: every
other field must come through, including any field added to either class later."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from syncengine.connector import RELEASED, NativeRecord
from syncengine.plan import Create


def _distinct_values(cls: type, released: str) -> dict[str, Any]:
    """A value for every field of ``cls`` that differs from its default (a new field with a
    default would otherwise pass unnoticed)."""
    values: dict[str, Any] = {}
    for n, f in enumerate(fields(cls)):
        if f.name == released:
            values[f.name] = {"held": n}
        elif f.type in ("bool", bool):
            values[f.name] = True
        elif "tuple" in str(f.type):
            values[f.name] = (f"{f.name}-{n}",)
        elif "dict" in str(f.type) or "Record" in str(f.type) or "NativeData" in str(f.type):
            values[f.name] = {f.name: n}
        else:
            values[f.name] = f"{f.name}-{n}"
    return values


@pytest.mark.parametrize(("cls", "released"), [(NativeRecord, "data"), (Create, "native")])
def test_a_released_record_keeps_every_field_but_its_native_data(cls: Any, released: str) -> None:
    whole = cls(**_distinct_values(cls, released))
    spent = whole.released()
    assert getattr(spent, released) is RELEASED
    for f in fields(cls):
        if f.name != released:
            assert getattr(spent, f.name) == getattr(whole, f.name), f.name
    assert spent == replace(whole, **{released: RELEASED})


def test_a_released_native_record_keeps_its_hash() -> None:
    record = NativeRecord(**_distinct_values(NativeRecord, "data"))
    assert record.released().native_hash() == record.digest
