"""The dry run's field-by-field diff of a reference written again as its record is shown now
(an invoice row naming a customer by an e-mail that changed): the same customer on both
sides says so, instead of ``'Elizabeth Wright' → 'Elizabeth Wright'`` (a cold bookkeeper
trial read that as a write that changes nothing)."""

from __future__ import annotations

import io

from rich.console import Console

from syncengine.plan import EntityPlan, KeyPlan, Update
from syncengine.render import render_entity_plan


def _rendered(changes: dict[str, tuple[str, str]]) -> str:
    ep = EntityPlan("invoices", ("hcp", "books"))
    ep.ref_labels = {"k-liz": "Elizabeth Wright", "k-tom": "Tom Baker"}
    kp = KeyPlan("invoices", "k-1", "1001", new_key=False, base_before={}, base_after={})
    kp.actions.append(Update("invoices", "books", "k-1", "row-7", dict(changes), {}, {}))
    ep.keys.append(kp)
    buffer = io.StringIO()
    render_entity_plan(Console(file=buffer, width=200, color_system=None), ep)
    return buffer.getvalue()


def test_a_reference_to_the_same_record_says_it_is_written_as_shown_now() -> None:
    text = _rendered({"customer": ("k-liz", "k-liz")})
    assert "customer: 'Elizabeth Wright' (the same customer, written as it is shown now)" in text
    assert "→" not in text


def test_a_reference_to_another_record_shows_both() -> None:
    text = _rendered({"customer": ("k-liz", "k-tom")})
    assert "customer: 'Elizabeth Wright' → 'Tom Baker'" in text
