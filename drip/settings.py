"""Settings from the environment and `.env`, validated once at start.

Every command calls `load_settings()` first, so a bad value stops it with one
plain line that names the variable instead of a traceback deep in a send.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from email.headerregistry import Address
from email.utils import parseaddr
from functools import cached_property
from ipaddress import ip_address
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from drip.errors import DripError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated IPs or CIDRs; ValueError names a bad entry."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an IP address or a CIDR such as 10.0.0.0/8"
            ) from None
    return tuple(networks)


_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")
MIN_SECRET = 16


def read_key_file(path: Path) -> str | None:
    """The key in `path` (one line), None if there is no such file; SettingsError if unreadable."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"DRIP_SECRET_KEY_FILE: cannot read {path} ({exc})") from None


#: DRIP_WORKER_PROCESSES when unset: a number, or "auto" (`Settings.worker_process_count`).
WORKER_PROCESSES_DEFAULT: int | Literal["auto"] = "auto"
#: Messages a second one delivery process carries with room to spare (bench/send.py
#: measures 300 to 500 on two shared cores): `auto` adds processes only past it.
PROCESS_RATE = 100.0


def parse_processes(value: object) -> int | Literal["auto"]:
    """DRIP_WORKER_PROCESSES or `drip worker --processes`: a whole number from 1, or `auto`."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        number = int(text)
    except ValueError:
        raise ValueError("must be a whole number of processes, or auto") from None
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class SettingsError(DripError):
    """A setting is missing or wrong; the message names it in plain words."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DRIP_", env_file=".env", extra="ignore", validate_default=True
    )

    # The variables the README documents.
    database_url: str = "sqlite:///subscribers.db"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    sender: str = "Trigger Point Course <course@localhost>"
    base_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr | None = None
    #: Where `drip dev` keeps the key it makes, and where every command looks when
    #: DRIP_SECRET_KEY is not set, so all of them sign and check links with one key.
    secret_key_file: Path = Path(".drip/secret-key")
    #: Keys retired by a rotation, comma-separated: links signed with them still work.
    old_secret_keys: SecretStr | None = None
    admin_user: str | None = None
    admin_password: SecretStr | None = None
    send_rate: float = Field(10.0, ge=0)
    smtp_concurrency: int = Field(4, ge=1, le=64)
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key: Path | None = None
    #: Proxies whose X-Forwarded-For is believed (drip.web.proxies); nobody's by default.
    trusted_proxies: str = ""
    info_pack: Path = Path("emails/info-pack.pdf")
    pack_delivery: Literal["attach", "link"] = "attach"
    bounce_domain: str | None = None
    #: imaps://user:pass@host[:port]/FOLDER or pop3s://... (plain imap://, pop3:// too).
    bounce_mailbox: SecretStr | None = None

    # drip's own knobs, each with a default that suits a small course.
    emails_dir: Path = Path("emails")
    worker_interval: float = Field(30.0, gt=0, description="seconds between scheduler passes")
    #: Delivery processes `drip worker` runs: one runs the scheduler's passes, the others
    #: only deliver (drip.sending.processes). `auto`: see `worker_process_count`.
    worker_processes: int | Literal["auto"] = WORKER_PROCESSES_DEFAULT
    smtp_timeout: float = Field(30.0, gt=0)
    retry_first_minutes: float = Field(5.0, gt=0)
    retry_max_hours: float = Field(6.0, gt=0)
    retry_lifetime_days: float = Field(5.0, gt=0)
    lease_seconds: float = Field(300.0, gt=0)
    #: Seconds a client has to send a request's head, from its first byte (drip.web.server).
    header_timeout: float = Field(10.0, gt=0)
    confirm_ttl_hours: float = Field(72.0, gt=0)
    #: Days a signup may stay unconfirmed before it and its data are deleted (drip.unconfirmed).
    unconfirmed_expire_days: float = Field(7.0, gt=0)
    signups_per_ip_per_minute: int = Field(10, ge=1)
    signups_per_address_per_hour: int = Field(3, ge=1)
    default_timezone: str = "UTC"
    cors_origins: str = ""
    catcher_dir: Path = Path(".drip/mail")
    minutes_per_day: float | None = Field(None, gt=0)
    throttle_seconds: float = Field(60.0, ge=0)

    # Whose course it is (drip.identity): shown on the pages and in every email.
    site_name: str = Field("", max_length=100)
    author_name: str = Field("", max_length=100)
    signoff: str = Field("Warmly,", max_length=100)
    privacy_controller: str = Field("", max_length=200)
    privacy_contact: str = Field("", max_length=200)
    #: The DNS server `drip check --dns` asks, as HOST or HOST:PORT; the system's when unset.
    dns_server: str | None = None
    #: This many soft bounces within DRIP_SOFT_BOUNCE_DAYS count as a hard bounce.
    soft_bounce_limit: int = Field(3, ge=1)
    soft_bounce_days: float = Field(30.0, gt=0)

    # Bounce and complaint webhooks: each closed (403) until its proof is configured.
    #: Comma-separated SNS TopicArns whose SES notifications are believed.
    ses_topic_arns: str = ""
    #: Tests only: an origin (http://127.0.0.1:PORT) also trusted for SNS certificate and
    #: subscribe URLs, besides https://sns.<region>.amazonaws.com.
    sns_cert_origin: str | None = None
    postmark_webhook_user: str | None = None
    postmark_webhook_password: SecretStr | None = None
    mailgun_signing_key: SecretStr | None = None
    #: SendGrid's verification key for the signed event webhook (base64 DER or PEM).
    sendgrid_public_key: str | None = None

    # Operations: metrics, alerts and logs.
    #: Opens GET /metrics to `Authorization: Bearer <token>`; /metrics answers 404 without it.
    metrics_token: SecretStr | None = None
    #: A URL that gets a JSON POST when something is wrong, and again when it clears.
    alert_webhook: str | None = None
    #: How long a condition lasts before it is an alert: no worker pass, a due message
    #: waiting, SMTP failing.
    alert_after_minutes: float = Field(15.0, gt=0)
    log_format: Literal["text", "json"] = "text"

    # Webhooks out (drip.hooks): events POSTed, signed, through the outbox.
    #: Comma-separated http(s) URLs that get every event; none by default.
    webhook_urls: str = ""
    #: The key events are signed with; derived from DRIP_SECRET_KEY when unset
    #: (`drip webhooks secret` prints it).
    webhook_secret: SecretStr | None = None

    # Click counting (drip.clicks): off unless switched on, and then said in the privacy note.
    click_tracking: bool = False
    #: A click this soon after the lesson was sent is a mail scanner's, not a reader's.
    click_delay_seconds: float = Field(60.0, ge=0)

    # Sender health: newsletters pause when a rate over the last 7 days passes its limit.
    max_bounce_percent: float = Field(2.0, gt=0, le=100)
    max_complaint_percent: float = Field(0.1, gt=0, le=100)
    #: Fewer delivered messages than this in the window prove nothing either way.
    health_min_messages: int = Field(100, ge=1)

    @field_validator("alert_webhook")
    @classmethod
    def _alert_webhook(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls(cls, value: str) -> str:
        for url in _url_list(value):
            if not url.startswith(("http://", "https://")) or len(url) > 1000:
                raise ValueError(f"{url[:80]!r} is not an http:// or https:// URL")
        return value

    @field_validator("worker_processes", mode="before")
    @classmethod
    def _worker_processes(cls, value: object) -> int | Literal["auto"]:
        return parse_processes(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        name, addr = parseaddr(value)
        if "@" not in addr or any(c in value for c in "\r\n"):
            raise ValueError("must be an address such as 'Course <course@example.com>'")
        return value

    @field_validator("site_name", "author_name", "signoff", "privacy_controller")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(c in value for c in "\r\n<>"):
            raise ValueError("one line of plain text, without < or >")
        return value

    @field_validator("privacy_contact")
    @classmethod
    def _contact(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        if value.startswith(("http://", "https://")):
            if any(c.isspace() or c in "<>\"'" for c in value):
                raise ValueError("must be a plain web address")
            return value
        name, addr = parseaddr(value)
        if "@" not in addr or name or addr != value:
            raise ValueError("must be an email address or an http(s):// web address")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("bounce_domain")
    @classmethod
    def _bounce_domain(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        domain = value.strip().lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain):
            raise ValueError("must be a domain name such as bounces.example.com")
        return domain

    @field_validator("bounce_mailbox")
    @classmethod
    def _bounce_mailbox(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from drip.bounce_mailbox import parse_url

        parse_url(value.get_secret_value())  # a ValueError names what is wrong, not the password
        return value

    @field_validator("default_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("dns_server")
    @classmethod
    def _dns_server(cls, value: str | None) -> str | None:
        if value:
            _host_port(value, 53)
        return value or None

    @field_validator("sendgrid_public_key")
    @classmethod
    def _sendgrid_key(cls, value: str | None) -> str | None:
        if value:
            from drip.webhooks.sendgrid import public_key

            try:
                public_key(value)
            except (ValueError, TypeError):
                raise ValueError(
                    "must be SendGrid's verification key (base64 DER or PEM of a P-256 key)"
                ) from None
        return value or None

    @field_validator("sns_cert_origin")
    @classmethod
    def _sns_origin(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://127.", "http://[::1]", "http://localhost")):
            raise ValueError("is for tests only: a loopback http:// origin")
        return value or None

    @property
    def ses_topic_arn_list(self) -> list[str]:
        return [a.strip() for a in self.ses_topic_arns.split(",") if a.strip()]

    @property
    def dns_server_address(self) -> tuple[str, int]:
        assert self.dns_server
        return _host_port(self.dns_server, 53)

    @cached_property
    def sender_address(self) -> Address:
        name, addr = parseaddr(self.sender)
        user, _, domain = addr.rpartition("@")
        return Address(display_name=name, username=user, domain=domain)

    @cached_property
    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)

    @property
    def webhook_url_list(self) -> list[str]:
        return _url_list(self.webhook_urls)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def worker_process_count(self) -> int:
        """DRIP_WORKER_PROCESSES as a number. `auto` uses what the machine has: one per
        core, but only as many as DRIP_SEND_RATE needs (the default 10 a second is one
        process's easy work, so a small server keeps one); no rate, every core."""
        if self.worker_processes != "auto":
            return self.worker_processes
        if self.send_rate:
            return max(1, min(cores(), math.ceil(self.send_rate / PROCESS_RATE)))
        return cores()

    @property
    def dkim_enabled(self) -> bool:
        return bool(self.dkim_domain and self.dkim_selector and self.dkim_private_key)

    def require_secret(self) -> str:
        """The current key: DRIP_SECRET_KEY, else the file `drip dev` made (load_settings)."""
        if self.secret_key is None:
            raise SettingsError(
                f"DRIP_SECRET_KEY: not set, and no key file at {self.secret_key_file}; "
                "set it to a long random string (drip dev makes one for you)"
            )
        if len(self.secret_key.get_secret_value()) < MIN_SECRET:
            raise SettingsError(
                f"DRIP_SECRET_KEY: shorter than {MIN_SECRET} characters; "
                "set it to a long random string"
            )
        return self.secret_key.get_secret_value()

    def old_secrets(self) -> list[str]:
        """The keys of DRIP_OLD_SECRET_KEYS, in the order given."""
        if self.old_secret_keys is None:
            return []
        raw = self.old_secret_keys.get_secret_value()
        return [key.strip() for key in raw.split(",") if key.strip()]

    def secret_keys(self) -> list[str]:
        """Every key a link may be signed with: the current one first, then the old ones."""
        return [self.require_secret(), *self.old_secrets()]


def _url_list(text: str) -> list[str]:
    return [url.strip() for url in text.split(",") if url.strip()]


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:53', '[::1]:53' or '::1' as an IP address and a port."""
    host, port = value.strip(), str(default_port)
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError("must be an IP address, optionally with :PORT") from None
    if not 1 <= number <= 65535:
        raise ValueError("the port must be between 1 and 65535")
    return host, number


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning pydantic's report into one plain line per problem."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "DRIP_" + "_".join(str(p) for p in err["loc"]).upper()
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {message}")
        raise SettingsError("; ".join(lines)) from None
    partial = [settings.dkim_domain, settings.dkim_selector, settings.dkim_private_key]
    if any(partial) and not all(partial):
        raise SettingsError(
            "DRIP_DKIM_DOMAIN, DRIP_DKIM_SELECTOR and DRIP_DKIM_PRIVATE_KEY: set all three or none"
        )
    if bool(settings.postmark_webhook_user) != bool(settings.postmark_webhook_password):
        raise SettingsError(
            "DRIP_POSTMARK_WEBHOOK_USER and DRIP_POSTMARK_WEBHOOK_PASSWORD: set both or neither"
        )
    if settings.secret_key is None:
        found = read_key_file(settings.secret_key_file)
        if found:
            settings.secret_key = SecretStr(found)
    if any(len(key) < MIN_SECRET for key in settings.old_secrets()):
        raise SettingsError(
            f"DRIP_OLD_SECRET_KEYS: every key must be at least {MIN_SECRET} characters"
        )
    if bool(settings.admin_user) != bool(settings.admin_password):
        raise SettingsError("DRIP_ADMIN_USER and DRIP_ADMIN_PASSWORD: set both or neither")
    return settings
