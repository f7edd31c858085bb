"""drip.web.server: a real `drip serve` against clients that send huge or slow heads,
and its access log, which never shows a token."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from drip.settings import Settings
from drip.web.server import MAX_HEAD, redact
from tests.processes import drip_serve
from tests.waiting import wait_until

pytestmark = pytest.mark.process


def _connect(base: str) -> socket.socket:
    url = urlsplit(base)
    return socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=5)


def _closed(sock: socket.socket) -> bool:
    """True once the server has closed the connection (what it sent before is read)."""
    sock.settimeout(0.05)
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_a_huge_header_is_refused_before_it_is_all_read(settings: Settings, tmp_path: Path) -> None:
    """Four 40 MB headers used to cost 160 MB: now a head past MAX_HEAD gets a 400 and
    the connection is closed while the client is still sending."""
    with drip_serve(settings, tmp_path / "serve.log") as base, _connect(base) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: drip\r\nX-Big: ")
        sent, answer = 0, b""
        try:
            while sent < 40 * 1024 * 1024:
                sock.sendall(b"a" * 16384)
                sent += 16384
        except OSError:  # reset or broken pipe: the server stopped reading
            pass
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        assert answer.startswith(b"HTTP/1.1 400"), (sent, answer[:100])
        assert sent < 4 * 1024 * 1024, sent  # refused near MAX_HEAD, not after it all
    assert MAX_HEAD <= 64 * 1024


def test_a_head_sent_too_slowly_is_cut_off(settings: Settings, tmp_path: Path) -> None:
    """A client dribbling one header line at a time (slowloris) is closed once the
    header timeout has passed, though it never stopped sending."""
    with (
        drip_serve(settings, tmp_path / "serve.log", DRIP_HEADER_TIMEOUT="1") as base,
        _connect(base) as sock,
    ):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: drip\r\n")
        deadline = time.monotonic() + 20
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            closed = _closed(sock)
            time.sleep(0.1)  # the slow client's pace, not a wait for the server
        assert closed, "the server kept a dribbling connection open"
        # Whole requests, one after another on one connection, are served as before.
        with httpx.Client(base_url=base) as client:
            assert [client.get("/healthz").status_code for _ in range(3)] == [200] * 3


def test_tokens_never_reach_the_access_log(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    secret = "SeCrEtToKeN0123456789abcdefXYZ"
    with drip_serve(settings, log) as base:
        with httpx.Client(base_url=base) as client:
            client.get(f"/confirm/{secret}")
            client.post(f"/confirm/{secret}?x=1")
            client.get(f"/unsubscribe/{secret}")
            client.post(f"/unsubscribe/{secret}", data={"List-Unsubscribe": "One-Click"})
            client.get(f"/pack/{secret}")
            client.get("/healthz")
        wait_until(lambda: '"GET /healthz' in log.read_text(), 10, "the access log")
    text = log.read_text()
    assert "/unsubscribe/[token]" in text
    assert "/confirm/[token]" in text
    assert secret not in text


def test_redact_keeps_the_route_and_hides_the_token() -> None:
    assert redact("/confirm/abc.def?x=1") == "/confirm/[token]?x=1"
    assert redact("/unsubscribe/abc/extra") == "/unsubscribe/[token]/extra"
    assert redact("/pack/abc") == "/pack/[token]"
    assert redact("/admin/subscribers/5") == "/admin/subscribers/5"
    assert redact("/confirm/") == "/confirm/"
