"""Who fetches a link without being a reader: mail security scanners, link previews, bots.

Security gateways (Microsoft Defender Safe Links, Mimecast, Proofpoint, Barracuda)
fetch every link of a message within seconds of delivery, from their own networks,
often with a telling user agent (DESIGN.md, "Link scanners"). This one module holds
the patterns drip.clicks judges a click by; extend it when your logs show another.
A match is evidence against a human; no match is not proof of one (that is why the
delay and the all-links-at-once tests exist too).
"""

from __future__ import annotations

import ipaddress
import re

#: Fragments of user agents that are not a person's browser (case-insensitive).
USER_AGENT_PATTERNS = (
    r"headlesschrome",  # a scripted Chromium: scanners that detonate links run one
    r"phantomjs",
    r"\bbot\b|bot/|crawler|spider|slurp",
    r"preview|linkexpanding|facebookexternalhit|whatsapp|telegram|discord|skype",
    r"barracuda|mimecast|proofpoint|ppe-|messagelabs|symantec|forcepoint|sophos",
    r"trend ?micro|ironport|cisco|fireeye|trellix|zscaler|checkpoint|fortinet|paloalto",
    r"safelinks|safe links|microsoft office (existence|protocol) discovery",
    r"python-requests|python-urllib|aiohttp|httpx|curl/|wget|go-http-client|okhttp",
    r"libwww|java/|apache-httpclient|node-fetch|axios|scrapy",
)
_USER_AGENTS = re.compile("|".join(f"(?:{p})" for p in USER_AGENT_PATTERNS), re.IGNORECASE)

#: Networks the large mail security services fetch links from (their published mail
#: and scanning ranges): a click from there is the gateway's, not the reader's.
NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        # Microsoft Exchange Online Protection / Defender for Office 365
        "40.92.0.0/15",
        "40.107.0.0/16",
        "52.100.0.0/14",
        "104.47.0.0/17",
        # Mimecast (US, UK)
        "205.139.110.0/24",
        "207.211.30.0/24",
        "216.205.24.0/24",
        "185.58.84.0/22",
        "195.130.217.0/24",
        "91.220.42.0/24",
        "146.101.78.0/24",
        # Proofpoint (pphosted)
        "148.163.128.0/19",
        "67.231.144.0/20",
        # Barracuda
        "64.235.144.0/20",
        "209.222.80.0/21",
        # Google's crawlers and link/image proxies
        "66.249.64.0/19",
        "66.102.0.0/20",
    )
)


def scanner_user_agent(user_agent: str | None) -> bool:
    """No user agent at all, or one of the patterns above."""
    return not (user_agent or "").strip() or bool(_USER_AGENTS.search(user_agent or ""))


def scanner_address(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in NETWORKS)
