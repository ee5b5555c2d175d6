"""An SMTP server's refusal is told without its words: a server that echoes the AUTH line
in its answer would otherwise put the password (base64 in ``AUTH PLAIN``) into the alert's
error, the log and ``alerts test``'s output, where masking the password itself misses it.

Real parts: a tiny SMTP server on a loopback socket, smtplib through ``EmailChannel``."""

from __future__ import annotations

import base64
import socketserver
import threading
from collections.abc import Iterator

import pytest

from syncengine.alerts.channels import EmailChannel
from syncengine.alerts.decide import Alert
from syncengine.config import EmailSection

PASSWORD = "SMTP-secret-pw-99"


class EchoingRefusal(socketserver.StreamRequestHandler):
    """Greets, offers AUTH PLAIN, and refuses the login quoting the line it was sent; refuses
    every recipient the same way."""

    def handle(self) -> None:
        self.wfile.write(b"220 test ESMTP\r\n")
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.wfile.write(b"250-test\r\n250 AUTH PLAIN\r\n")
            elif verb == "AUTH":
                self.wfile.write(f"535 5.7.8 refused: {line}\r\n".encode())
            elif verb == "MAIL":
                self.wfile.write(b"250 ok\r\n")
            elif verb == "RCPT":
                self.wfile.write(f"550 no such user, you said {line}\r\n".encode())
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoingRefusal)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _channel(port: int, *, login: bool) -> EmailChannel:
    section = EmailSection.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "from": "alerts@example.com",
            "to": ["office@example.com"],
            **({"username": "alerts@example.com", "password": PASSWORD} if login else {}),
        }
    )
    return EmailChannel(section, (PASSWORD,))


ALERT = Alert("paused", "p", "error", "Pipeline p is paused.", {})


def test_a_refused_login_is_told_without_the_servers_echo_of_the_password(
    smtp_port: int,
) -> None:
    attempt = _channel(smtp_port, login=True).send(ALERT)
    assert not attempt.ok and not attempt.retry
    assert attempt.error.startswith("SMTP 535: the server refused the login"), attempt.error
    encoded = base64.b64encode(f"\0alerts@example.com\0{PASSWORD}".encode()).decode()
    assert encoded not in attempt.error and PASSWORD not in attempt.error
    assert "AUTH" not in attempt.error


def test_refused_recipients_are_named_with_their_codes_only(smtp_port: int) -> None:
    attempt = _channel(smtp_port, login=False).send(ALERT)
    assert not attempt.ok and not attempt.retry
    assert attempt.error == "the server refused the recipients office@example.com (550)"
