"""`drip logs` and `drip subscribers`, run as the operator runs them, on both databases."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from drip.cli import app
from drip.clock import utcnow
from drip.db import read_scope
from drip.models import MessageKind, OutboxMessage, Subscriber, SubscriberStatus
from drip.printable import one_line, printable
from drip.sendlog import JSON_FIELDS, parse_since
from drip.settings import Settings
from tests.conftest import ROOT
from tests.factories import subscriber, tick
from tests.mailserver import Recorder
from tests.processes import command_env

runner = CliRunner()


def _env(settings: Settings) -> dict[str, str]:
    # COLUMNS: rich tables wide enough to read whole addresses.
    return command_env(settings, DRIP_SEND_RATE="0", COLUMNS="200")


@pytest.fixture
def drip(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run `drip ARGS...` in-process against the test database; no stray .env is read."""
    monkeypatch.chdir(tmp_path)
    env = _env(settings)

    def run(*args: str):  # type: ignore[no-untyped-def]
        result = runner.invoke(app, list(args), env=env)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return run


def _subscribers(engine: Engine) -> list[Subscriber]:
    with read_scope(engine) as session:
        return list(session.execute(select(Subscriber).order_by(Subscriber.id)).scalars())


def test_logs_json_matches_what_the_smtp_server_received(
    drip, settings: Settings, recorder: Recorder
) -> None:
    subscriber(settings, "ann@example.com", name="Ann")
    subscriber(settings, "bob@example.com", active=False)
    tick(settings)
    received = {
        str(m["Message-ID"]): str(m["To"]) for m in recorder.wait_for(2)
    }  # welcome to Ann, confirmation to Bob

    result = drip("logs", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(tuple(line) == JSON_FIELDS for line in lines)
    sent = [line for line in lines if line["status"] == "sent"]
    assert {line["message_id"]: line["email"] for line in sent}.keys() == received.keys()
    for line in sent:
        assert line["email"] in received[line["message_id"]]
        assert line["smtp_code"] == 250
        assert line["attempts"] == 1
        assert line["at"].endswith("Z")
    assert {line["kind"] for line in sent} == {"welcome", "confirm"}

    only_bob = drip("logs", "--json", "--email", "BOB@example.com")
    assert [json.loads(x)["template"] for x in only_bob.stdout.splitlines()] == ["confirm"]
    assert drip("logs", "--json", "--status", "bounced").stdout == ""


def test_escape_sequences_in_an_smtp_reply_never_reach_the_terminal(
    drip, settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    """A hostile server's reply (retitle the terminal, clear it, ring the bell) is stored
    and shown with its control characters spelled out, in every output of `drip logs`."""
    hostile = "550 5.1.1 \x1b]0;owned\x07\x1b[2J\x1b[31mgone\x1b[0m"
    recorder.replies.append(hostile)
    subscriber(settings, "ann@example.com", name="Ann")
    tick(settings)
    with read_scope(engine) as session:
        [row] = session.execute(select(OutboxMessage)).scalars().all()
    assert row.last_smtp_message is not None
    assert "\x1b" not in row.last_smtp_message
    assert "\\x1b]0;owned\\x07" in row.last_smtp_message
    for args in (("logs",), ("logs", "--json"), ("logs", "--status", "bounced")):
        shown = drip(*args).stdout
        assert "owned" in shown, args
        assert not any(c in shown for c in "\x1b\x07\x9b"), (args, shown)
    assert json.loads(drip("logs", "--json").stdout.splitlines()[0])["smtp_message"] == (
        row.last_smtp_message
    )


def test_printable_spells_out_controls_and_keeps_the_rest() -> None:
    assert printable("a\x1b[2Jb\x9b1m\u202ec\td\ne é") == "a\\x1b[2Jb\\x9b1m\\u202ec\td\ne é"
    assert one_line("250-first\r\n250 second\tok") == "250-first  250 second ok"


def test_logs_table_and_plain_refusals(drip, settings: Settings) -> None:
    subscriber(settings, "[bold]ann@example.com")  # markup-looking text prints as it is
    table = drip("logs")
    assert table.exit_code == 0
    assert "[bold]ann@example.com" in table.stdout
    assert "queued" in table.stdout
    assert "welcome" in table.stdout
    bad = drip("logs", "--status", "lost")
    assert bad.exit_code == 2
    assert "status must be one of" in bad.output
    late = drip("logs", "--since", "yesterday-ish")
    assert late.exit_code == 2
    assert "--since" in late.output
    assert drip("logs", "--since", "1h", "--json").stdout.count("\n") == 1
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert drip("logs", "--since", future, "--json").stdout == ""


def test_piped_or_narrow_output_keeps_each_row_whole_on_one_line(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    address = "a-rather-long-address-for-a-narrow-terminal@mail.subdomain.example.com"
    # An imported name may hold anything: its control characters are spelled out here too.
    subscriber(settings, address, name="Ann\x1b[2J")

    def run(*args: str, **env: str) -> list[str]:
        result = runner.invoke(app, list(args), env=_env(settings) | env)
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()

    for env in ({"COLUMNS": "80"}, {"COLUMNS": "200"}, {"COLUMNS": "100", "TTY_COMPATIBLE": "1"}):
        [line] = [x for x in run("logs", **env) if address in x]  # `drip logs | grep ADDRESS`
        assert "queued" in line
        assert "welcome" in line
        [line] = [x for x in run("subscribers", "list", **env) if address in x]
        assert "active" in line
        assert "Ann\\x1b[2J" in line
        assert "\x1b" not in line
    table = run("logs", COLUMNS="160", TTY_COMPATIBLE="1")  # a wide terminal: a table
    assert any("┃" in x and "email" in x for x in table)


def test_since_accepts_iso_and_spans() -> None:
    now = utcnow()
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2024-05-01T10:00:00", now).isoformat() == "2024-05-01T10:00:00+00:00"
    with pytest.raises(ValueError):
        parse_since("2 fortnights", now)


def test_import_reports_bad_lines_imports_the_rest_and_never_duplicates(
    drip, engine: Engine, tmp_path: Path
) -> None:
    people = tmp_path / "people.csv"
    people.write_text(
        "Email,Name,Timezone\n"  # header names in any case
        "ann@example.com,Ann,Europe/Paris\n"
        "not-an-address,Nobody,\n"
        "eve@example.com,<script>alert(1)</script>,\n"
        "tz@example.com,Tim,Mars/Olympus\n"
        "ANN@example.com,Ann again,\n"
        '"cat@example.com","Cat ""the"" Cat",\n'
        "\n"
        "dan@example.com\n"
        'mallory@example.com,"Mal\nBcc: all@example.com",\n',  # a line break in a name
        encoding="utf-8",
    )
    first = drip("subscribers", "import", str(people))
    assert first.exit_code == 1  # some rows were refused; the others are in
    for line in (3, 4, 5, 10):  # a record spanning lines is named by its first
        assert f"line {line}: refused" in first.stderr
    assert "line 6: skipped: ANN@example.com" in first.stderr
    assert "imported 3" in first.stdout
    assert "refused 4" in first.stdout

    subs = _subscribers(engine)
    assert [(s.email, s.name, s.timezone) for s in subs] == [
        ("ann@example.com", "Ann", "Europe/Paris"),
        ("cat@example.com", 'Cat "the" Cat', "UTC"),
        ("dan@example.com", "", "UTC"),
    ]
    assert all(s.status == SubscriberStatus.active for s in subs)
    assert all(s.consent_source == "import:people.csv" and s.consent_at for s in subs)
    with read_scope(engine) as session:
        kinds = session.execute(select(OutboxMessage.kind)).scalars().all()
    assert sorted(kinds) == [MessageKind.welcome] * 3

    again = drip("subscribers", "import", str(people))
    assert "imported 0" in again.stdout
    assert "skipped 4" in again.stdout
    assert len(_subscribers(engine)) == 3


def test_import_with_confirm_or_without_the_course(drip, engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("email\nask@example.com\n")
    (tmp_path / "b.csv").write_text("email\nquiet@example.com\n")
    assert drip("subscribers", "import", "--confirm", "a.csv").exit_code == 0
    assert drip("subscribers", "import", "--no-course", "b.csv").exit_code == 0
    with read_scope(engine) as session:
        rows = session.execute(
            select(Subscriber.email, Subscriber.status, OutboxMessage.kind).outerjoin(
                OutboxMessage, OutboxMessage.subscriber_id == Subscriber.id
            )
        ).all()
    assert sorted(rows) == [
        ("ask@example.com", SubscriberStatus.pending, MessageKind.confirm),
        ("quiet@example.com", SubscriberStatus.active, None),
    ]


def test_import_refuses_a_file_without_an_email_column(drip, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("name\nAnn\n")
    result = drip("subscribers", "import", "x.csv")
    assert result.exit_code == 2
    assert "`email` column" in result.stderr
    (tmp_path / "latin.csv").write_bytes("email,name\nz@example.com,Zo\xeb\n".encode("latin-1"))
    result = drip("subscribers", "import", "latin.csv")
    assert result.exit_code == 2
    assert "UTF-8" in result.stderr


def test_export_round_trips_through_import(
    drip, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    subscriber(settings, "ann@example.com", name="Ann, of Paris", newsletter=True)
    subscriber(settings, "bob@example.com", name='Bob "Bobby" Jones', active=False)
    assert drip("subscribers", "export", "--out", "all.csv").exit_code == 0
    text = (tmp_path / "all.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == (
        "email,name,status,timezone,created_at,consent_at,consent_source,"
        "newsletter,newsletter_at,source"
    )
    stdout = drip("subscribers", "export").stdout
    assert stdout.replace("\r\n", "\n") == text.replace("\r\n", "\n")

    other = f"sqlite:///{tmp_path / 'other.db'}"
    env = _env(settings) | {"DRIP_DATABASE_URL": other}
    result = runner.invoke(app, ["subscribers", "import", "all.csv"], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["subscribers", "export"], env=env)
    rows = [line.split(",")[:2] for line in result.stdout.splitlines()]
    original = [line.split(",")[:2] for line in text.splitlines()]
    assert rows == original
    listed = runner.invoke(app, ["subscribers", "list", "--json"], env=env).stdout
    assert {(o["email"], o["newsletter"]) for o in map(json.loads, listed.splitlines())} == {
        ("ann@example.com", True),
        ("bob@example.com", False),
    }


def test_import_takes_the_newsletter_column(drip, engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(
        "email,name,newsletter\n"
        "ann@example.com,Ann,yes\n"
        "bob@example.com,Bob,no\n"
        "cy@example.com,Cy,\n"
        "dee@example.com,Dee,perhaps\n"
    )
    result = drip("subscribers", "import", "people.csv", "--no-course")
    assert result.exit_code == 1
    assert "line 5: refused: newsletter: 'perhaps' is not yes or no" in result.stderr
    lines = drip("subscribers", "list", "--json").stdout.splitlines()
    listed = {o["email"]: o for o in map(json.loads, lines)}
    assert {e: (o["status"], o["newsletter"]) for e, o in listed.items()} == {
        "ann@example.com": ("active", True),
        "bob@example.com": ("active", False),
        "cy@example.com": ("active", False),
    }
    assert listed["ann@example.com"]["newsletter_source"] == "import:people.csv"
    assert listed["ann@example.com"]["newsletter_at"] is not None


def test_subscribers_list(drip, settings: Settings) -> None:
    subscriber(settings, "ann@example.com", name="Ann")
    subscriber(settings, "bob@example.com", active=False)
    everyone = drip("subscribers", "list")
    assert everyone.stdout.index("bob@example.com") < everyone.stdout.index("ann@example.com")
    pending = drip("subscribers", "list", "--status", "pending")
    assert "bob@example.com" in pending.stdout
    assert "ann@" not in pending.stdout
    assert "ann@example.com" in drip("subscribers", "list", "--email", "AN").stdout


@pytest.mark.process
def test_follow_streams_new_entries_until_ctrl_c(settings: Settings, tmp_path: Path) -> None:
    subscriber(settings, "old@example.com")
    env = os.environ | _env(settings) | {"PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", "from drip.cli import main; main()", "logs", "--json", "-f"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True).start()
    try:
        first = json.loads(lines.get(timeout=20))
        assert first["email"] == "old@example.com"
        assert first["status"] == "queued"
        subscriber(settings, "new@example.com")
        later = json.loads(lines.get(timeout=10))
        assert later["email"] == "new@example.com"
        assert later["status"] == "queued"
        tick(settings)
        sent = {json.loads(lines.get(timeout=10))["email"] for _ in range(2)}
        assert sent == {"old@example.com", "new@example.com"}
        assert lines.empty()
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
