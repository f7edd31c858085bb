"""A real DNS server on loopback for tests: UDP, dnspython's message API, answers from a dict.

`zone` maps a name ("example.com", "_dmarc.example.com") to its TXT strings; a name not
in it is NXDOMAIN. Only TXT is answered (an empty answer for other types of a known name).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = dict[str, list[str]]


def _txt(value: str) -> str:
    """A TXT record's text form: split into quoted strings of at most 255 characters."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def answer(zone: Zone, wire: bytes) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA | dns.flags.RA
    known = {dns.name.from_text(k): v for k, v in zone.items()}
    for question in query.question:
        if question.name not in known:
            response.set_rcode(dns.rcode.NXDOMAIN)
            continue
        if question.rdtype == dns.rdatatype.TXT and known[question.name]:
            rrset = dns.rrset.from_text_list(
                question.name, 300, "IN", "TXT", [_txt(v) for v in known[question.name]]
            )
            response.answer.append(rrset)
    return response.to_wire()


@contextmanager
def dns_server(zone: Zone) -> Iterator[str]:
    """Serve `zone` on a random loopback UDP port; yields "127.0.0.1:PORT"."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                sock.sendto(answer(zone, wire), peer)
            except Exception:  # noqa: BLE001 - a malformed query gets no answer, as from a real server
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        sock.close()
