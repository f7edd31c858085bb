"""The web routes over HTTP, on both databases: every answer a visitor can get."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from drip.clock import utcnow
from drip.db import session_scope
from drip.models import MessageKind, OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from drip.settings import Settings
from drip.subscribers import confirm_salt
from drip.tokens import make_token
from drip.web.app import create_app
from tests.factories import subscriber

FORM = {
    "email": "ann@example.com",
    "name": "Ann",
    "consent": "yes",
    "website": "",
    "timezone": "UTC",
}


@pytest.fixture
def client(settings: Settings) -> TestClient:
    allowed = settings.model_copy(update={"cors_origins": "https://partner.example"})
    return TestClient(create_app(allowed), follow_redirects=False)


@pytest.fixture
def fuzz_client(settings: Settings) -> TestClient:
    unlimited = settings.model_copy(
        update={"signups_per_ip_per_minute": 10**6, "signups_per_address_per_hour": 10**6}
    )
    return TestClient(create_app(unlimited), follow_redirects=False)


def _rows(engine: Engine) -> list[OutboxMessage]:
    with session_scope(engine) as session:
        return list(session.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars())


def _token(settings: Settings, engine: Engine, purpose: str, email: str = "ann@example.com") -> str:
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber).where(Subscriber.email_key == email)).scalar_one()
    salt = confirm_salt(sub) if purpose == "confirm" else sub.token_salt
    return make_token(settings.require_secret(), salt, purpose)  # type: ignore[arg-type]


def test_a_non_ascii_mailbox_name_gets_the_form_back_with_the_reason(
    client: TestClient, engine: Engine
) -> None:
    page = client.post("/subscribe", data={**FORM, "email": "jörg@example.com"})
    assert page.status_code == 422
    assert "before the @" in page.text
    assert "jörg@example.com" in page.text
    as_json = client.post("/subscribe", json={**FORM, "email": "jörg@example.com"})
    assert as_json.status_code == 422
    assert "before the @" in as_json.json()["errors"]["email"]
    assert _rows(engine) == []


def test_the_form_page(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    for needle in (
        'name="email"',
        'name="name"',
        'name="consent"',
        'name="website"',
        'href="/privacy"',
    ):
        assert needle in page.text
    assert "http" not in page.text.split("<main")[0].replace('href="data:,"', "")  # no CDN
    assert client.get("/privacy").status_code == 200
    assert client.get("/static/site.css").status_code == 200


def test_every_response_carries_security_headers(client: TestClient) -> None:
    responses = [
        client.get(path) for path in ("/", "/thanks", "/healthz", "/confirm/x", "/static/site.css")
    ]
    responses += [
        client.post("/subscribe", data={"email": "nope"}),
        client.post("/unsubscribe/forged"),
        client.options(
            "/subscribe",
            headers={
                "origin": "https://partner.example",
                "access-control-request-method": "POST",
            },
        ),
    ]
    for response in responses:
        headers = response.headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"


def test_a_valid_signup_queues_a_confirmation_and_redirects(
    client: TestClient, engine: Engine
) -> None:
    response = client.post("/subscribe", data=FORM)
    assert response.status_code == 303
    assert response.headers["location"] == "/thanks"
    assert [r.kind for r in _rows(engine)] == [MessageKind.confirm]
    assert client.post("/subscribe", data=FORM).status_code == 303
    assert len(_rows(engine)) == 1  # the first is still on its way: it answers for both
    assert "Check your inbox" in client.get("/thanks").text


def test_no_enumeration_new_pending_and_active_look_the_same(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    subscriber(settings, "active@example.com")
    subscriber(settings, "pending@example.com", active=False)
    answers = {
        (r.status_code, r.headers.get("location"), r.content)
        for email in ("new@example.com", "pending@example.com", "active@example.com")
        for r in [client.post("/subscribe", data={**FORM, "email": email})]
    }
    assert answers == {(303, "/thanks", b"")}
    sent = {(r.email, r.kind) for r in _rows(engine)}
    # New: a confirmation. Pending: the one still on its way, not a second one.
    # Active: a confirmation too (its link applies what the signup asked for).
    assert sorted(sent) == [
        ("active@example.com", MessageKind.confirm),
        ("active@example.com", MessageKind.welcome),
        ("new@example.com", MessageKind.confirm),
        ("pending@example.com", MessageKind.confirm),
    ]
    assert len(_rows(engine)) == 4


def test_invalid_input_comes_back_with_messages_and_what_was_typed(
    client: TestClient, engine: Engine
) -> None:
    response = client.post(
        "/subscribe", data={"email": "nope", "name": "<b>Ann</b>", "website": ""}
    )
    assert response.status_code == 422
    text = response.text
    assert 'aria-invalid="true"' in text
    assert 'id="email-error"' in text
    assert 'value="nope"' in text
    assert "&lt;b&gt;Ann&lt;/b&gt;" in text
    assert "<b>Ann" not in text
    assert "tick the box" in text
    assert _rows(engine) == []


def test_the_honeypot_gets_the_same_answer_and_stores_nothing(
    client: TestClient, engine: Engine
) -> None:
    response = client.post("/subscribe", data={**FORM, "website": "http://spam.example"})
    assert response.status_code == 303
    assert _rows(engine) == []


def test_json_signup_and_cors(client: TestClient, engine: Engine) -> None:
    ok = client.post("/subscribe", json={"email": "j@example.com", "consent": True})
    assert ok.status_code == 202
    assert ok.json()["status"] == "ok"
    assert ok.json()["message"].startswith("We've sent you an email")
    bad = client.post("/subscribe", json={"email": "x", "consent": False})
    assert bad.status_code == 422
    assert set(bad.json()["errors"]) == {"email", "consent"}
    assert (
        client.post(
            "/subscribe", content=b"[1,", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    allowed = client.options(
        "/subscribe", headers={**preflight, "origin": "https://partner.example"}
    )
    assert allowed.headers.get("access-control-allow-origin") == "https://partner.example"
    refused = client.options("/subscribe", headers={**preflight, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in refused.headers
    assert len(_rows(engine)) == 1


def test_oversized_bodies_are_refused(client: TestClient, engine: Engine) -> None:
    big = client.post("/subscribe", data={**FORM, "name": "A" * 10_000})
    assert big.status_code == 413
    assert _rows(engine) == []


def test_signups_are_rate_limited(client: TestClient) -> None:
    codes = [
        client.post("/subscribe", data={**FORM, "email": f"r{n}@example.com"}).status_code
        for n in range(12)
    ]
    assert codes[:10] == [303] * 10
    assert codes[10:] == [429, 429]


def test_one_address_is_rate_limited(settings: Settings) -> None:
    client = TestClient(create_app(settings), follow_redirects=False)
    codes = [client.post("/subscribe", data=FORM).status_code for _ in range(4)]
    assert codes == [303, 303, 303, 429]
    page = client.post("/subscribe", data=FORM)
    assert "We've already sent you a link" in page.text
    # Three an hour per address: the next fits in 20 minutes, and the page says so and why.
    assert "This address has been signed up 3 times in the last hour" in page.text
    assert "haven't sent another confirmation email" in page.text
    assert "try again in 20 minutes" in page.text
    assert "few minutes" not in page.text
    assert 1100 < int(page.headers["retry-after"]) <= 1200
    answer = client.post("/subscribe", json={**FORM, "consent": True})
    assert answer.status_code == 429
    assert "last hour" in answer.json()["errors"]["email"]
    assert "retry-after" in answer.headers


def test_confirmation_activates_once_and_queues_the_welcome(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    client.post("/subscribe", data=FORM)
    token = _token(settings, engine, "confirm")
    first = client.post(f"/confirm/{token}")
    assert first.status_code == 200
    assert "information pack is on its way" in first.text
    again = client.post(f"/confirm/{token}")
    assert again.status_code == 200
    assert "Already confirmed" in again.text
    assert "Already confirmed" in client.get(f"/confirm/{token}").text
    assert [r.kind for r in _rows(engine)] == [MessageKind.confirm, MessageKind.welcome]
    for method in ("GET", "POST"):
        assert client.request(method, f"/confirm/{token[:-2]}xx").status_code == 404
        assert client.request(method, "/confirm/" + "A" * 5000).status_code == 404


def _subscriber(engine: Engine, email: str = "ann@example.com") -> Subscriber:
    with session_scope(engine) as session:
        return session.execute(select(Subscriber).where(Subscriber.email_key == email)).scalar_one()


def test_a_get_on_a_confirmation_link_changes_nothing(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    """Mail scanners fetch every link in a message: a GET confirmed, and recorded the
    scanner's address as the reader's consent. Now it shows one button, nothing more."""
    client.post("/subscribe", data=FORM)
    token = _token(settings, engine, "confirm")
    for _ in range(3):
        page = client.get(f"/confirm/{token}")
        assert page.status_code == 200
        assert page.text.count("<button") == 1
        assert f'<form method="post" action="/confirm/{token}">' in page.text
    sub = _subscriber(engine)
    assert sub.status == SubscriberStatus.pending
    assert sub.consent_ip is None
    assert [r.kind for r in _rows(engine)] == [MessageKind.confirm]
    assert client.head(f"/confirm/{token}").status_code in (200, 405)
    assert _subscriber(engine).status == SubscriberStatus.pending


def test_the_post_that_confirms_records_its_own_address(settings: Settings, engine: Engine) -> None:
    app = create_app(settings)
    TestClient(app, client=("192.0.2.50", 1000)).post("/subscribe", data=FORM)
    token = _token(settings, engine, "confirm")
    TestClient(app, client=("203.0.113.66", 1000)).get(f"/confirm/{token}")  # a scanner
    reader = TestClient(app, client=("2001:db8::7", 1000))
    assert reader.post(f"/confirm/{token}").status_code == 200
    sub = _subscriber(engine)
    assert sub.status == SubscriberStatus.active
    assert sub.consent_ip == "2001:db8::7"


def test_a_confirmation_posted_from_another_site_is_refused(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    client.post("/subscribe", data=FORM)
    url = f"/confirm/{_token(settings, engine, 'confirm')}"
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://blog.example"},
    ):
        refused = client.post(url, headers=headers)
        assert refused.status_code == 403, headers
    assert _subscriber(engine).status == SubscriberStatus.pending
    # Chromium's own form, under Referrer-Policy: no-referrer, says Origin: null.
    own = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert client.post(url, headers=own).status_code == 200
    assert _subscriber(engine).status == SubscriberStatus.active


def test_after_leaving_the_old_confirmation_link_never_works_again(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    """Unsubscribe, sign up again: a new confirmation with a new link; the old one (in
    the first email, or a scanner's cache) is dead, while the unsubscribe link stays."""
    client.post("/subscribe", data=FORM)
    old = _token(settings, engine, "confirm")
    leave = _token(settings, engine, "unsubscribe")
    assert client.post(f"/confirm/{old}").status_code == 200
    assert client.post(f"/unsubscribe/{leave}").status_code == 200
    assert client.get(f"/confirm/{old}").status_code == 404
    assert client.post("/subscribe", data=FORM).status_code == 303
    assert _subscriber(engine).status == SubscriberStatus.pending
    for method in ("GET", "POST"):
        assert client.request(method, f"/confirm/{old}").status_code == 404
    assert _subscriber(engine).status == SubscriberStatus.pending
    new = _token(settings, engine, "confirm")
    assert new != old
    assert client.post(f"/confirm/{new}").status_code == 200
    assert _subscriber(engine).status == SubscriberStatus.active
    assert client.get(f"/unsubscribe/{leave}").status_code == 200


def test_an_expired_confirmation_says_so(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    client.post("/subscribe", data=FORM)
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        sub.confirm_sent_at = utcnow() - timedelta(hours=settings.confirm_ttl_hours + 1)
    response = client.get(f"/confirm/{_token(settings, engine, 'confirm')}")
    assert response.status_code == 410
    assert "expired" in response.text


def test_one_click_unsubscribe(client: TestClient, settings: Settings, engine: Engine) -> None:
    subscriber(settings, "ann@example.com")
    token = _token(settings, engine, "unsubscribe")
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200
    assert f'action="/unsubscribe/{token}"' in page.text
    response = client.post(
        f"/unsubscribe/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "unsubscribed" in response.text
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        assert sub.status == SubscriberStatus.unsubscribed
    assert [r.status for r in _rows(engine)] == [OutboxStatus.skipped]
    assert client.post(f"/unsubscribe/{token}").status_code == 200
    # A second visit says it is done instead of asking again.
    again = client.get(f"/unsubscribe/{token}")
    assert again.status_code == 200
    assert "You're unsubscribed" in again.text
    assert "<form" not in again.text
    assert "<button" not in again.text
    assert client.post("/unsubscribe/forged").status_code == 404
    assert client.get("/unsubscribe/forged").status_code == 404


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_an_unreachable_database(settings: Settings) -> None:
    broken = settings.model_copy(
        update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"}
    )
    response = TestClient(create_app(broken)).get("/healthz")
    assert response.status_code == 503


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    email=st.text(max_size=300),
    name=st.text(max_size=300),
    timezone=st.text(max_size=80),
    consent=st.sampled_from(["yes", "", "no", "on"]),
)
def test_any_input_gets_a_clear_answer(
    fuzz_client: TestClient, email: str, name: str, timezone: str, consent: str
) -> None:
    client = fuzz_client
    fields = {"email": email, "name": name, "timezone": timezone, "consent": consent, "website": ""}
    response = client.post("/subscribe", data=fields)
    assert response.status_code in (303, 413, 422)
    if response.status_code == 422:
        assert "<script" not in response.text.split("</main>")[0].split("<main")[1].lower()
    as_json = client.post("/subscribe", json=fields)
    assert as_json.status_code in (202, 413, 422)


@pytest.mark.parametrize(
    "name", ["Ann\r\nBcc: victim@example.com", "Ann\nX", "Ann\x00", "<img src=x>", "A" * 101]
)
def test_names_that_could_inject_are_refused(client: TestClient, engine: Engine, name: str) -> None:
    form = client.post("/subscribe", data={**FORM, "name": name})
    assert form.status_code == 422
    assert 'id="name-error"' in form.text
    assert "<img" not in form.text
    as_json = client.post("/subscribe", json={**FORM, "consent": True, "name": name})
    assert as_json.status_code == 422
    assert set(as_json.json()["errors"]) == {"name"}
    assert _rows(engine) == []


def test_the_honeypot_over_json_is_accepted_and_stores_nothing(
    client: TestClient, engine: Engine
) -> None:
    response = client.post("/subscribe", json={**FORM, "consent": True, "website": "x"})
    assert response.status_code == 202
    assert response.json()["status"] == "ok"
    assert _rows(engine) == []


def test_an_unknown_time_zone_becomes_the_default(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    client.post("/subscribe", data={**FORM, "timezone": "Mars/Olympus"})
    client.post("/subscribe", data={**FORM, "email": "b@example.com", "timezone": "Asia/Tokyo"})
    with session_scope(engine) as session:
        zones = {e: z for e, z in session.execute(select(Subscriber.email, Subscriber.timezone))}
    assert zones == {
        "ann@example.com": settings.default_timezone,
        "b@example.com": "Asia/Tokyo",
    }


def test_every_post_counts_towards_the_ip_limit_and_json_gets_json(client: TestClient) -> None:
    codes = [client.post("/subscribe", data={"email": "nope"}).status_code for _ in range(10)]
    assert codes == [422] * 10
    limited = client.post("/subscribe", json={**FORM, "consent": True})
    assert limited.status_code == 429
    assert "try again in a minute" in limited.json()["errors"]["form"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_oversized_bodies_without_a_length_and_as_json(client: TestClient, engine: Engine) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"name=" + b"A" * 1000 + b"&"

    streamed = client.post(
        "/subscribe",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert streamed.status_code == 413
    assert "too large" in streamed.text
    assert streamed.headers["content-type"].startswith("text/plain")
    assert "default-src 'self'" in streamed.headers["content-security-policy"]
    as_json = client.post("/subscribe", json={**FORM, "name": "A" * 9000})
    assert as_json.status_code == 413
    assert as_json.json() == {"error": "The request is too large."}
    assert _rows(engine) == []


def test_signing_up_again_after_the_link_expired_sends_a_fresh_one(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    client.post("/subscribe", data=FORM)
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        sub.confirm_sent_at = utcnow() - timedelta(hours=settings.confirm_ttl_hours + 1)
        session.add(sub)
        # The old confirmation went out then.
        for row in session.execute(select(OutboxMessage)).scalars():
            row.status = OutboxStatus.sent
            session.add(row)
    token = _token(settings, engine, "confirm")
    assert client.get(f"/confirm/{token}").status_code == 410
    assert client.post("/subscribe", data=FORM).status_code == 303
    assert [r.kind for r in _rows(engine)] == [MessageKind.confirm, MessageKind.confirm]
    assert "information pack is on its way" in client.post(f"/confirm/{token}").text


def test_unsubscribing_before_confirming_kills_the_link(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    client.post("/subscribe", data=FORM)
    leave = _token(settings, engine, "unsubscribe")
    assert client.post(f"/unsubscribe/{leave}").status_code == 200
    assert [r.status for r in _rows(engine)] == [OutboxStatus.skipped]
    assert client.get(f"/confirm/{_token(settings, engine, 'confirm')}").status_code == 404


def test_unknown_urls_get_the_styled_page_and_json_clients_json(client: TestClient) -> None:
    for path in ("/nothing-here", "/static/nothing.css", "/confirm"):
        page = client.get(path)
        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html")
        assert "We couldn't find that page" in page.text
        assert 'href="/static/site.css"' in page.text
    api = client.get("/nothing-here", headers={"accept": "application/json"})
    assert api.status_code == 404
    assert api.json() == {"detail": "Not Found"}
    assert client.get("/nothing-here", headers={"accept": "text/html,*/*"}).text.startswith(
        "<!doctype html>"
    )


def test_a_compressed_course_says_minutes_not_tomorrow_morning(
    settings: Settings, engine: Engine
) -> None:
    fast = TestClient(create_app(settings.model_copy(update={"minutes_per_day": 2.0})))
    form = fast.get("/").text
    assert "over about 40 minutes" in form  # 20 course days
    assert "week" not in form
    fast.post("/subscribe", data=FORM)
    confirmed = fast.post(f"/confirm/{_token(settings, engine, 'confirm')}").text
    assert "Your first lesson follows in about 2 minutes." in confirmed
    assert "tomorrow" not in confirmed
    normal = TestClient(create_app(settings)).get("/").text
    assert "over about 3 weeks" in normal


def test_the_course_pictures_are_served_as_png(client: TestClient) -> None:
    answer = client.get("/pictures/gluteus-minimus.png")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert "max-age" in answer.headers["cache-control"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    for missing in ("/pictures/nothing.png", "/pictures/..%2fapp.png"):
        assert client.get(missing).status_code == 404


def test_the_form_and_the_privacy_note_say_the_same_true_thing(client: TestClient) -> None:
    form = client.get("/?source=sidebar").text
    assert "nothing else is sent" not in form
    assert "and nothing more" not in form
    newsletter = re.search(r'<input id="newsletter"[^>]*>', form)
    assert newsletter is not None
    assert "checked" not in newsletter.group(0)  # unticked
    assert '<input type="hidden" name="source" value="sidebar">' in form
    assert "Also send me the occasional newsletter" in form
    privacy = client.get("/privacy").text
    # Everything the form says is kept, the privacy note lists.
    for kept in ("email address", "first name", "time zone", "what you agreed to", "log"):
        assert kept in form.lower(), kept
    for kept in ("email address", "first name", "time zone", "what you agreed to", "a log"):
        assert kept in privacy.lower(), kept
    assert "newsletter if you ticked" in privacy
    assert "which page you signed up on" in privacy


def test_the_newsletter_box_and_the_source_are_stored(client: TestClient, engine: Engine) -> None:
    client.post("/subscribe", data={**FORM, "newsletter": "yes", "source": "sidebar"})
    client.post(
        "/subscribe",
        data={**FORM, "email": "bo@example.com"},
        headers={"referer": "https://blog.example/posts/knees?x=1"},
    )
    with session_scope(engine) as session:
        ann, bo = session.execute(select(Subscriber).order_by(Subscriber.id)).scalars()
    assert (ann.newsletter, ann.source, ann.newsletter_source) == (True, "sidebar", "sidebar")
    assert ann.newsletter_at is not None
    assert (bo.newsletter, bo.source, bo.newsletter_at) == (False, "/posts/knees", None)


def test_a_repeat_signup_confirmed_says_its_choices_are_saved(
    settings: Settings, client: TestClient, engine: Engine
) -> None:
    client.post("/subscribe", data=FORM)
    assert "You're in!" in client.post(f"/confirm/{_token(settings, engine, 'confirm')}").text
    client.post("/subscribe", data={**FORM, "newsletter": "yes"})
    page = client.post(f"/confirm/{_token(settings, engine, 'confirm')}")
    assert page.status_code == 200
    assert "Your choices are saved" in page.text
    assert "You're in!" not in page.text
    with session_scope(engine) as session:
        ann = session.execute(select(Subscriber)).scalar_one()
    assert ann.newsletter is True
