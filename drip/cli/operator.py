"""Operator commands: `drip logs` and `drip subscribers list / import / export /
pause / resume / skip / restart`.

Thin over drip.sendlog, drip.subscriber_view, drip.subscriber_csv and drip.steering, so
the CLI and
/admin answer the same questions the same way. drip/cli/__init__.py mounts `logs` and
`subscribers_app`; drip.cli.output says how they report problems.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine

from drip import steering
from drip.cli.output import PROBLEMS, console, err, fail, print_lines, wide
from drip.clock import utcnow
from drip.course import load_course
from drip.db import ensure_schema, get_engine, read_scope, session_scope
from drip.keycheck import adopt_key
from drip.models import Subscriber
from drip.printable import one_line, printable
from drip.sendlog import (
    KINDS,
    LOG_STATUSES,
    LogEntry,
    LogFilter,
    entries,
    follow,
    follow_start,
    iso,
    parse_since,
)
from drip.settings import Settings, load_settings
from drip.subscriber_csv import (
    ImportFileError,
    count_records,
    count_subscribers,
    export_subscribers,
    import_subscribers,
)
from drip.subscriber_view import SubscriberFilter, list_subscribers

subscribers_app = typer.Typer(
    help="List, import and export subscribers; pause, resume, skip or restart one's course.",
    no_args_is_help=True,
)

#: Skipped (already present) addresses listed one by one; beyond this only counted.
SKIPPED_SHOWN = 20
STATUS_STYLE = {
    "sent": "green",
    "queued": "cyan",
    "deferred": "yellow",
    "failed": "red",
    "bounced": "red",
    "skipped": "dim",
}


def _engine(settings: Settings) -> Engine:
    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    return engine


# -- drip logs -------------------------------------------------------------------------


#: What json.dumps leaves raw that a terminal may still act on: C1 controls, bidi overrides.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _smtp(entry: LogEntry) -> str:
    parts = [str(entry.smtp_code) if entry.smtp_code else "", entry.smtp_message or ""]
    return printable(" ".join(p for p in parts if p))


def _template(entry: LogEntry) -> str:
    """The template and, once rendered, the version of it that went: `lesson-2@1a2b3c4d5e6f`."""
    shown = f"{entry.template}@{entry.version}" if entry.version else entry.template
    return printable(shown)


def _table(rows: list[LogEntry]) -> Table:
    table = Table(show_lines=False, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    for name in ("email", "kind", "template", "status", "tries", "SMTP"):
        table.add_column(name, overflow="fold", no_wrap=name in ("kind", "status", "tries"))
    for e in rows:
        table.add_row(
            Text(e.at.strftime("%Y-%m-%d %H:%M:%S")),
            Text(printable(e.email)),
            Text(e.kind),
            Text(_template(e)),
            Text(e.status, style=STATUS_STYLE.get(e.status, "")),
            Text(str(e.attempts)),
            Text(_smtp(e)),
        )
    return table


def _cells(e: LogEntry) -> list[str]:
    return [iso(e.at), e.status, e.kind, _template(e), e.email, f"#{e.attempts}", _smtp(e)]


def _line(e: LogEntry) -> Text:
    """One entry on one line, for --follow: a table cannot grow downwards."""
    return Text.assemble(
        (iso(e.at), "dim"),
        "  ",
        (f"{e.status:<8}", STATUS_STYLE.get(e.status, "")),
        one_line(
            f"  {e.kind:<10}  {_template(e):<14}  {e.email}  #{e.attempts}  {_smtp(e)}"
        ).rstrip(),
    )


def _emit(rows: list[LogEntry], json_output: bool, streaming: bool) -> None:
    if json_output:
        for e in rows:
            # JSON escapes C0 controls itself; the C1 range and bidi overrides are escaped too.
            line = json.dumps(e.as_json(), ensure_ascii=False)
            sys.stdout.write(_UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", line) + "\n")
        sys.stdout.flush()
    elif streaming:
        for e in rows:
            console().print(_line(e), soft_wrap=True)
    elif rows:
        out = console()
        if wide(out):
            out.print(_table(rows))
        else:
            print_lines(out, [_cells(e) for e in rows])
    else:
        err().print("no log entries match")


def show_logs(
    settings: Settings,
    wanted: LogFilter,
    *,
    json_output: bool = False,
    follow_log: bool = False,
    interval: float = 1.0,
    polls: int | None = None,
) -> None:
    """Print the log; with `follow_log`, keep printing new entries every `interval` s.

    Following prints oldest first, as `tail -f` does, so new lines land at the bottom.
    `polls` bounds the loop for tests; the command runs until Ctrl-C.
    """
    engine = _engine(settings)
    with read_scope(engine) as session:
        rows = entries(session, wanted)
        state = follow_start(session, rows) if follow_log else None
    if state is None:
        _emit(rows, json_output, streaming=False)
        return
    _emit(list(reversed(rows)), json_output, streaming=True)
    done = 0
    try:
        while polls is None or done < polls:
            time.sleep(interval)
            with read_scope(engine) as session:
                _emit(follow(session, wanted, state), json_output, streaming=True)
            done += 1
    except KeyboardInterrupt:
        pass


def logs(
    email: Annotated[str | None, typer.Option(help="only this address")] = None,
    kind: Annotated[str | None, typer.Option(help=f"one of: {', '.join(KINDS)}")] = None,
    status: Annotated[str | None, typer.Option(help=f"one of: {', '.join(LOG_STATUSES)}")] = None,
    since: Annotated[
        str | None, typer.Option(help="ISO-8601 time (UTC if no offset), or 30m, 2h, 7d")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="most entries shown")] = 50,
    json_output: Annotated[
        bool, typer.Option("--json", help="one JSON object a line, the contract's fields")
    ] = False,
    follow_log: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new entries until Ctrl-C")
    ] = False,
) -> None:
    """The send log, newest first: every attempt, skip and queued message."""
    try:
        when = parse_since(since, utcnow()) if since else None
    except ValueError:
        raise typer.BadParameter(
            f"not an ISO-8601 time or span: {since!r}", param_hint="--since"
        ) from None
    try:
        wanted = LogFilter(email=email, kind=kind, status=status, since=when, limit=limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    show_logs(load_settings(), wanted, json_output=json_output, follow_log=follow_log)


# -- drip subscribers list --------------------------------------------------------------


@subscribers_app.command("list")
def list_command(
    status: Annotated[
        str | None, typer.Option(help="pending, active, unsubscribed, bounced or complained")
    ] = None,
    email: Annotated[str | None, typer.Option(help="addresses starting with this")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    json_output: Annotated[
        bool, typer.Option("--json", help="one JSON object a line: email, status, newsletter...")
    ] = False,
) -> None:
    """Subscribers, newest first."""
    try:
        wanted = SubscriberFilter(status=status, email_prefix=email, limit=limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    engine = _engine(load_settings())
    with read_scope(engine) as session:
        rows = list_subscribers(session, wanted)
    if json_output:
        for s in rows:
            sys.stdout.write(json.dumps(subscriber_json(s), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    if not rows:
        err().print("no subscribers match")
        return
    out = console()
    if not wide(out):
        since = "%Y-%m-%dT%H:%MZ"
        print_lines(
            out,
            [
                [str(s.id), s.email, str(s.status), s.timezone, s.created_at.strftime(since)]
                + [s.consent_source, s.name]
                for s in rows
            ],
        )
        return
    table = Table(pad_edge=False)
    for name in ("id", "email", "name", "status", "news", "time zone", "since (UTC)", "source"):
        table.add_column(name, overflow="fold", no_wrap=name in ("id", "status", "since (UTC)"))
    for s in rows:
        table.add_row(
            Text(str(s.id)),
            Text(printable(s.email)),
            Text(printable(s.name)),
            Text(str(s.status)),
            Text("yes" if s.newsletter else "no"),
            Text(s.timezone),
            Text(s.created_at.strftime("%Y-%m-%d %H:%M")),
            Text(s.consent_source),
        )
    out.print(table)


def subscriber_json(s: Subscriber) -> dict[str, object]:
    """One subscriber as `list --json` prints it (the contract's email, status, newsletter)."""
    return {
        "email": s.email,
        "status": str(s.status),
        "newsletter": s.newsletter,
        "name": s.name,
        "timezone": s.timezone,
        "created_at": iso(s.created_at),
        "confirmed_at": iso(s.confirmed_at) if s.confirmed_at else None,
        "consent_source": s.consent_source,
        "newsletter_at": iso(s.newsletter_at) if s.newsletter_at else None,
        "newsletter_source": s.newsletter_source,
        "source": s.source,
    }


# -- drip subscribers import ------------------------------------------------------------


@subscribers_app.command("import")
def import_command(
    csv_file: Annotated[
        Path,
        typer.Argument(
            help=(
                "CSV with a header: email, and optionally name, timezone, newsletter "
                "(yes/no); commas, semicolons or tabs between"
            ),
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    confirm: Annotated[
        bool,
        typer.Option("--confirm", help="leave them pending and send the confirmation email"),
    ] = False,
    no_course: Annotated[
        bool, typer.Option("--no-course", help="make them active without starting the course")
    ] = False,
) -> None:
    """Import subscribers. They become active (you vouch for their consent) and start the
    course; they get newsletters only where the `newsletter` column says yes. Refused rows
    are listed by line; the others are imported. Exits 1 if any row was refused."""
    settings = load_settings()
    engine = _engine(settings)
    adopt_key(engine, settings)  # links signed now must open later: the database's key only
    with Progress(console=err(), transient=True) as bar:
        task = bar.add_task("importing", total=count_records(csv_file))
        try:
            report = import_subscribers(
                settings,
                engine,
                csv_file,
                now=utcnow(),
                confirm=confirm,
                start_course=not no_course,
                progress=lambda n: bar.advance(task, n),
            )
        except ImportFileError as exc:
            bar.stop()
            fail(f"{csv_file}: {exc}")
    for line, reason in report.bad:
        err().print(f"line {line}: refused: {reason}", markup=False)
    for line, address in report.skipped[:SKIPPED_SHOWN]:
        err().print(f"line {line}: skipped: {address} is already a subscriber", markup=False)
    if len(report.skipped) > SKIPPED_SHOWN:
        err().print(f"... and {len(report.skipped) - SKIPPED_SHOWN} more skipped")
    what = "pending, confirmation emails queued" if confirm else "active"
    if not confirm:
        what += ", course not started" if no_course else ", course started"
    console().print(
        f"imported {report.imported} ({what}); skipped {len(report.skipped)} already "
        f"subscribed; refused {len(report.bad)}",
        markup=False,
    )
    if report.bad:
        raise typer.Exit(PROBLEMS)


# -- drip subscribers export ------------------------------------------------------------


@subscribers_app.command("export")
def export_command(
    out: Annotated[
        Path | None, typer.Option("--out", help="write to this file instead of stdout")
    ] = None,
) -> None:
    """Every subscriber as CSV: email, name, status, timezone, created_at, consent_at,
    consent_source, newsletter, newsletter_at, source."""
    engine = _engine(load_settings())
    count = count_subscribers(engine)
    with Progress(console=err(), transient=True) as bar:
        task = bar.add_task("exporting", total=count)
        step = lambda n: bar.advance(task, n)  # noqa: E731
        if out is None:
            total = export_subscribers(engine, sys.stdout, step)
        else:
            with out.open("w", encoding="utf-8", newline="") as handle:
                total = export_subscribers(engine, handle, step)
    if out is not None:
        err().print(f"exported {total} subscribers to {out}", markup=False)


# -- drip subscribers pause / resume / skip / restart -------------------------------------


def _steer(email: str, action: steering.Action, to: str | None = None) -> None:
    """Run one course action on one reader in one transaction, and say what it did."""
    settings = load_settings()
    engine = _engine(settings)
    course = load_course(settings.emails_dir)
    with session_scope(engine) as session:
        found = steering.find(session, email)
        done = steering.apply(session, found, action, course, settings, utcnow(), "cli", to)
    if done.changed:
        console().print(f"{email}: {done.detail}", markup=False, soft_wrap=True)
    else:
        err().print(f"{email}: nothing to change: {done.detail}", markup=False, soft_wrap=True)


EMAIL = Annotated[str, typer.Argument(help="the subscriber's address")]


@subscribers_app.command("pause")
def pause_command(email: EMAIL) -> None:
    """Hold their course: nothing of it goes (a queued lesson waits, not lost) until resume."""
    _steer(email, "pause")


@subscribers_app.command("resume")
def resume_command(email: EMAIL) -> None:
    """Let their course go on from where it stopped: the next lesson, then the normal gaps."""
    _steer(email, "resume")


@subscribers_app.command("skip")
def skip_command(
    email: EMAIL,
    to: Annotated[
        str | None, typer.Option("--to", help="the slug of the lesson to go on with")
    ] = None,
) -> None:
    """Skip their next lesson, or every lesson before --to SLUG; it is never sent to them."""
    _steer(email, "skip", to)


@subscribers_app.command("restart")
def restart_command(email: EMAIL) -> None:
    """Start their course again from the first lesson (a normal delay after the last sent)."""
    _steer(email, "restart")
