"""Readers' replies: filed as questions under their subscriber and lesson, auto-replies
kept out, and the author's answer delivered once through the outbox.

The unit tests resolve `reply+TAG@` with a stand-in that reads the outbox id from the
tag; the end-to-end test at the bottom goes through the real thing: a reply sent by
SMTP to `drip inbound`, its tag signed by drip.verp.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session
from starlette.testclient import TestClient

from drip import replies
from drip.clock import utcnow
from drip.db import read_scope, session_scope
from drip.models import MessageKind, OutboxMessage, OutboxStatus, Question, QuestionStatus
from drip.settings import Settings
from drip.web.app import create_app
from tests import factories
from tests.conftest import SECRET, SettingsFactory
from tests.factories import lesson_sent
from tests.mailserver import MailServer, Recorder, free_port
from tests.processes import start_inbound
from tests.test_admin import PASSWORD, USER, _basic, _csrf

DOMAIN = "bounce.example.org"


@pytest.fixture
def settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> Settings:
    """The shared settings, with the admin open (this module's answers come from /admin)."""
    return make_settings(database_url, mail_server.port, admin_user=USER, admin_password=PASSWORD)


@pytest.fixture
def client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), headers=_basic(USER, PASSWORD))


def by_id(session: Session, tag: str) -> OutboxMessage | None:
    return session.get(OutboxMessage, int(tag)) if tag.isdigit() else None


def reply(subject: str, body: str, message_id: str, **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Sam Reader <sam@example.com>"
    message["To"] = f"reply+1@{DOMAIN}"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


def take(engine: Engine, raw: bytes, tag: str) -> replies.Intake:
    with session_scope(engine) as session:
        return replies.take(session, raw, tag, resolve=by_id, now=utcnow())


def send_first_lesson(settings: Settings) -> None:
    """Welcome now, then lesson 1 in its send window two days on."""
    factories.tick(settings)
    later = (utcnow() + timedelta(days=2)).replace(hour=9, minute=0)
    factories.tick(settings, later)
    factories.tick(settings, later)


def lesson_row(engine: Engine) -> OutboxMessage:
    rows = [r for r in factories.outbox(engine) if r.kind == MessageKind.lesson]
    assert rows
    return rows[0]


# -- recognising machines -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto_Submitted": "auto-replied"},
        {"Auto_Submitted": "auto-generated"},
        {"X_Autoreply": "yes"},
        {"X_Autorespond": "vacation"},
        {"Precedence": "auto_reply"},
        {"Precedence": "bulk"},
        {"X_Auto_Response_Suppress": "All"},
        {"List_Id": "<hips.lists.example.org>"},
    ],
)
def test_auto_replies_are_recognised_by_their_headers(headers: dict[str, str]) -> None:
    raw = reply("Re: Lesson 1", "I am away.", "<a@x>", **headers)
    message = replies.BytesParser(policy=replies.policy.default).parsebytes(raw)
    assert replies.automatic(message) is not None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "subject", ["Out of Office: Lesson 1", "Automatic reply: Lesson 1", "Autoreply"]
)
def test_out_of_office_subjects_are_recognised(subject: str) -> None:
    message = replies.BytesParser(policy=replies.policy.default).parsebytes(
        reply(subject, "Back Monday.", "<b@x>")
    )
    assert replies.automatic(message) == "an out-of-office subject"  # type: ignore[arg-type]


def test_a_person_is_not_a_machine() -> None:
    raw = reply("Re: Lesson 4", "Does this help neck pain?", "<c@x>", Auto_Submitted="no")
    message = replies.BytesParser(policy=replies.policy.default).parsebytes(raw)
    assert replies.automatic(message) is None  # type: ignore[arg-type]
    assert replies.automatic(message, "<>") == "empty envelope sender"  # type: ignore[arg-type]


def test_the_readers_words_without_the_quoted_lesson() -> None:
    raw = reply(
        "Re: Lesson 4",
        "Does this help neck pain?\n\nOn Mon, 1 Jan 2026, Course wrote:\n> Lesson 4 ...\n",
        "<d@x>",
    )
    message = replies.BytesParser(policy=replies.policy.default).parsebytes(raw)
    assert replies.reply_text(message) == "Does this help neck pain?"  # type: ignore[arg-type]


# -- filing --------------------------------------------------------------------------------


def test_a_reply_is_filed_under_its_reader_and_lesson_once(
    settings: Settings, engine: Engine
) -> None:
    sub = factories.subscriber(settings, "sam@example.com")
    send_first_lesson(settings)
    lesson = lesson_row(engine)
    raw = reply("Re: Lesson 1", "Does this help neck pain?", "<q1@example.com>")
    kept = take(engine, raw, str(lesson.id))
    assert kept.outcome == "kept"
    assert take(engine, raw, str(lesson.id)).outcome == "duplicate"
    ooo = reply("Out of Office", "Back Monday", "<q2@example.com>", Auto_Submitted="auto-replied")
    assert take(engine, ooo, str(lesson.id)).outcome == "automatic"
    assert take(engine, raw, "999999").outcome == "unknown"
    with read_scope(engine) as session:
        rows = list(session.execute(select(Question)).scalars())
    assert len(rows) == 1
    (question,) = rows
    assert question.subscriber_id == sub.id
    assert question.outbox_id == lesson.id
    assert question.template == lesson.template
    assert question.thread_id == question.id
    assert question.status == QuestionStatus.new
    assert question.body == "Does this help neck pain?"


def test_the_author_answers_from_admin_and_it_is_sent_once(
    settings: Settings, engine: Engine, client: TestClient, recorder: Recorder
) -> None:
    factories.subscriber(settings, "sam@example.com")
    send_first_lesson(settings)
    before = len(recorder.raw)
    lesson = lesson_row(engine)
    kept = take(engine, reply("Re: Lesson 1", "Neck pain too?", "<q3@example.com>"), str(lesson.id))
    assert kept.question_id is not None

    inbox = client.get("/admin/questions")
    assert inbox.status_code == 200
    assert "sam@example.com" in inbox.text
    assert "Lesson 1: What trigger points are" in inbox.text
    page = client.get(f"/admin/questions/{kept.question_id}")
    assert page.status_code == 200
    assert "Neck pain too?" in page.text
    csrf = _csrf(page.text)
    nonce = re.search(r'name="nonce" value="([A-Za-z0-9_-]+)"', page.text)
    assert nonce

    forged = client.post(
        f"/admin/questions/{kept.question_id}/answer",
        data={"csrf": "0" * 64, "nonce": nonce[1], "text": "Yes."},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    form = {"csrf": csrf, "nonce": nonce[1], "text": "Often, yes.\n\nStart with the shoulder."}
    for expected in ("answered", "already-answered"):  # a double post sends once
        sent = client.post(
            f"/admin/questions/{kept.question_id}/answer", data=form, follow_redirects=False
        )
        assert sent.status_code == 303
        assert sent.headers["location"].endswith(expected)

    factories.tick(settings)
    factories.tick(settings)
    answers = [r for r in factories.outbox(engine) if r.kind == MessageKind.answer]
    assert [a.status for a in answers] == [OutboxStatus.sent]
    delivered = recorder.wait_for(before + 1)[before:]
    got = [m for m in delivered if str(m["Subject"]) == "Re: Lesson 1"]
    assert len(got) == 1
    assert got[0]["In-Reply-To"] == "<q3@example.com>"  # threads under the reader's reply
    assert got[0]["References"] == "<q3@example.com>"
    body = got[0].get_body(("plain",))
    assert body is not None
    assert "Start with the shoulder." in str(body.get_content())
    with read_scope(engine) as session:
        question = session.get(Question, kept.question_id)
        assert question is not None
        assert question.status == QuestionStatus.answered
    thread_page = client.get(f"/admin/questions/{kept.question_id}")
    assert "Start with the shoulder." in thread_page.text
    # The reader's own page lists the question; their data export carries it.
    with read_scope(engine) as session:
        question = session.get(Question, kept.question_id)
        assert question is not None
        sub_id = question.subscriber_id
    own = client.get(f"/admin/subscribers/{sub_id}")
    assert f'href="/admin/questions/{kept.question_id}"' in own.text
    exported = client.post(f"/admin/subscribers/{sub_id}/export", data={"csrf": csrf})
    assert exported.json()["questions"][0]["text"] == "Neck pain too?"


def test_an_answer_is_refused_in_one_line_when_it_cannot_go(
    settings: Settings, engine: Engine
) -> None:
    factories.subscriber(settings, "sam@example.com")
    send_first_lesson(settings)
    kept = take(engine, reply("Re", "Q?", "<q4@example.com>"), str(lesson_row(engine).id))
    assert kept.question_id is not None
    with session_scope(engine) as session:
        for text, nonce, why in (
            ("", "n" * 20, "empty"),
            ("Yes", "bad nonce!", "reload"),
        ):
            with pytest.raises(replies.AnswerRefused, match=why):
                replies.answer(session, kept.question_id, text, nonce, utcnow(), "example.org")


def test_erasing_a_reader_erases_their_questions_and_answers(
    settings: Settings, engine: Engine
) -> None:
    from drip.operator_actions import forget_subscriber

    sub = factories.subscriber(settings, "sam@example.com")
    send_first_lesson(settings)
    kept = take(
        engine, reply("Re", "My hip, 3 years.", "<q5@example.com>"), str(lesson_row(engine).id)
    )
    assert kept.question_id is not None
    with session_scope(engine) as session:
        replies.answer(session, kept.question_id, "Try this.", "n" * 20, utcnow(), "example.org")
    with session_scope(engine) as session:
        assert sub.id is not None
        assert forget_subscriber(session, settings, sub.id, utcnow())
    with read_scope(engine) as session:
        assert session.get(Question, kept.question_id) is None
    answers = [r for r in factories.outbox(engine) if r.kind == MessageKind.answer]
    assert answers
    assert all(r.context == {} for r in answers)


def test_questions_are_marked_read_and_filtered_by_status(
    settings: Settings, engine: Engine, client: TestClient
) -> None:
    factories.subscriber(settings, "sam@example.com")
    send_first_lesson(settings)
    kept = take(
        engine, reply("Re: 1", "Stress too?", "<q6@example.com>"), str(lesson_row(engine).id)
    )
    page = client.get(f"/admin/questions/{kept.question_id}")
    csrf = _csrf(page.text)
    assert "Re: 1" in client.get("/admin/questions?status=new").text
    assert 'aria-label="1 new"' in client.get("/admin").text  # the menu counts unread ones
    refused = client.post(
        f"/admin/questions/{kept.question_id}/mark", data={"csrf": "x", "status": "read"}
    )
    assert refused.status_code == 403
    marked = client.post(
        f"/admin/questions/{kept.question_id}/mark",
        data={"csrf": csrf, "status": "read"},
        follow_redirects=False,
    )
    assert marked.status_code == 303
    assert "Re: 1" not in client.get("/admin/questions?status=new").text
    assert 'aria-label="1 new"' not in client.get("/admin").text
    assert "Re: 1" in client.get("/admin/questions?status=read").text
    assert client.get("/admin/questions?status=bogus").status_code == 422
    assert client.get("/admin/questions/999999").status_code == 404


# -- end to end: SMTP to drip inbound, the question in /admin, the answer out once ---------


@pytest.fixture
def inbound(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, int]]:
    """`drip inbound`, the real process, on the test's database and bounce domain."""
    with_domain = settings.model_copy(update={"bounce_domain": DOMAIN})
    port = free_port()
    process = start_inbound(with_domain, port, tmp_path / "inbound.log")
    try:
        yield with_domain, port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_reply_over_smtp_reaches_admin_and_the_answer_goes_once(
    inbound: tuple[Settings, int], engine: Engine, recorder: Recorder
) -> None:
    settings, port = inbound
    lesson, _ = lesson_sent(settings, "sam@example.com")
    # The lesson as sent carries its reply address, signed for this very message.
    sent = [m for m in recorder.messages if str(m["Subject"]).startswith("Lesson 1 of")]
    assert len(sent) == 1
    address = str(sent[0]["Reply-To"])
    assert lesson.id is not None
    assert address == replies.reply_address(SECRET, DOMAIN, lesson.id, lesson.message_id)

    question = reply("Re: Lesson 1", "Does this help neck pain?", "<e2e-1@example.com>")
    away = reply(
        "Out of Office", "Back Monday.", "<e2e-2@example.com>", Auto_Submitted="auto-replied"
    )
    forged = reply("Re: Lesson 1", "Forged.", "<e2e-3@example.com>")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("sam@example.com", [address], question)
        client.sendmail("sam@example.com", [address], away)
        client.sendmail("sam@example.com", [f"reply+{lesson.id}-aaaaaaaaaaaa@{DOMAIN}"], forged)
    with read_scope(engine) as session:
        filed = list(session.execute(select(Question)).scalars())
    assert [q.body for q in filed] == ["Does this help neck pain?"]  # no out-of-office, no forgery
    assert filed[0].subscriber_id == lesson.subscriber_id
    assert filed[0].outbox_id == lesson.id

    admin = TestClient(create_app(settings), headers=_basic(USER, PASSWORD))
    inbox = admin.get("/admin/questions").text
    assert "sam@example.com" in inbox
    assert "Lesson 1: What trigger points are" in inbox
    page = admin.get(f"/admin/questions/{filed[0].thread_id}").text
    nonce = re.search(r'name="nonce" value="([A-Za-z0-9_-]+)"', page)
    assert nonce
    form = {"csrf": _csrf(page), "nonce": nonce[1], "text": "Often, yes: try the shoulder."}
    for _ in range(2):  # a double post
        admin.post(f"/admin/questions/{filed[0].thread_id}/answer", data=form)
    before = len(recorder.raw)
    factories.tick(settings)
    factories.tick(settings)
    answers = [m for m in recorder.wait_for(before + 1)[before:] if m["In-Reply-To"]]
    assert len(answers) == 1
    assert len(recorder.raw) == before + 1
    assert answers[0]["In-Reply-To"] == "<e2e-1@example.com>"
    assert str(answers[0]["Reply-To"]).startswith("reply+")  # the reader can write back
