"""What a person is shown of a failure: our own errors as written, anything else with its
type's name (``syncengine.errors.describe``)."""

from __future__ import annotations

from syncengine.daemon.redaction import describe_error
from syncengine.errors import RetriableError, StateError, SyncEngineError, describe


def test_our_own_error_is_shown_as_written_without_its_class_name() -> None:
    exc = RetriableError("hcp: GET /customers: HTTP 503; gave up after 6 attempts")
    assert describe(exc) == "hcp: GET /customers: HTTP 503; gave up after 6 attempts"


def test_a_bug_or_a_library_error_keeps_its_type_name() -> None:
    assert describe(KeyError("email")) == "KeyError: 'email'"
    assert describe(ValueError()) == "ValueError"


def test_our_own_error_without_a_message_is_named_by_its_type() -> None:
    assert describe(SyncEngineError()) == "SyncEngineError"


def test_the_daemon_shows_the_same_text_with_secrets_masked() -> None:
    exc = StateError("cannot open postgresql://sync:hunter22@db/state")
    assert describe_error(exc, ["hunter22"]) == "cannot open postgresql://sync:***@db/state"
