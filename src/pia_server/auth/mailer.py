"""Password-reset mail over SMTP (``[auth.smtp]``), sent from a worker thread."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

import anyio.to_thread

from pia_server.core.config import SmtpSettings


class Mailer:
    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    def _send(self, message: EmailMessage) -> None:
        s = self.settings
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if s.port == 465:
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=10, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=10)
        with smtp:
            if s.port != 465 and s.starttls:
                smtp.starttls(context=context)
            if s.username:
                smtp.login(s.username, s.password)
            smtp.send_message(message)

    async def send_reset_link(self, to: str, link: str, valid_minutes: int) -> None:
        message = EmailMessage()
        message["From"] = self.settings.from_address or self.settings.username
        message["To"] = to
        message["Subject"] = "Reset your Pia password"
        message.set_content(
            "Someone (hopefully you) asked to reset the password of your Pia account.\n\n"
            f"Open this link within {valid_minutes} minutes to choose a new password:\n\n"
            f"{link}\n\n"
            "If you did not ask for this, ignore this mail; your password stays as it is.\n"
        )
        await anyio.to_thread.run_sync(self._send, message)


def build_mailer(settings: SmtpSettings) -> Mailer | None:
    return Mailer(settings) if settings.host else None
