"""``[alerts]`` in the config: checked with every problem named by its key, its secrets
(the webhook URL, the SMTP password) collected for masking and never shown in an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.config import Config, load_config
from syncengine.errors import ConfigError

BASE = """\
[connectors.a]
type = "spreadsheet"
path = "a"

[connectors.b]
type = "spreadsheet"
path = "b"

[[pipelines]]
name = "p"
members = ["a", "b"]

"""
HOOK = "https://hooks.example.test/services/T01/B02/XyZsecretTokenValue"


def load(tmp_path: Path, alerts: str, **env: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(BASE + alerts, encoding="utf-8")
    return load_config(path, env=env)


def problems(tmp_path: Path, alerts: str, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, alerts, **env)
    return "\n".join(str(p) for p in caught.value.problems)


def test_a_valid_table_is_loaded_with_its_secrets(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[alerts]\nwebhook_url = "${HOOK}"\nremind_hours = 6\n'
        'email = { host = "smtp.example.test", username = "me", password = "${PW}", '
        'from = "s@example.test", to = ["o@example.test"] }\n',
        HOOK=HOOK,
        PW="smtp-password-1",
    )
    alerts = config.alerts
    assert alerts is not None and alerts.remind_hours == 6 and not alerts.reconcile_after_sync
    assert alerts.email is not None and alerts.email.port == 587 and alerts.email.starttls
    assert HOOK in config.secrets and "smtp-password-1" in config.secrets
    assert HOOK not in repr(config) and "smtp-password-1" not in repr(config)


def test_no_table_means_no_alerts(tmp_path: Path) -> None:
    assert load(tmp_path, "").alerts is None


def test_every_mistake_is_named_by_its_key_and_no_secret_is_shown(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        '[alerts]\nwebhook_url = "hooks.example.test/XyZsecretTokenValue"\nremind_hours = 0\n'
        'email = { host = "smtp.example.test", port = 70000, from = "nobody", '
        'to = ["ok@example.test", "bad"], password = "smtp-password-2" }\n',
    )
    assert "alerts.webhook_url: is not an http:// or https:// URL" in text
    assert "alerts.remind_hours" in text
    assert "alerts.email.port" in text
    assert "alerts.email.from: 'nobody' is not an e-mail address" in text
    assert "alerts.email.to: 'bad' is not an e-mail address" in text
    assert "XyZsecretTokenValue" not in text and "smtp-password-2" not in text


def test_a_table_without_a_channel_or_with_half_a_login_is_refused(tmp_path: Path) -> None:
    assert "no channel: alerts would go nowhere" in problems(
        tmp_path, "[alerts]\nremind_hours = 1\n"
    )
    half = problems(
        tmp_path,
        '[alerts]\nemail = { host = "h", username = "me", from = "s@x.test", to = ["o@x.test"] }\n',
    )
    assert "give both username and password, or neither" in half
    assert "unknown key 'webhook'" in problems(tmp_path, '[alerts]\nwebhook = "x"\n')


def test_a_short_from_is_named_as_not_an_address(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[alerts.email]\nhost = "smtp.example.test"\nfrom = "x"\nto = ["o@example.test"]\n',
    )
    assert "'x' is not an e-mail address" in found and "at least" not in found, found
