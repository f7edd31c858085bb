"""CSV import and export rules (drip.subscriber_csv), on both databases where they write."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from drip.clock import utcnow
from drip.db import read_scope
from drip.models import Subscriber
from drip.settings import Settings
from drip.subscriber_csv import ImportFileError, Row, import_subscribers, read_rows


def _read(text: str) -> list[Row | tuple[int, str]]:
    return list(read_rows(io.StringIO(text, newline="")))


def test_a_stray_quote_is_blamed_on_the_line_it_is_on() -> None:
    items = _read(
        "email,name\n"
        "ann@example.com,Ann\n"
        'bob@example.com,"Bob\n'  # line 3: the quote is never closed where it should be
        "cat@example.com,Cat\n"
        "dan@example.com,Dan\n"
    )
    assert items[0] == Row(2, "ann@example.com", "Ann", None)
    line, reason = items[1]  # type: ignore[misc]
    assert line == 3
    assert "quote" in reason
    assert "line 5" in reason
    assert len(items) == 2


def test_a_quote_closed_later_names_the_first_line_and_the_rows_after_read_again() -> None:
    items = _read('email,name\nbob@example.com,"Bob\ncat@example.com,Cat"\neve@example.com,Eve\n')
    assert items[0] == (2, items[0][1])
    assert "line 3" in str(items[0][1])
    assert items[1] == Row(4, "eve@example.com", "Eve", None)


def test_semicolons_and_tabs_are_read_and_anything_else_is_explained() -> None:
    assert _read("Email;Name;Timezone\nann@example.com;Ann;Europe/Paris\n") == [
        Row(2, "ann@example.com", "Ann", "Europe/Paris")
    ]
    assert _read("email\tname\nann@example.com\tAnn, of Paris\n") == [
        Row(2, "ann@example.com", "Ann, of Paris", None)
    ]
    with pytest.raises(ImportFileError, match="commas, semicolons or tabs"):
        _read("email|name\nann@example.com|Ann\n")


def test_rows_are_checked_by_the_signup_rules() -> None:
    items = _read(
        "email,name,timezone\n"
        "Ann@EXAMPLE.com,  Ann   Lee ,\n"
        "not-an-address,,\n"
        "tz@example.com,,../../etc/passwd\n"
        "x@example.com,a,b,c\n"
    )
    assert items[0] == Row(2, "Ann@example.com", "Ann Lee", None)  # as the form normalises
    assert items[1][0] == 3
    assert "doesn't look like an email address" in str(items[1][1])
    assert items[2] == (4, "unknown time zone '../../etc/passwd'")
    assert items[3][0] == 5
    assert "more cells" in str(items[3][1])


def test_a_semicolon_file_imports(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text("\ufeffemail;name\nann@example.com;Ann\n", encoding="utf-8")
    report = import_subscribers(settings, engine, path, now=utcnow())
    assert report.imported == 1
    assert not report.bad
    with read_scope(engine) as session:
        assert session.execute(select(Subscriber.name)).scalars().all() == ["Ann"]
