"""The channels alerts go through: an incoming webhook (JSON over HTTP, httpx) and e-mail
(the standard library's smtplib). Each ``send`` makes one attempt and says how it went;
retrying is the sender's (``syncengine.alerts.sender``)."""

from __future__ import annotations

import functools
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

import httpx

from syncengine.alerts.decide import Alert
from syncengine.config import AlertsSection, EmailSection
from syncengine.http import shared_tls_context
from syncengine.redact import redact_text

__all__ = ["Attempt", "Channel", "EmailChannel", "WebhookChannel", "channels_of"]


@dataclass(frozen=True)
class Attempt:
    """One attempt at sending: ``ok``, or the error (redacted) and whether trying again may
    help (``retry``: a network error, a 5xx or 429, a temporary SMTP refusal)."""

    ok: bool
    error: str = ""
    retry: bool = False


class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> Attempt: ...


@functools.cache
def _smtp_tls_context() -> ssl.SSLContext:
    """The system's verifying TLS context for mail servers, built once per process: each one
    built loads the CA store again, and not all of that memory comes back
    (``http.shared_tls_context``)."""
    return ssl.create_default_context()


class WebhookChannel:
    """POSTs the alert's JSON to ``url``."""

    name = "webhook"

    def __init__(self, url: str, secrets: tuple[str, ...], timeout: float = 10.0) -> None:
        self._url = url
        self._secrets = secrets
        self._timeout = timeout

    def send(self, alert: Alert) -> Attempt:
        """One POST; 2xx is ok, 408/429/5xx and network errors may be retried."""
        try:
            response = httpx.post(
                self._url,
                json=alert.payload(),
                timeout=self._timeout,
                verify=shared_tls_context(),
            )
        except httpx.HTTPError as exc:
            return Attempt(False, self._say(f"{type(exc).__name__}: {exc}"), retry=True)
        if 200 <= response.status_code < 300:
            return Attempt(True)
        retry = response.status_code in (408, 429) or response.status_code >= 500
        return Attempt(False, f"the webhook answered HTTP {response.status_code}", retry=retry)

    def _say(self, text: str) -> str:
        return redact_text(text.replace(self._url, "<webhook_url>"), self._secrets)


class EmailChannel:
    """Sends the alert as a plain-text e-mail through the configured SMTP server."""

    name = "email"

    def __init__(self, section: EmailSection, secrets: tuple[str, ...]) -> None:
        self._s = section
        self._secrets = secrets

    def message(self, alert: Alert) -> EmailMessage:
        """The e-mail: the alert's subject and text, its event and pipeline below."""
        msg = EmailMessage()
        msg["Subject"] = alert.subject
        msg["From"] = self._s.from_
        msg["To"] = ", ".join(self._s.to)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="syncengine")
        body = [alert.text, "", f"event: {alert.event}", f"pipeline: {alert.pipeline}"]
        body += [f"{k}: {v}" for k, v in alert.details.items()]
        msg.set_content("\n".join(body) + "\n")
        return msg

    def send(self, alert: Alert) -> Attempt:
        """One SMTP session; a refused login or refused recipients are not retried."""
        s = self._s
        try:
            smtp: smtplib.SMTP
            # the name said in EHLO: the host's own (smtplib's default looks it up in the
            # DNS, which takes seconds where the host has no reverse entry)
            me = socket.gethostname() or "localhost"
            if s.ssl:
                smtp = smtplib.SMTP_SSL(
                    s.host,
                    s.port,
                    local_hostname=me,
                    timeout=s.timeout,
                    context=_smtp_tls_context(),
                )
            else:
                smtp = smtplib.SMTP(s.host, s.port, local_hostname=me, timeout=s.timeout)
            with smtp:
                if s.starttls:
                    smtp.starttls(context=_smtp_tls_context())
                if s.username is not None and s.password is not None:
                    smtp.login(s.username, s.password.get_secret_value())
                smtp.send_message(self.message(alert))
        # a server's own words are never repeated: one that echoes the AUTH line would show
        # the password in base64, which no masking of the password itself catches
        except smtplib.SMTPAuthenticationError as exc:
            why = f"SMTP {exc.smtp_code}: the server refused the login (check username, password)"
            return Attempt(False, self._say(why), retry=False)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(f"{to} ({code})" for to, (code, _text) in exc.recipients.items())
            return Attempt(False, self._say(f"the server refused the recipients {refused}"))
        except smtplib.SMTPResponseException as exc:
            return Attempt(False, self._say(f"SMTP {exc.smtp_code}"), retry=exc.smtp_code < 500)
        except (OSError, smtplib.SMTPException) as exc:
            return Attempt(False, self._say(f"{type(exc).__name__}: {exc}"), retry=True)
        return Attempt(True)

    def _say(self, text: str) -> str:
        return redact_text(text, self._secrets)


def channels_of(section: AlertsSection, secrets: tuple[str, ...]) -> list[Channel]:
    """The channels ``[alerts]`` configures, webhook first."""
    out: list[Channel] = []
    if section.webhook_url is not None:
        out.append(WebhookChannel(section.webhook_url.get_secret_value(), secrets))
    if section.email is not None:
        out.append(EmailChannel(section.email, secrets))
    return out
