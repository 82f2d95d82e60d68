"""Mail over SMTP (the standard library's client, run in a thread: it blocks). STARTTLS or
implicit TLS with the system's certificate checks, a login when a user is configured; the
message is accepted when `send_message` returns (the server answered 250 to the data)."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from piseduce.config import WebuiConfig


class MailError(Exception):
    """The mail was not accepted; the text says why (never the password)."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str  # starttls | tls | none
    user: str
    sender: str
    timeout: float
    password: str = field(default="", repr=False)
    ca_file: str = ""  # a private CA's bundle; "" = the system's certificates

    @property
    def configured(self) -> bool:
        return bool(self.host)


def settings_of(cfg: WebuiConfig, password: str) -> SmtpSettings:
    return SmtpSettings(
        cfg.smtp_host,
        cfg.smtp_port,
        cfg.smtp_security,
        cfg.smtp_user,
        cfg.smtp_from,
        cfg.smtp_timeout_seconds,
        password,
        str(cfg.smtp_ca_path or ""),
    )


def build(smtp: SmtpSettings, to: str, subject: str, body: str, key: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = smtp.sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    # The same notification keeps one Message-ID, so a mail client folds a resend into one.
    msg["Message-ID"] = make_msgid(idstring=key.replace(":", ".")[:60], domain="piseduce")
    msg.set_content(body)
    return msg


def send(smtp: SmtpSettings, msg: EmailMessage) -> None:
    """Blocking: deliver `msg` to the configured server (call it with asyncio.to_thread)."""
    context = ssl.create_default_context(cafile=smtp.ca_file or None)
    try:
        if smtp.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=smtp.timeout, context=context
            )
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=context)
            if smtp.user:
                client.login(smtp.user, smtp.password)
            refused = client.send_message(msg)
            if refused:
                raise MailError(f"the mail server refused {', '.join(refused)}")
    except smtplib.SMTPAuthenticationError as exc:
        raise MailError(f"the mail server refused the login of {smtp.user!r} ({exc.smtp_code})") from None
    except smtplib.SMTPException as exc:
        raise MailError(f"SMTP error: {type(exc).__name__}: {str(exc)[:200]}") from None
    except (OSError, ssl.SSLError) as exc:
        raise MailError(f"cannot reach the mail server {smtp.host}:{smtp.port}: {exc}") from None
