"""What stands between drip's mail and an inbox: settings that providers punish, and DNS.

`setting_problems` reads only the settings: an http:// unsubscribe link (RFC 8058 wants
https for one-click), a DKIM domain that does not align with the From domain (DMARC
then fails on DKIM), and an SMTP password sent in clear to another machine.
`dns_problems` looks up what Gmail and Yahoo require of a bulk sender: SPF and DMARC
on the From domain and the DKIM key under its selector, with dnspython, through
DRIP_DNS_SERVER when set (the system's resolver otherwise).
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import dns.exception
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from drip.errors import DripError
from drip.settings import Settings

#: Seconds for one lookup, retries included.
LOOKUP_SECONDS = 5.0


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def aligned(dkim_domain: str, from_domain: str) -> bool:
    """DMARC's relaxed alignment, without a public-suffix list: one domain is the other's
    parent or the same (example.com signs for mail.example.com and the reverse)."""
    a, b = dkim_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def setting_problems(settings: Settings) -> list[str]:
    found: list[str] = []
    base = urlsplit(settings.base_url)
    if base.scheme == "http" and not is_loopback(base.hostname or ""):
        found.append(
            f"DRIP_BASE_URL: {settings.base_url} is http://, but one-click unsubscribe "
            "(RFC 8058, required by Gmail and Yahoo) needs an https:// URL"
        )
    from_domain = settings.sender_address.domain
    if settings.dkim_domain and not aligned(settings.dkim_domain, from_domain):
        found.append(
            f"DRIP_DKIM_DOMAIN: {settings.dkim_domain} does not align with the From domain "
            f"{from_domain}, so DMARC cannot pass on DKIM; sign with {from_domain}"
        )
    if (
        settings.smtp_password is not None
        and settings.smtp_security == "none"
        and not is_loopback(settings.smtp_host)
    ):
        found.append(
            f"DRIP_SMTP_SECURITY: none, so the SMTP password would cross the network to "
            f"{settings.smtp_host} in clear; use starttls (port 587) or tls (port 465)"
        )
    for url in settings.webhook_url_list:
        hook = urlsplit(url)
        if hook.scheme == "http" and not is_loopback(hook.hostname or ""):
            found.append(
                f"DRIP_WEBHOOK_URLS: {hook.hostname} is http://, so subscribers' addresses "
                "would cross the network in clear; use https://"
            )
    return found


@dataclass
class DnsReport:
    problems: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)


def resolver(settings: Settings) -> dns.resolver.Resolver:
    if not settings.dns_server:
        made = dns.resolver.Resolver()
    else:
        made = dns.resolver.Resolver(configure=False)
        host, port = settings.dns_server_address
        made.nameservers = [host]
        made.port = port
    made.lifetime = LOOKUP_SECONDS
    return made


class LookupFailed(DripError):
    """The DNS server did not answer; nothing is known about the record."""


def txt_records(lookup: dns.resolver.Resolver, name: str) -> list[str]:
    """The TXT strings at `name` (each record's parts joined); [] when there is none."""
    try:
        answer = lookup.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise LookupFailed(f"{name}: the DNS lookup failed ({exc.__class__.__name__})") from None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = "".join(value.split())
    return tags


def _public_key(settings: Settings) -> str | None:
    """The base64 public key matching DRIP_DKIM_PRIVATE_KEY, as a DKIM record's p= holds it."""
    if settings.dkim_private_key is None:
        return None
    try:
        key = serialization.load_pem_private_key(
            settings.dkim_private_key.read_bytes(), password=None
        )
    except (OSError, ValueError, TypeError):
        return None  # `drip check` reports an unreadable key file on its own
    if isinstance(key, ed25519.Ed25519PrivateKey):  # RFC 8463: the raw 32 bytes
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        raw = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(raw).decode("ascii")


def dns_problems(settings: Settings) -> DnsReport:
    report = DnsReport()
    lookup = resolver(settings)
    domain = settings.sender_address.domain
    try:
        _spf(report, lookup, domain)
        _dmarc(report, lookup, domain)
        if settings.dkim_domain and settings.dkim_selector:
            _dkim(report, lookup, settings)
    except LookupFailed as exc:
        report.problems.append(str(exc))
    return report


def _one_record(
    report: DnsReport, lookup: dns.resolver.Resolver, name: str, label: str, tag: str
) -> list[str]:
    """The TXT records at `name` starting with `tag`; notes the single one as found, and
    returns them all for the caller to say what is wrong when there is not just one."""
    records = [r for r in txt_records(lookup, name) if r.lower().startswith(tag.lower())]
    if len(records) == 1:
        report.found.append(f"{label} at {name}: {records[0]}")
    return records


def _spf(report: DnsReport, lookup: dns.resolver.Resolver, domain: str) -> None:
    spf = _one_record(report, lookup, domain, "SPF", "v=spf1")
    if not spf:
        report.problems.append(
            f"SPF: no v=spf1 TXT record at {domain}; publish one naming the servers that send "
            f'for it (e.g. "v=spf1 include:your-relay ~all")'
        )
    elif len(spf) > 1:
        report.problems.append(f"SPF: {len(spf)} v=spf1 records at {domain}; RFC 7208 allows one")


def _dmarc(report: DnsReport, lookup: dns.resolver.Resolver, domain: str) -> None:
    name = f"_dmarc.{domain}"
    dmarc = _one_record(report, lookup, name, "DMARC", "v=DMARC1")
    if not dmarc:
        report.problems.append(
            f"DMARC: no v=DMARC1 TXT record at {name}; Gmail and Yahoo require one of bulk "
            'senders (start with "v=DMARC1; p=none; rua=mailto:you@' + domain + '")'
        )
    elif len(dmarc) > 1:
        report.problems.append(f"DMARC: {len(dmarc)} records at {name}; receivers ignore all")


def _dkim(report: DnsReport, lookup: dns.resolver.Resolver, settings: Settings) -> None:
    name = f"{settings.dkim_selector}._domainkey.{settings.dkim_domain}"
    records = txt_records(lookup, name)
    keys = [_tags(r) for r in records if "p" in _tags(r)]
    if not keys:
        report.problems.append(
            f"DKIM: no key at {name}; publish the public key of DRIP_DKIM_PRIVATE_KEY there"
        )
        return
    published = keys[0].get("p", "")
    if not published:
        report.problems.append(f"DKIM: the key at {name} is revoked (empty p=)")
        return
    mine = _public_key(settings)
    if mine is not None and published != mine:
        report.problems.append(
            f"DKIM: the key at {name} is not the public half of DRIP_DKIM_PRIVATE_KEY; "
            "receivers will fail every signature"
        )
        return
    report.found.append(f"DKIM at {name}: a key matching DRIP_DKIM_PRIVATE_KEY")
