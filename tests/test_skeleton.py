"""Skeletons: every email filled in for a reader is the email built from scratch, to the byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drip import skeleton, templating
from drip.render import render_email
from tests.test_content import EMAILS, NAMES, context_for

#: Readers' values a skeleton must put in exactly as building from scratch would.
ADVERSARIAL: list[dict[str, Any]] = [
    {},
    {"name": 'Ann-Marie O\'Brien & "Co" <b>bold</b>', "email": "o'brien&co@example.com"},
    {"name": "  Zoë   Ångström-Łukasz  ", "email": "zoe@xn--bcher-kva.example"},
    {"name": "", "email": "a@example.com"},
    {"name": None, "unsubscribe_url": None, "pack_url": None},
    {"name": "   ", "unsubscribe_url": ""},
    {"name": "名前 テスト", "pack_url": 'https://example.com/pack/a&b="c"<d>\'e'},
    {"name": "Tab\there", "email": "nbsp\xa0x@example.com"},
    {"name": "\ue000\ue100", "unsubscribe_url": "https://example.com/u/x?a=1&b=<2>"},
    {"confirm_url": "https://example.com/confirm/a\"b'c&d<e>", "name": "&amp; &lt;"},
    {"name": "{{ name }}", "email": "x@example.com", "pack_url": "https://e.com/p/1"},
]


@pytest.mark.parametrize("name", NAMES)
def test_a_skeleton_renders_each_reader_as_built_from_scratch(name: str) -> None:
    """The cached path (a skeleton per template) against Jinja and css-inline per reader."""
    for round_ in range(2):  # the first builds and checks the skeleton, the second reuses it
        for values in ADVERSARIAL:
            context = context_for(name, **values)
            expected = templating.from_scratch(EMAILS.resolve(), name, dict(context))
            assert render_email(EMAILS, name, dict(context)) == expected, (name, round_, values)
    plan = skeleton.plan(EMAILS.resolve(), name)
    assert plan is not None
    if name not in ("answer", "newsletter"):  # these use a reader's value otherwise
        assert plan.used is not None and plan.hits > 0, name


def write(folder: Path, name: str, html: str, text: str = "{{ name }}\n") -> None:
    (folder / f"{name}.html").write_text(html)
    (folder / f"{name}.txt").write_text(text)


HTML = "<html><head><title>{% block subject %}Hello{% endblock %}</title>"
STYLE = "<style>p { color: red; }</style></head><body>"


def test_a_template_edited_between_two_emails_is_used_at_once(tmp_path: Path) -> None:
    write(tmp_path, "x", HTML + STYLE + "<p>Hi {{ name }}</p></body></html>")
    assert "Hi Ann" in render_email(tmp_path, "x", {"name": "Ann"}).html
    write(tmp_path, "x", HTML + STYLE + "<p>Hello again, {{ name }}</p></body></html>")
    html = render_email(tmp_path, "x", {"name": "Bea"}).html
    assert "Hello again, Bea" in html and 'style="color: red;"' in html


@pytest.mark.parametrize(
    "body",
    [
        "<p>{{ name|upper }}</p>",
        '<p class="{{ name }}">x</p>',
        "<p>{% filter upper %}{{ name }}{% endfilter %}</p>",
        "<p>{{ name ~ '!' }}</p>",
        "{% if name == 'Ann' %}<p>ann</p>{% endif %}",
    ],
)
def test_a_value_used_other_than_printed_is_rendered_per_reader(tmp_path: Path, body: str) -> None:
    write(tmp_path, "x", HTML + STYLE + body + "</body></html>")
    for name in ("Ann", "Bea", "Ann", "Bea"):
        html = render_email(tmp_path, "x", {"name": name}).html
        assert html == templating.from_scratch(tmp_path.resolve(), "x", {"name": name}).html


def test_a_partial_that_escapes_otherwise_than_its_part_is_rendered_per_reader(
    tmp_path: Path,
) -> None:
    """A .html partial in the text part is escaped there by Jinja, unlike the part: the
    first reader ("Sam") cannot show the difference, so the plan must."""
    (tmp_path / "greeting.html").write_text("Hi {{ name }}")
    write(
        tmp_path,
        "x",
        HTML + STYLE + "<p>{{ name }}</p></body></html>",
        '{% include "greeting.html" %}\n',
    )
    for name in ("Sam", "O'Brien & <Co>", "Sam", "O'Brien & <Co>"):
        built = render_email(tmp_path, "x", {"name": name})
        assert built == templating.from_scratch(tmp_path.resolve(), "x", {"name": name}), name
