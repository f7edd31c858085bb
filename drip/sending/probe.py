"""`drip check --smtp`: what the SMTP server offers, and whether drip's login works.

It connects as a send would (same host, port and TLS mode), says hello, reports
STARTTLS and the AUTH mechanisms, and tries the login, so a wrong password or a
missing STARTTLS shows before the first lesson is deferred. No mail is sent.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field

import aiosmtplib

from drip.settings import Settings


@dataclass
class Probe:
    """What was found (each a line to show) and what is wrong (each a problem)."""

    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def probe(settings: Settings) -> Probe:
    result = Probe()
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    smtp = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        use_tls=settings.smtp_security == "tls",
        start_tls=False,
        timeout=settings.smtp_timeout,
        local_hostname="localhost",
    )
    try:
        await smtp.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        result.problems.append(f"DRIP_SMTP_HOST: cannot connect to {where}: {exc}")
        return result
    try:
        await _converse(settings, smtp, where, result)
    except (aiosmtplib.SMTPException, OSError) as exc:
        result.problems.append(f"SMTP at {where} broke off: {exc}")
    finally:
        with suppress(aiosmtplib.SMTPException, OSError):
            await smtp.quit()
    return result


async def _converse(settings: Settings, smtp: aiosmtplib.SMTP, where: str, result: Probe) -> None:
    await smtp.ehlo()
    tls = "implicit TLS" if settings.smtp_security == "tls" else "no TLS yet"
    result.found.append(f"SMTP at {where} answers ({tls})")
    offers_starttls = smtp.supports_extension("starttls")
    result.found.append(f"STARTTLS {'offered' if offers_starttls else 'not offered'}")
    if settings.smtp_security == "starttls":
        if not offers_starttls:
            result.problems.append(
                "DRIP_SMTP_SECURITY=starttls, but the server does not offer STARTTLS"
            )
            return
        await smtp.starttls()
        await smtp.ehlo()
        result.found.append("STARTTLS done")
    methods = [m.upper() for m in smtp.server_auth_methods]
    result.found.append(f"AUTH {' '.join(methods)} offered" if methods else "no AUTH offered")
    user = settings.smtp_username
    if user is None:
        return
    if not methods:
        result.problems.append(
            "DRIP_SMTP_USERNAME is set, but the server offers no AUTH"
            + ("" if settings.smtp_security != "none" else " (it may want TLS first)")
        )
        return
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    try:
        # One mechanism, the one a send would use first: after a refusal some servers
        # answer a second mechanism's exchange with silence.
        if "PLAIN" in methods:
            await smtp.auth_plain(user, password)
        elif "LOGIN" in methods:
            await smtp.auth_login(user, password)
        else:
            await smtp.login(user, password)
    except aiosmtplib.SMTPAuthenticationError as exc:
        result.problems.append(
            f"DRIP_SMTP_USERNAME/DRIP_SMTP_PASSWORD: the login as {user} was refused "
            f"({exc.code} {exc.message})"
        )
        return
    result.found.append(f"login as {user} accepted")
