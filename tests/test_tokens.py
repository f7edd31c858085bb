"""Links keep working: under a rotated key, across commands, and for imported subscribers."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from drip.db import get_engine, session_scope
from drip.models import OutboxMessage, Subscriber, SubscriberStatus
from drip.operator_actions import subscriber_data
from drip.settings import Settings, load_settings
from drip.tokens import _mac, make_token, parse_token, split_token, token_hashes, verifies
from drip.web.app import create_app
from tests.conftest import SECRET, SettingsFactory
from tests.factories import subscriber
from tests.mailserver import MailServer, Recorder
from tests.test_cli import drip

NEW_KEY = "a-brand-new-secret-key-after-rotation"


def _status(engine: Engine, email: str) -> SubscriberStatus:
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber).where(Subscriber.email_key == email)).scalar_one()
        return sub.status


def test_a_token_is_its_salt_and_a_mac_that_only_the_keys_make() -> None:
    token = make_token(SECRET, "ab" * 16, "unsubscribe")
    parts = split_token(token)
    assert parts is not None
    assert parts[0] == "ab" * 16
    salt, mac = parts
    assert verifies([SECRET], salt, "unsubscribe", mac)
    assert verifies([NEW_KEY, SECRET], salt, "unsubscribe", mac)
    assert not verifies([NEW_KEY], salt, "unsubscribe", mac)
    assert not verifies([SECRET], salt, "confirm", mac)  # a purpose's token opens only that
    assert not verifies([SECRET], "cd" * 16, "unsubscribe", mac)
    assert split_token("no-dot-here") is None
    assert split_token(".x") is None


def test_an_unsubscribe_token_names_its_email_and_the_mac_covers_it() -> None:
    salt = "ab" * 16
    token = make_token(SECRET, salt, "unsubscribe", 42)
    assert token.startswith(f"{salt}.42.")
    assert len(make_token(SECRET, salt, "unsubscribe", 10**18 - 1)) <= 100  # a route reads 100
    parsed = parse_token(token)
    assert parsed is not None
    assert (parsed.salt, parsed.message) == (salt, 42)
    assert verifies([SECRET], salt, "unsubscribe", parsed.mac, 42)
    assert not verifies([SECRET], salt, "unsubscribe", parsed.mac, 43)  # moved to another email
    assert not verifies([SECRET], salt, "unsubscribe", parsed.mac)  # or to none
    assert not verifies([NEW_KEY], salt, "unsubscribe", parsed.mac, 42)
    assert split_token(token) is None  # not a SALT.MAC token
    for nonsense in (f"{salt}.x1.mac", f"{salt}..mac", f"{salt}.1.2.mac", f"{salt}.{'9' * 19}.m"):
        assert parse_token(nonsense) is None


def test_a_link_naming_its_email_records_it_and_one_naming_none_still_unsubscribes(
    settings: Settings, engine: Engine
) -> None:
    ann = subscriber(settings, "ann@example.com")
    bob = subscriber(settings, "bob@example.com")
    client = TestClient(create_app(settings))
    with session_scope(engine) as session:
        welcome = session.execute(
            select(OutboxMessage).where(OutboxMessage.subscriber_id == ann.id)
        ).scalar_one()
    good = make_token(SECRET, ann.token_salt, "unsubscribe", welcome.id)
    salt, number, mac = good.split(".")
    moved = f"{salt}.{int(number) + 1}.{mac}"
    for method in ("GET", "POST"):
        assert client.request(method, f"/unsubscribe/{moved}").status_code == 404
    # A message-naming token opens unsubscribing only, never a confirmation.
    assert (
        client.post(f"/confirm/{make_token(SECRET, ann.token_salt, 'confirm', 1)}").status_code
        == 404
    )
    assert client.get(f"/unsubscribe/{good}").status_code == 200
    assert _status(engine, "ann@example.com") == SubscriberStatus.active  # GET changes nothing
    assert client.post(f"/unsubscribe/{good}").status_code == 200
    plain = make_token(SECRET, bob.token_salt, "unsubscribe")
    assert client.post(f"/unsubscribe/{plain}").status_code == 200
    with session_scope(engine) as session:
        left = {
            s.email: (s.status, s.unsubscribed_via, s.unsubscribed_step)
            for s in session.execute(select(Subscriber)).scalars()
        }
    assert left == {
        "ann@example.com": (SubscriberStatus.unsubscribed, welcome.id, "welcome"),
        "bob@example.com": (SubscriberStatus.unsubscribed, None, None),
    }
    with session_scope(engine) as session:
        exported = subscriber_data(session, ann.id)  # what a reader asking for their data gets
    assert exported is not None
    assert exported["subscriber"]["unsubscribed_via"] == welcome.id
    assert exported["subscriber"]["unsubscribed_step"] == "welcome"


def test_a_link_signed_under_the_old_key_still_unsubscribes_after_rotation(
    settings: Settings, engine: Engine
) -> None:
    sub = subscriber(settings, "ann@example.com")
    old_link = make_token(SECRET, sub.token_salt, "unsubscribe")
    rotated = settings.model_copy(
        update={
            "secret_key": load_settings(_env_file=None, secret_key=NEW_KEY).secret_key,
            "old_secret_keys": load_settings(_env_file=None, secret_key=SECRET).secret_key,
        }
    )
    client = TestClient(create_app(rotated), follow_redirects=False)
    page = client.get(f"/unsubscribe/{old_link}")
    assert page.status_code == 200
    assert "<form" in page.text
    assert _status(engine, "ann@example.com") == SubscriberStatus.active  # GET changes nothing
    done = client.post(f"/unsubscribe/{old_link}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert _status(engine, "ann@example.com") == SubscriberStatus.unsubscribed

    # New mail is signed with the new key, and opens too; once the old key is dropped,
    # its links stop working (that is what retiring a key means).
    bob = subscriber(settings, "bob@example.com")
    bob_new = make_token(NEW_KEY, bob.token_salt, "unsubscribe")
    assert client.get(f"/unsubscribe/{bob_new}").status_code == 200
    retired = TestClient(create_app(rotated.model_copy(update={"old_secret_keys": None})))
    bob_old = make_token(SECRET, bob.token_salt, "unsubscribe")
    assert retired.get(f"/unsubscribe/{bob_old}").status_code == 404
    assert retired.post(f"/unsubscribe/{bob_old}").status_code == 404
    assert _status(engine, "bob@example.com") == SubscriberStatus.active


def test_a_link_sent_before_tokens_carried_their_salt_still_works(
    settings: Settings, engine: Engine
) -> None:
    """Mail already out has the bare MAC; the database kept its hash when it was made."""
    sub = subscriber(settings, "ann@example.com")
    bare = _mac(SECRET, sub.token_salt, "unsubscribe")
    assert token_hashes(SECRET, sub.token_salt)[1] == sub.unsubscribe_token_hash
    client = TestClient(create_app(settings), follow_redirects=False)
    assert client.post(f"/unsubscribe/{bare}").status_code == 200
    assert _status(engine, "ann@example.com") == SubscriberStatus.unsubscribed


def _link(message: EmailMessage, base: str) -> str:
    header = message["List-Unsubscribe"]
    found = re.fullmatch(r"<(.+)>", header.strip())
    assert found, header
    url = found.group(1)
    body = message.get_body(("plain",))
    assert body is not None
    assert url in body.get_content()  # the same link, visible in the text
    assert url.startswith(base + "/unsubscribe/")
    return url.removeprefix(base)


def test_a_subscriber_imported_by_the_cli_unsubscribes_from_the_workers_email(
    mail_server: MailServer, recorder: Recorder, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """The import, the delivery and the web app each find the key on their own (the key
    file `drip dev` makes), and the link in the delivered email unsubscribes: the page
    by GET, then the RFC 8058 one-click POST."""
    key_file = tmp_path / ".drip" / "secret-key"
    key_file.parent.mkdir()
    key_file.write_text("the-key-drip-dev-made-0123456789abcdef\n")
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    env = {
        "DRIP_DATABASE_URL": url,
        "DRIP_SMTP_PORT": str(mail_server.port),
        "DRIP_EMAILS_DIR": str(make_settings(url, 1).emails_dir),
        "DRIP_INFO_PACK": str(make_settings(url, 1).info_pack),
        "DRIP_SEND_RATE": "0",
    }
    people = tmp_path / "people.csv"
    people.write_text("email,name\nkim@example.com,Kim\n")
    result = drip("subscribers", "import", str(people), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = drip("tick", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    welcome = recorder.wait_for(1)[0]
    assert "kim@example.com" in welcome["To"]

    web = make_settings(url, mail_server.port, secret_key=None, secret_key_file=key_file)
    assert web.require_secret() == key_file.read_text().strip()
    client = TestClient(create_app(web), follow_redirects=False)
    path = _link(welcome, web.base_url)
    assert client.get(path).status_code == 200
    engine = get_engine(url)
    assert _status(engine, "kim@example.com") == SubscriberStatus.active
    response = client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "unsubscribed" in response.text
    assert _status(engine, "kim@example.com") == SubscriberStatus.unsubscribed
