"""Operator commands: `drip logs` and `drip subscribers list / import / export`.

Thin over drip.sendlog, drip.subscriber_view and drip.subscribers, so the CLI and
/admin answer the same questions the same way. drip/cli.py mounts `logs` and
`subscribers_app`; its `main` turns SettingsError and DatabaseError into one plain line.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from email_validator import EmailNotValidError, validate_email
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from drip.clock import utcnow
from drip.db import ensure_schema, get_engine, read_scope, session_scope
from drip.models import Subscriber
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
from drip.signup import clean_name
from drip.subscriber_view import SubscriberFilter, list_subscribers
from drip.subscribers import activate, add_subscriber, queue_confirmation


def console() -> Console:
    """Made per use, so the width (COLUMNS) and stdout are those of the running command."""
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


subscribers_app = typer.Typer(help="List, import and export subscribers.", no_args_is_help=True)

IMPORT_BATCH = 500
EXPORT_BATCH = 1000
EXPORT_FIELDS = (
    "email",
    "name",
    "status",
    "timezone",
    "created_at",
    "consent_at",
    "consent_source",
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


def _smtp(entry: LogEntry) -> str:
    parts = [str(entry.smtp_code) if entry.smtp_code else "", entry.smtp_message or ""]
    return " ".join(p for p in parts if p)


def _table(rows: list[LogEntry]) -> Table:
    table = Table(show_lines=False, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    for name in ("email", "kind", "template", "status", "tries", "SMTP"):
        table.add_column(name, overflow="fold", no_wrap=name in ("kind", "status", "tries"))
    for e in rows:
        table.add_row(
            Text(e.at.strftime("%Y-%m-%d %H:%M:%S")),
            Text(e.email),
            Text(e.kind),
            Text(e.template),
            Text(e.status, style=STATUS_STYLE.get(e.status, "")),
            Text(str(e.attempts)),
            Text(_smtp(e)),
        )
    return table


def _line(e: LogEntry) -> Text:
    """One entry on one line, for --follow: a table cannot grow downwards."""
    return Text.assemble(
        (iso(e.at), "dim"),
        "  ",
        (f"{e.status:<8}", STATUS_STYLE.get(e.status, "")),
        f"  {e.kind:<10}  {e.template:<14}  {e.email}  #{e.attempts}  {_smtp(e)}".rstrip(),
    )


def _emit(rows: list[LogEntry], json_output: bool, streaming: bool) -> None:
    if json_output:
        for e in rows:
            sys.stdout.write(json.dumps(e.contract(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    elif streaming:
        for e in rows:
            console().print(_line(e), soft_wrap=True)
    elif rows:
        console().print(_table(rows))
    else:
        err().print("no log entries match")


def show_logs(
    settings: Settings,
    flt: LogFilter,
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
        rows = entries(session, flt)
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
                _emit(follow(session, flt, state), json_output, streaming=True)
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
        when = parse_since(since) if since else None
    except ValueError:
        raise typer.BadParameter(
            f"not an ISO-8601 time or span: {since!r}", param_hint="--since"
        ) from None
    try:
        flt = LogFilter(email=email, kind=kind, status=status, since=when, limit=limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    show_logs(load_settings(), flt, json_output=json_output, follow_log=follow_log)


# -- drip subscribers list --------------------------------------------------------------


@subscribers_app.command("list")
def list_command(
    status: Annotated[
        str | None, typer.Option(help="pending, active, unsubscribed, bounced or complained")
    ] = None,
    email: Annotated[str | None, typer.Option(help="addresses starting with this")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Subscribers, newest first."""
    try:
        flt = SubscriberFilter(status=status, email_prefix=email, limit=limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    engine = _engine(load_settings())
    with read_scope(engine) as session:
        rows = list_subscribers(session, flt)
    if not rows:
        err().print("no subscribers match")
        return
    table = Table(pad_edge=False)
    for name in ("id", "email", "name", "status", "time zone", "since (UTC)", "source"):
        table.add_column(name, overflow="fold", no_wrap=name in ("id", "status", "since (UTC)"))
    for s in rows:
        table.add_row(
            Text(str(s.id)),
            Text(s.email),
            Text(s.name),
            Text(str(s.status)),
            Text(s.timezone),
            Text(s.created_at.strftime("%Y-%m-%d %H:%M")),
            Text(s.consent_source),
        )
    console().print(table)


# -- drip subscribers import ------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    name: str
    timezone: str | None


@dataclass
class ImportReport:
    imported: int = 0
    #: (line, address) already subscribed (or twice in the file): left as they were.
    skipped: list[tuple[int, str]] = field(default_factory=list)
    #: (line, reason) refused.
    bad: list[tuple[int, str]] = field(default_factory=list)


class ImportFileError(Exception):
    """The file as a whole cannot be imported (no email column, not UTF-8...)."""


def check_row(line: int, record: dict[str, str | None]) -> Row | str:
    """A clean row, or the reason it is refused."""
    raw_email = (record.get("email") or "").strip()
    if not raw_email:
        return "no email address"
    try:
        address = validate_email(raw_email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        return f"{raw_email!r}: {exc}"
    try:
        name = clean_name(record.get("name") or "")  # the signup form's rules
    except ValueError as exc:
        return f"name: {exc}"
    tz = (record.get("timezone") or "").strip() or None
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            return f"unknown time zone {tz!r}"
    return Row(line, address, name, tz)


def read_rows(handle: TextIO) -> Iterator[Row | tuple[int, str]]:
    """Rows of a CSV with an `email` column, each checked; (line, reason) for a bad one."""
    reader = csv.DictReader(handle)
    header = [(h or "").strip().lower() for h in reader.fieldnames or []]
    if "email" not in header:
        raise ImportFileError("the first line must be a header with an `email` column")
    reader.fieldnames = header
    try:
        for record in reader:
            line = reader.line_num
            if None in record:  # more cells than the header has names
                yield (line, "more cells than the header has columns")
                continue
            checked = check_row(line, record)
            yield checked if isinstance(checked, Row) else (line, checked)
    except csv.Error as exc:
        raise ImportFileError(f"line {reader.line_num}: not valid CSV ({exc})") from None


def import_subscribers(
    settings: Settings,
    engine: Engine,
    path: Path,
    *,
    confirm: bool = False,
    start_course: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import a CSV; each batch of rows is one transaction, each row a savepoint, so a
    row that collides with a signup at the same moment is skipped, not the batch."""
    settings.require_secret()
    source = f"import:{path.name}"[:64]
    report = ImportReport()
    batch: list[Row] = []

    def flush() -> None:
        if not batch:
            return
        now = utcnow()
        with session_scope(engine) as session:
            for row in batch:
                try:
                    with session.begin_nested():
                        sub, created = add_subscriber(
                            session,
                            settings,
                            email=row.email,
                            name=row.name,
                            timezone=row.timezone,
                            source=source,
                        )
                        if not created:
                            report.skipped.append((row.line, row.email))
                            continue
                        if confirm:
                            queue_confirmation(session, settings, sub, now)
                        else:
                            activate(session, settings, sub, now, start=start_course)
                        report.imported += 1
                except IntegrityError:
                    report.skipped.append((row.line, row.email))
        if progress:
            progress(len(batch))
        batch.clear()

    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for item in read_rows(handle):
                if isinstance(item, Row):
                    batch.append(item)
                    if len(batch) >= IMPORT_BATCH:
                        flush()
                else:
                    report.bad.append(item)
                    if progress:
                        progress(1)
            flush()
    except UnicodeDecodeError:
        raise ImportFileError("not UTF-8 text; save the CSV as UTF-8") from None
    return report


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return max(sum(1 for _ in handle) - 1, 0)


@subscribers_app.command("import")
def import_command(
    csv_file: Annotated[
        Path,
        typer.Argument(
            help="CSV with a header: email, and optionally name, timezone",
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
    course. Refused rows are listed by line; the others are imported. Exits 1 if any row
    was refused."""
    settings = load_settings()
    engine = _engine(settings)
    with Progress(console=err(), transient=True) as bar:
        task = bar.add_task("importing", total=_count_lines(csv_file))
        try:
            report = import_subscribers(
                settings,
                engine,
                csv_file,
                confirm=confirm,
                start_course=not no_course,
                progress=lambda n: bar.advance(task, n),
            )
        except ImportFileError as exc:
            bar.stop()
            err().print(f"drip: {csv_file}: {exc}", markup=False)
            raise typer.Exit(2) from None
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
        raise typer.Exit(1)


# -- drip subscribers export ------------------------------------------------------------


def export_subscribers(
    engine: Engine, out: TextIO, progress: Callable[[int], None] | None = None
) -> int:
    """Write every subscriber as CSV, oldest first, reading one batch at a time."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_FIELDS)
    last, total = 0, 0
    while True:
        with read_scope(engine) as session:
            rows = list(
                session.execute(
                    select(Subscriber)
                    .where(Subscriber.id > last)  # type: ignore[operator]
                    .order_by(Subscriber.id)
                    .limit(EXPORT_BATCH)
                ).scalars()
            )
        if not rows:
            return total
        for s in rows:
            writer.writerow(
                [
                    s.email,
                    s.name,
                    str(s.status),
                    s.timezone,
                    iso(s.created_at),
                    iso(s.consent_at) if s.consent_at else "",
                    s.consent_source,
                ]
            )
        last, total = rows[-1].id or last, total + len(rows)
        if progress:
            progress(len(rows))


@subscribers_app.command("export")
def export_command(
    out: Annotated[
        Path | None, typer.Option("--out", help="write to this file instead of stdout")
    ] = None,
) -> None:
    """Every subscriber as CSV: email, name, status, timezone, created_at, consent_at,
    consent_source."""
    engine = _engine(load_settings())
    with read_scope(engine) as session:
        count = session.execute(select(func.count()).select_from(Subscriber)).scalar_one()
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
