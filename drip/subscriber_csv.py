"""Subscribers in and out as CSV: the import's rules and the export's columns.

An imported row is checked by the signup form's own rules (`drip.signup`: address,
name and time zone), so an address the form refuses is refused here too, in the
same words. The file's separator is read from its header line (commas, semicolons
or tabs, as spreadsheets save them), and a refused record is named by the line it
starts on, so a stray quote that swallows the lines after it is blamed where it is.
The CLI (`drip subscribers import / export`) is a thin shell over this module.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from drip.db import read_scope, session_scope
from drip.errors import DripError
from drip.models import Subscriber
from drip.sendlog import iso
from drip.settings import Settings
from drip.signup import clean_email, clean_name, known_timezone
from drip.subscribers import activate, add_subscriber, queue_confirmation

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
    "newsletter",
    "newsletter_at",
    "source",
)
#: The `newsletter` column's words; an empty cell is no (course consent is not newsletter consent).
YES = ("yes", "y", "true", "1")
NO = ("no", "n", "false", "0", "")
#: Separators a header line may use, in the order they are tried.
DELIMITERS = (",", ";", "\t")
_DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs"}


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    name: str
    timezone: str | None
    newsletter: bool = False


@dataclass
class ImportReport:
    imported: int = 0
    #: (line, address) already subscribed (or twice in the file): left as they were.
    skipped: list[tuple[int, str]] = field(default_factory=list)
    #: (line, reason) refused.
    bad: list[tuple[int, str]] = field(default_factory=list)


class ImportFileError(DripError):
    """The file as a whole cannot be imported (no email column, not UTF-8...)."""


def check_row(line: int, record: dict[str, str]) -> Row | str:
    """A clean row, or the reason it is refused: the signup form's rules, word for word."""
    raw_email = record.get("email", "").strip()
    if not raw_email:
        return "no email address"
    try:
        address = clean_email(raw_email)
    except ValueError as exc:
        return f"{raw_email!r}: {exc}"
    try:
        name = clean_name(record.get("name", ""))
    except ValueError as exc:
        return f"name: {exc}"
    tz = record.get("timezone", "").strip() or None
    if tz is not None and known_timezone(tz) is None:
        return f"unknown time zone {tz!r}"
    wants = record.get("newsletter", "").strip().lower()
    if wants not in YES + NO:
        return f"newsletter: {wants!r} is not yes or no"
    return Row(line, address, name, tz, newsletter=wants in YES)


def _header(first_line: str) -> tuple[str, list[str]]:
    """The separator and the lower-cased column names of a header line."""
    for delimiter in DELIMITERS:
        cells = next(csv.reader([first_line], delimiter=delimiter), [])
        names = [cell.strip().lower() for cell in cells]
        if "email" in names:
            return delimiter, names
    raise ImportFileError(
        "the first line must be a header with an `email` column, its names separated "
        "by commas, semicolons or tabs (e.g. `email,name,timezone`)"
    )


def read_rows(handle: TextIO) -> Iterator[Row | tuple[int, str]]:
    """Checked rows of a CSV with an `email` column; (line, reason) for a refused one.

    Lines are counted from 1 (the header); a record is named by the line it starts on.
    """
    first = handle.readline()
    delimiter, header = _header(first)
    reader = csv.reader(handle, delimiter=delimiter)
    ended = 1  # the last physical line read so far
    try:
        for cells in reader:
            start, ended = ended + 1, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            if ended > start and any("\n" in cell or "\r" in cell for cell in cells):
                yield (
                    start,
                    f"a quoted value runs on to line {ended}: a quote is opened and not "
                    "closed where it should be (lines up to there were not imported)",
                )
                continue
            if len(cells) > len(header):
                sep = _DELIMITER_NAMES[delimiter]
                yield (start, f"more cells than the header has columns (separated by {sep})")
                continue
            record = dict(zip(header, cells, strict=False))
            checked = check_row(start, record)
            yield checked if isinstance(checked, Row) else (start, checked)
    except csv.Error as exc:
        raise ImportFileError(f"line {ended + 1}: not valid CSV ({exc})") from None


def import_subscribers(
    settings: Settings,
    engine: Engine,
    path: Path,
    *,
    now: datetime,
    confirm: bool = False,
    start_course: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import a CSV; each batch of rows is one transaction, each row a savepoint, so a
    row that collides with a signup at the same moment is skipped, not the batch.

    Imported subscribers are active (the operator vouches for their consent) and start
    the course unless `start_course` is false; they get newsletters only where the
    `newsletter` column says yes; with `confirm` they stay pending and get the
    confirmation email instead. Every row is imported as of `now`.
    """
    settings.require_secret()
    source = f"import:{path.name}"[:64]
    report = ImportReport()
    batch: list[Row] = []

    def flush() -> None:
        if not batch:
            return
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
                            newsletter=row.newsletter,
                            now=now,
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


def count_records(path: Path) -> int:
    """About how many records follow the header: its lines less one, for a progress bar."""
    with path.open("rb") as handle:
        return max(sum(1 for _ in handle) - 1, 0)


def count_subscribers(engine: Engine) -> int:
    with read_scope(engine) as session:
        return int(session.execute(select(func.count()).select_from(Subscriber)).scalar_one())


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
                    .where(col(Subscriber.id) > last)
                    .order_by(col(Subscriber.id))
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
                    "yes" if s.newsletter else "no",
                    iso(s.newsletter_at) if s.newsletter_at else "",
                    s.source,
                ]
            )
        last, total = rows[-1].id or last, total + len(rows)
        if progress:
            progress(len(rows))
