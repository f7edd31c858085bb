"""DRIP_PACK_DELIVERY=link: the welcome carries a signed link to the PDF, not the PDF."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from drip.db import session_scope
from drip.models import Subscriber
from drip.pack_link import download_count, pack_token
from drip.settings import Settings
from drip.web.app import create_app
from tests.conftest import SECRET
from tests.factories import subscriber, tick
from tests.mailserver import Recorder


def _parts(message: EmailMessage) -> dict[str, EmailMessage]:
    return {part.get_content_type(): part for part in message.walk() if not part.is_multipart()}


def _link_of(message: EmailMessage, settings: Settings) -> str:
    text = _parts(message)["text/plain"].get_content()
    found = re.search(re.escape(settings.base_url) + r"/pack/\S+", text)
    assert found, text
    return found.group(0)


def test_the_welcome_carries_a_signed_link_that_serves_the_pdf(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    linked = settings.model_copy(update={"pack_delivery": "link"})
    ann = subscriber(linked, "ann@example.com")
    tick(linked)
    [message] = recorder.wait_for(1)
    parts = _parts(message)
    assert "application/pdf" not in parts, "the PDF rode along although a link was asked"
    assert "ready" in str(message["Subject"])
    link = _link_of(message, linked)
    assert link in parts["text/html"].get_content()
    path = link.removeprefix(linked.base_url)

    client = TestClient(create_app(linked))
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert "trigger-point-information-pack.pdf" in response.headers["content-disposition"]
    assert response.content == Path(linked.info_pack).read_bytes()
    with Session(engine) as session:
        assert download_count(session) == 1
        assert ann.id is not None
        assert path == f"/pack/{pack_token(SECRET, ann.id, ann.token_salt)}"


def test_only_a_valid_signature_gets_the_pack(settings: Settings, engine: Engine) -> None:
    ann = subscriber(settings, "ann@example.com")
    bob = subscriber(settings, "bob@example.com")
    assert ann.id is not None
    assert bob.id is not None
    good = pack_token(SECRET, ann.id, ann.token_salt)
    signature = good.partition(".")[2]
    client = TestClient(create_app(settings))
    for bad in (
        f"{bob.id}.{signature}",  # Ann's signature on Bob's id
        good[:-1] + ("A" if good[-1] != "A" else "B"),
        pack_token("another-secret-key-0123456789", ann.id, ann.token_salt),
        f"{ann.id}",
        f"{ann.id}.",
        "x.y",
        "99999999999999999999999.abc",
        "١.abc",  # a non-ASCII digit
    ):
        response = client.get(f"/pack/{bad}")
        assert response.status_code == 404, bad
        assert response.headers["content-type"].startswith("text/html")
    with Session(engine) as session:
        assert download_count(session) == 0
    assert client.get(f"/pack/{good}").status_code == 200


def test_an_erased_subscriber_s_link_dies(settings: Settings, engine: Engine) -> None:
    ann = subscriber(settings, "ann@example.com")
    assert ann.id is not None
    token = pack_token(SECRET, ann.id, ann.token_salt)
    with session_scope(engine) as session:
        row = session.get(Subscriber, ann.id)
        session.delete(row)
    assert TestClient(create_app(settings)).get(f"/pack/{token}").status_code == 404


def test_attach_stays_the_default(settings: Settings, recorder: Recorder) -> None:
    assert settings.pack_delivery == "attach"
    subscriber(settings, "ann@example.com")
    tick(settings)
    [message] = recorder.wait_for(1)
    parts = _parts(message)
    assert "application/pdf" in parts
    assert "/pack/" not in parts["text/plain"].get_content()
