"""Building messages: headers, parts, no header injection, DKIM that verifies."""

from __future__ import annotations

import base64
import email
import email.policy
import random
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest

from drip.sending.message import PACK_FILENAME, Unaddressable, compose
from drip.settings import Settings, load_settings
from drip.templating import Rendered

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
RENDERED = Rendered(subject="Lesson 1 of 8: Trigger points", html="<p>Hi</p>", text="Hi\n")


def _settings(tmp_path: Path, **extra: object) -> Settings:
    pack = tmp_path / "pack.pdf"
    pack.write_bytes(b"%PDF-1.4\n%test\n")
    return load_settings(
        _env_file=None,
        secret_key="x" * 32,
        info_pack=pack,
        sender="Course <course@example.org>",
        **extra,
    )


def test_a_name_cannot_inject_headers() -> None:
    data = compose(
        load_settings(_env_file=None),
        RENDERED,
        email="ann@example.com",
        name="Ann\r\nBcc: victim@example.com",
        message_id="<1@example.org>",
        unsubscribe_url=None,
        attach_pack=False,
        now=NOW,
    ).data
    assert b"\r\nBcc:" not in data
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert parsed["To"].addresses[0].addr_spec == "ann@example.com"


def test_no_encoded_word_from_a_name_survives_into_to() -> None:
    """A name that is itself an RFC 2047 word (it passed the signup checks: no CR, LF, <
    or >) went into To: as it was, and mail clients decoded it to a line break or markup.
    drip encodes such a name itself, so it decodes to exactly what was typed."""
    for name in (
        "=?utf-8?q?Sam=0D=0A?=",
        "=?utf-8?q?=3Cscript=3Ealert(1)=3C/script=3E?=",
        "=?UTF-8?B?PHNjcmlwdD4=?=",
        "Sam =?iso-8859-1?q?=0A?= Smith",
    ):
        data = compose(
            load_settings(_env_file=None),
            RENDERED,
            email="ann@example.com",
            name=name,
            message_id="<1@example.org>",
            unsubscribe_url=None,
            attach_pack=False,
            now=NOW,
        ).data
        to_line = next(line for line in data.split(b"\r\n") if line.startswith(b"To:"))
        assert name.encode() not in to_line, to_line
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert parsed["To"].addresses[0].display_name == name
        assert parsed["To"].addresses[0].addr_spec == "ann@example.com"


def test_the_message_carries_every_part_and_header(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    envelope = compose(
        settings,
        RENDERED,
        email="ann@example.com",
        name="Ann",
        message_id="<1@example.org>",
        unsubscribe_url="https://course.example.org/unsubscribe/T",
        attach_pack=True,
        now=NOW,
    )
    assert envelope.sender == "course@example.org"
    assert envelope.recipient == "ann@example.com"
    parsed = email.message_from_bytes(envelope.data, policy=email.policy.default)
    types = [p.get_content_type() for p in parsed.walk()]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
    for header in ("From", "To", "Subject", "Date", "Message-ID"):
        assert parsed[header], header
    assert parsed["Date"].datetime == NOW
    assert parsed["List-Unsubscribe"] == "<https://course.example.org/unsubscribe/T>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_unicode_names_subjects_and_bodies_survive_the_round_trip(tmp_path: Path) -> None:
    """What a mail client decodes is exactly what was rendered: QP bodies, RFC 2047 words."""
    long_line = "Schmerz " * 40 + "= Ende"
    text = f"Hallo Jörg,\n.\n{long_line}\ntrailing space \n\nℹ️ 🎉\n"
    html = f"<p>Grüße, Jörg</p>\n<p>{long_line}</p>\n"
    subject = "Lektion 1 von 8: Was Triggerpunkte sind – und warum sie schmerzen, erklärt"
    envelope = compose(
        _settings(tmp_path),
        Rendered(subject=subject, html=html, text=text),
        email="joerg@bücher.example",
        name='Jörg "the hip" Müller-Lüdenscheidt, Physiotherapeut und Läufer',
        message_id="<2@example.org>",
        unsubscribe_url="https://course.example.org/unsubscribe/T",
        attach_pack=True,
        now=NOW,
    )
    assert envelope.recipient == "joerg@xn--bcher-kva.example"
    data = envelope.data
    assert data.isascii()
    assert b"\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert not parsed.defects
    assert parsed["Subject"] == subject
    assert parsed["To"].addresses[0].display_name.startswith('Jörg "the hip" Müller')
    assert parsed["To"].addresses[0].addr_spec == "joerg@xn--bcher-kva.example"
    plain = parsed.get_body(("plain",))
    rich = parsed.get_body(("html",))
    assert plain is not None
    assert rich is not None
    # On the wire every line ends in CRLF (RFC 5322); the characters are the same.
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich.get_content().replace("\r\n", "\n") == html
    pdf = next(p for p in parsed.iter_attachments() if p.get_content_type() == "application/pdf")
    assert pdf.get_content() == (tmp_path / "pack.pdf").read_bytes()
    # Named twice, as clients old and new look for it: Content-Type name= and the filename.
    assert pdf.get_param("name") == PACK_FILENAME
    assert pdf.get_filename() == PACK_FILENAME


def test_a_non_ascii_mailbox_name_is_refused_with_the_reason() -> None:
    with pytest.raises(Unaddressable, match="SMTPUTF8"):
        compose(
            load_settings(_env_file=None),
            RENDERED,
            email="jörg@example.com",
            name="Jörg",
            message_id="<3@example.org>",
            unsubscribe_url=None,
            attach_pack=False,
            now=NOW,
        )


@pytest.fixture
def dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def test_dkim_signature_covers_the_unsubscribe_headers_and_verifies(
    tmp_path: Path, dkim_key: tuple[Path, bytes]
) -> None:
    key, record = dkim_key
    settings = _settings(
        tmp_path, dkim_domain="example.org", dkim_selector="drip", dkim_private_key=key
    )
    data = compose(
        settings,
        RENDERED,
        email="ann@example.com",
        name="Ann",
        message_id="<1@example.org>",
        unsubscribe_url="https://course.example.org/unsubscribe/T",
        attach_pack=True,
        now=NOW,
    ).data
    assert data.startswith(b"DKIM-Signature:")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    signed = str(parsed["DKIM-Signature"]).replace(" ", "").replace("\r\n", "")
    signed_headers = next(p for p in signed.split(";") if p.strip().startswith("h=")).lower()
    for header in (
        "from",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ):
        assert header in signed_headers.split("=", 1)[1].split(":"), header

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"drip._domainkey.example.org."
        return record

    assert dkim.verify(data, dnsfunc=dns)
    assert not dkim.verify(data.replace(b"Lesson 1", b"Lesson 2"), dnsfunc=dns)


def test_reply_to_and_threading_headers_when_given_and_never_injected() -> None:
    settings = load_settings(_env_file=None)
    envelope = compose(
        settings,
        RENDERED,
        email="sam@example.com",
        name="Sam",
        message_id="<9@example.org>",
        unsubscribe_url=None,
        attach_pack=False,
        now=NOW,
        reply_to="reply+9-abc@bounce.example.org",
        in_reply_to="<q@reader.example>",
    )
    parsed = email.message_from_bytes(envelope.data, policy=email.policy.default)
    assert parsed["Reply-To"] == "reply+9-abc@bounce.example.org"
    assert parsed["In-Reply-To"] == parsed["References"] == "<q@reader.example>"
    plain = compose(
        settings,
        RENDERED,
        email="sam@example.com",
        name="Sam",
        message_id="<10@example.org>",
        unsubscribe_url=None,
        attach_pack=False,
        now=NOW,
    )
    assert b"Reply-To" not in plain.data
    assert b"In-Reply-To" not in plain.data
    with pytest.raises(ValueError, match="line break"):
        compose(
            settings,
            RENDERED,
            email="sam@example.com",
            name="Sam",
            message_id="<11@example.org>",
            unsubscribe_url=None,
            attach_pack=False,
            now=NOW,
            in_reply_to="<q@x>\r\nBcc: victim@example.com",
        )


def test_quoted_printable_line_by_line_is_the_whole_text_encoded_at_once() -> None:
    """The per-line cache writes what one b2a_qp call over the whole text writes: the
    shipped emails, and random lines around the 76-character limit with the characters
    quoted-printable treats specially (trailing blanks, a leading dot, =, non-ASCII)."""
    from drip.render import render_email, template_names
    from drip.sending.message import _quoted_printable, _whole_quoted_printable
    from tests.test_content import EMAILS, context_for

    texts: list[str] = []
    for name in template_names(EMAILS):
        rendered = render_email(EMAILS, name, context_for(name))
        texts += [rendered.html, rendered.text]
    rng = random.Random(7)
    alphabet = list("ab =.\t \xe9\u20ac\n\n\r=x0-_")
    for _ in range(20000):
        size = rng.choice([5, 30, 70, 74, 75, 76, 77, 78, 80, 150, 300])
        text = "".join(
            rng.choice(alphabet) if rng.random() < 0.3 else "a" for _ in range(rng.randint(0, size))
        )
        ends = rng.choice(["", " ", "\t", ".", "\n", "=", " \n", "\n.", ".\n", "\t\n\n"])
        texts.append(rng.choice(["", ".", " ", "\n"]) + text + ends)
    for text in texts:
        assert _quoted_printable(text) == _whole_quoted_printable(text), repr(text)
