"""Who is asking: the client's address, believed from `X-Forwarded-For` only via trusted proxies.

Any client can write `X-Forwarded-For: whatever`, so the header counts only when the
peer that sent the request is one of `DRIP_TRUSTED_PROXIES` (none by default). Then
the hops are read from the right, as each proxy appends the address it saw, and the
first one that is not a trusted proxy is the client: a visitor's own entries further
left are never reached. Every address is parsed with `ipaddress`, so what drip stores
or limits is always an IP address (or nothing), never a string from a header.

`ClientAddress` puts the result into the ASGI scope's `client`, so the signup limits,
the admin login's delays and the consent record all see the same address. An IPv6
client is limited by its /64 (one household or one server gets a whole /64 and can
pick any address in it), an IPv4 one by its address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from drip.settings import Network

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
#: The prefix an IPv6 client is limited by.
IPV6_PREFIX = 64


def parse_ip(text: str | None) -> IP | None:
    """An IP address from a peer or a header hop ("[v6]:port" and "v4:port" too), else None."""
    if not text:
        return None
    value = text.strip()
    if value.startswith("["):  # [2001:db8::1]:443
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # 192.0.2.1:443
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IP, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def real_client(
    peer: str | None, forwarded: Iterable[str], trusted: Sequence[Network]
) -> IP | None:
    """The client's address: the peer, or through trusted proxies the rightmost untrusted hop.

    `forwarded` holds the values of every `X-Forwarded-For` header, in order. A hop
    that is not an IP address stops the walk at the last address known.
    """
    address = parse_ip(peer)
    if address is None or not _trusted(address, trusted):
        return address
    hops = [hop for value in forwarded for hop in value.split(",")]
    for hop in reversed(hops):
        parsed = parse_ip(hop)
        if parsed is None:
            return address
        address = parsed
        if not _trusted(address, trusted):
            return address
    return address


def limit_key(host: str | None) -> str:
    """The key rate limits count a client under: its IPv4 address or its IPv6 /64."""
    address = parse_ip(host)
    if address is None:
        return "unknown"  # no IP (a Unix socket, a test client): one shared key
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)


def client_ip(request: Request) -> str | None:
    """The client's address as text, for the consent record; None if it is not an IP."""
    address = parse_ip(request.client.host if request.client else None)
    return None if address is None else str(address)


def client_key(request: Request) -> str:
    return limit_key(request.client.host if request.client else None)


class ClientAddress:
    """Replaces the scope's client with the real client, as `real_client` finds it."""

    def __init__(self, app: ASGIApp, trusted: Sequence[Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            peer, port = (client[0], client[1]) if client else (None, 0)
            forwarded = [
                value.decode("latin-1")
                for name, value in scope.get("headers", [])
                if name == b"x-forwarded-for"
            ]
            address = real_client(peer, forwarded if self.trusted else (), self.trusted)
            if address is not None:
                believed = str(address)
                scope = {**scope, "client": (believed, port if believed == peer else 0)}
        await self.app(scope, receive, send)
