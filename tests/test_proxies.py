"""The client's address: X-Forwarded-For believed only from DRIP_TRUSTED_PROXIES, every
address parsed as an IP, IPv6 limited per /64; and a real `drip serve` that does the same."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from drip.db import read_scope
from drip.models import Subscriber
from drip.settings import Settings, SettingsError, parse_networks
from drip.subscribers import confirm_salt
from drip.tokens import make_token
from drip.web.proxies import limit_key, parse_ip, real_client
from tests.conftest import SettingsFactory
from tests.processes import drip_serve

PROXY = parse_networks("10.0.0.5, 192.168.0.0/16, fd00::/8")
FORM = {"email": "ann@example.com", "name": "Ann", "consent": "yes", "website": ""}


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert str(real_client("203.0.113.9", ["1.2.3.4"], ())) == "203.0.113.9"
    assert str(real_client("127.0.0.1", ["1.2.3.4"], ())) == "127.0.0.1"
    assert str(real_client("203.0.113.9", ["1.2.3.4"], PROXY)) == "203.0.113.9"
    assert str(real_client("10.0.0.5", ["1.2.3.4"], PROXY)) == "1.2.3.4"


def test_the_rightmost_untrusted_hop_is_the_client() -> None:
    """A visitor's own X-Forwarded-For is kept by the proxy on the left: never reached."""
    hops = ["6.6.6.6, 198.51.100.7", "192.168.1.1"]  # forged, real client, inner proxy
    assert str(real_client("10.0.0.5", hops, PROXY)) == "198.51.100.7"
    # Every hop a trusted proxy: the leftmost is as far as anyone can tell.
    assert str(real_client("10.0.0.5", ["192.168.3.3"], PROXY)) == "192.168.3.3"
    # No header at all: the proxy itself.
    assert str(real_client("10.0.0.5", [], PROXY)) == "10.0.0.5"


def test_anything_but_an_ip_address_is_never_believed() -> None:
    assert str(real_client("10.0.0.5", ["<b>not-an-ip</b>"], PROXY)) == "10.0.0.5"
    assert str(real_client("10.0.0.5", ["evil, 192.168.1.1"], PROXY)) == "192.168.1.1"
    assert real_client("testclient", ["1.2.3.4"], PROXY) is None
    assert real_client(None, [], PROXY) is None
    assert parse_ip("[2001:db8::1]:443") == parse_ip("2001:db8::1")
    assert str(parse_ip("192.0.2.1:8080")) == "192.0.2.1"
    assert str(parse_ip("::ffff:192.0.2.1")) == "192.0.2.1"
    for bad in ("", "1.2.3", "1.2.3.4.5", "300.1.1.1", "ab:cd", "1.2.3.4/8", "x" * 500):
        assert parse_ip(bad) is None, bad


def test_ipv6_clients_are_limited_per_64() -> None:
    assert limit_key("2001:db8:1:2::1") == limit_key("2001:db8:1:2:ffff:1:2:3")
    assert limit_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("192.0.2.1") != limit_key("192.0.2.2")
    assert limit_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert limit_key("testclient") == limit_key(None) == "unknown"


def test_a_bad_trusted_proxy_setting_is_named(make_settings: SettingsFactory) -> None:
    with pytest.raises(SettingsError, match="DRIP_TRUSTED_PROXIES: 'proxy.local' is not"):
        make_settings("sqlite:///x.db", 1025, trusted_proxies="10.0.0.1, proxy.local")
    settings = make_settings("sqlite:///x.db", 1025, trusted_proxies=" 10.0.0.0/8 ,")
    assert [str(n) for n in settings.trusted_proxy_networks] == ["10.0.0.0/8"]


def _posts(base: str, forwarded: list[str], email: str = "ann@example.com") -> list[int]:
    with httpx.Client(base_url=base, timeout=10) as client:
        return [
            client.post(
                "/subscribe",
                data=FORM | {"email": email},
                headers={"X-Forwarded-For": hop},
            ).status_code
            for hop in forwarded
        ]


def test_drip_serve_ignores_forged_forwarded_for_by_default(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Before, uvicorn's proxy_headers believed any loopback peer: three forged addresses
    were three buckets and `<b>not-an-ip</b>` became a consent IP."""
    limited = {"DRIP_SIGNUPS_PER_IP_PER_MINUTE": "2"}
    with drip_serve(settings, tmp_path / "serve.log", **limited) as base:
        codes = _posts(base, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    assert codes == [303, 303, 429]


def test_drip_serve_believes_a_trusted_proxy_and_stores_only_ips(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    env = {"DRIP_SIGNUPS_PER_IP_PER_MINUTE": "2", "DRIP_TRUSTED_PROXIES": "127.0.0.1"}
    with drip_serve(settings, tmp_path / "serve.log", **env) as base:
        # Each visitor behind the proxy has their own bucket; one of them hits it.
        assert _posts(base, ["198.51.100.1", "198.51.100.2", "198.51.100.3"]) == [303] * 3
        assert _posts(base, ["198.51.100.1"], "bob@example.com") == [303]
        assert _posts(base, ["198.51.100.1"], "cy@example.com") == [429]
        # A visitor's forged hop on the left changes nothing: the proxy's entry counts.
        assert _posts(base, ["6.6.6.6, 198.51.100.1"], "dee@example.com") == [429]
        assert _posts(base, ["198.51.100.9"], "eve@example.com") == [303]
        # Confirmed through the proxy: the consent IP is the reader's, and never a string
        # that is not an address (the proxy's own address stands in for it).
        for email, hop in (("ann@example.com", "198.51.100.7"), ("eve@example.com", "<b>x</b>")):
            confirmed = httpx.post(
                f"{base}/confirm/{_confirm_token(settings, engine, email)}",
                headers={"X-Forwarded-For": hop},
                timeout=10,
            )
            assert confirmed.status_code == 200
    with read_scope(engine) as session:
        consent = dict(session.execute(select(Subscriber.email, Subscriber.consent_ip)).all())
    assert consent["ann@example.com"] == "198.51.100.7"
    assert consent["eve@example.com"] == "127.0.0.1"


def _confirm_token(settings: Settings, engine: Engine, email: str) -> str:
    with read_scope(engine) as session:
        sub = session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
    return make_token(settings.require_secret(), confirm_salt(sub), "confirm")
