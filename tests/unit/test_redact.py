"""syncengine.redact: a secret is masked where it stands as a whole token, and nowhere else."""

from __future__ import annotations

import json

import pytest

from syncengine.redact import MASK, Redactor, redact_text, redact_value

KEY = "sk_live_5up3r53cr3t"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (KEY, "***"),
        (
            f"GET https://api.example.com/customers/{KEY}",
            "GET https://api.example.com/customers/***",
        ),
        (f"GET /jobs?api_key={KEY}&page=2", "GET /jobs?api_key=***&page=2"),
        (f"GET /jobs?page=2&token={KEY}", "GET /jobs?page=2&token=***"),
        (f"Authorization: Token {KEY}", "Authorization: Token ***"),
        (f"Authorization: Bearer {KEY}\nAccept: */*", "Authorization: Bearer ***\nAccept: */*"),
        (f"invalid token {KEY}.", "invalid token ***."),
        (f"({KEY}), '{KEY}'; <{KEY}>", "(***), '***'; <***>"),
        (f"{KEY}-suffix and prefix-{KEY}", "***-suffix and prefix-***"),
        (f"{KEY}{KEY}", f"{KEY}{KEY}"),  # one longer identifier, not the secret
        (f"x{KEY}", f"x{KEY}"),
        (f"{KEY}_2", f"{KEY}_2"),
        (f"{KEY}9", f"{KEY}9"),
    ],
)
def test_a_secret_is_masked_only_as_a_whole_token(text: str, expected: str) -> None:
    assert redact_text(text, [KEY]) == expected


def test_a_secret_is_masked_as_a_url_carries_it() -> None:
    # a query-string token echoed back by the server in its 404, URL-encoded
    token = "s3cr3t+t0ken/with=chars and space"
    echoed = (
        "HTTP 404: Cannot GET /contacts?_page=1&key=s3cr3t%2Bt0ken%2Fwith%3Dchars%20and%20space"
        " (as a form: key=s3cr3t%2Bt0ken%2Fwith%3Dchars+and+space; in a path: "
        "/c/s3cr3t%2Bt0ken/with%3Dchars%20and%20space/x)"
    )
    assert redact_text(echoed, [token]) == (
        "HTTP 404: Cannot GET /contacts?_page=1&key=*** (as a form: key=***; in a path: /c/***/x)"
    )
    assert Redactor([token])(f"raw {token}.") == "raw ***."


def test_a_secret_in_a_json_string_is_masked_and_the_json_stays_valid() -> None:
    body = json.dumps({"error": {"message": "bad key", "key": KEY, "hint": f"key {KEY}"}})
    masked = redact_text(body, [KEY])
    assert json.loads(masked) == {"error": {"message": "bad key", "key": MASK, "hint": "key ***"}}


def test_a_one_character_secret_never_garbles_other_text() -> None:
    # The case: a one-character key turned "hcp-books" into "hcp-boo***s".
    redact = Redactor(["o"])
    assert redact("pipeline hcp-books: 3 created, 0 failed") == (
        "pipeline hcp-books: 3 created, 0 failed"
    )
    assert redact("o") == "***"
    assert redact("GET /c?api_key=o&page=o2") == "GET /c?api_key=***&page=o2"
    assert redact("Token o") == "Token ***"


def test_a_secret_inside_a_longer_word_is_left_alone() -> None:
    assert redact_text("the books balance; bookkeeper notes", ["book"]) == (
        "the books balance; bookkeeper notes"
    )
    assert redact_text("book, books", ["book"]) == "***, books"


def test_a_secret_beginning_or_ending_with_punctuation_is_masked_next_to_letters() -> None:
    # Its ends are not word characters, so nothing about its neighbours is asked.
    assert redact_text("pass=hunter2!!now", ["2!!"]) == "pass=hunter2!!now"
    assert redact_text("pass=a!b!c", ["!b!"]) == "pass=a***c"
    assert redact_text("x-+secret+-y", ["+secret+"]) == "x-***-y"


def test_the_longest_secret_is_masked_first() -> None:
    redact = Redactor(["abc", "abc-def"])
    assert redact.secrets == ("abc-def", "abc")
    assert redact("id abc-def and abc and abcd") == "id *** and *** and abcd"


def test_blank_secrets_are_never_masked() -> None:
    redact = Redactor(["", "  ", "\t"])
    assert redact.secrets == ()
    assert redact(" a  b ") == " a  b "
    assert redact_text("a b", ["", "b"]) == "a ***"


def test_redact_value_masks_whole_tokens_through_containers_and_exceptions() -> None:
    value = {
        "path": f"/customers/{KEY}",
        "ids": [KEY, f"{KEY}x", (f"Token {KEY}", 3)],
        "n": 7,
        "none": None,
    }
    assert redact_value(value, [KEY]) == {
        "path": "/customers/***",
        "ids": ["***", f"{KEY}x", ("Token ***", 3)],
        "n": 7,
        "none": None,
    }
    assert redact_value(ValueError(f"refused {KEY}"), [KEY]) == "ValueError: refused ***"
