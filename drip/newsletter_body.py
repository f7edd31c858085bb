"""A newsletter's subject, preheader and Markdown body as Jinja2 templates, per reader.

The author writes `Hi {{ name }},` and each reader sees their own first name (or
"there" when they gave none). The templates run in Jinja's SandboxedEnvironment with
undefined names refused, so a typo is an error naming its line, never a blank.

What a reader typed (their name, their address) is escaped for Markdown and HTML
before Markdown sees it: a name such as `**Bob**` or `<b>Bob</b>` reads as typed and
can never add a link or markup. Values the operator set (links, site and author
names) are trusted and go in as they are.

The body's HTML is Python-Markdown's; its text part is that HTML read back into plain
text (drip.plaintext). Both are cached per rendered Markdown, so a newsletter without
per-reader variables is converted once per run, however many readers.
"""

from __future__ import annotations

import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from html import escape
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from drip.plaintext import html_to_text
from drip.templating import RenderError, first_name

#: What `{{ name }}` says for a reader who gave no name: "Hi there,".
NAME_FALLBACK = "there"
#: The template variables the operator set, trusted as they are.
TRUSTED = (
    "unsubscribe_url",
    "base_url",
    "site_name",
    "author_name",
    "signature",
    "signoff",
    "course_title",
)
_BODY = "body"
#: The characters Python-Markdown takes a backslash escape for (but `>`: HTML-escaped).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!])")


def escape_markdown(value: str) -> str:
    """`value` as literal text inside Markdown that becomes HTML."""
    return escape(_MARKDOWN_SPECIAL.sub(r"\\\1", value), quote=False)


def _finalize_markdown(value: Any) -> Any:
    """Every `{{ ... }}` of the body: trusted (Markup) as is, anything else escaped."""
    if isinstance(value, Markup):
        return str(value)
    return escape_markdown("" if value is None else str(value))


def _environment(finalize: Any = None) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
    )
    env.filters["first_name"] = first_name
    return env


_MARKDOWN_ENV = _environment(_finalize_markdown)
_PLAIN_ENV = _environment()


def reader_variables(context: dict[str, Any]) -> dict[str, Any]:
    """The variables a newsletter's templates see, from an email's template context."""
    full = " ".join(str(context.get("name") or "").split())
    given = first_name(full)
    values: dict[str, Any] = {
        "name": given or NAME_FALLBACK,
        "first_name": given,
        "full_name": full,
        "email": str(context.get("email") or ""),
    }
    for key in TRUSTED:
        value = context.get(key)
        values[key] = Markup(value) if value is not None else None
    return values


_LOCAL = threading.local()


def _markdown(source: str) -> str:
    """Python-Markdown's HTML, by one converter per thread (making one costs a third)."""
    converter = getattr(_LOCAL, "markdown", None)
    if converter is None:
        import markdown

        converter = _LOCAL.markdown = markdown.Markdown()
    return str(converter.reset().convert(source))


#: Readers who share a first name share a body: a list of common names mostly hits.
@lru_cache(maxsize=2048)
def markdown_parts(source: str) -> tuple[str, str]:
    """(HTML, plain text) of a rendered Markdown body: about 3 ms for a page of text."""
    html = _markdown(source)
    return html, html_to_text(html)


def _line(exc: BaseException) -> int | None:
    """The template line an error happened on: a syntax error's own, else the frame's."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.lineno
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == "<template>":
            return frame.lineno
    return None


@dataclass(frozen=True)
class LetterTemplate:
    """A newsletter ready to render per reader; `label` names it in errors (its file),
    `first_line` is the body's first line in that file."""

    subject: str
    body: str
    preheader: str = ""
    label: str = "the newsletter"
    first_line: int = 1
    #: Compiled once per part, on first use.
    _templates: dict[tuple[int, str], jinja2.Template] = field(
        default_factory=dict, compare=False, repr=False
    )

    def _fail(self, part: str, exc: BaseException) -> RenderError:
        message = getattr(exc, "message", None) or str(exc)
        line = _line(exc)
        if part == _BODY and line is not None:
            where = f"line {line + self.first_line - 1}"
        else:
            where = f"its {part}"
        return RenderError(f"{self.label}, {where}: {message}")

    def _compiled(self, env: SandboxedEnvironment, part: str, source: str) -> jinja2.Template:
        key = (id(env), part)
        found = self._templates.get(key)
        if found is None:
            try:
                found = env.from_string(source)
            except jinja2.TemplateSyntaxError as exc:
                raise self._fail(part, exc) from None
            self._templates[key] = found
        return found

    def _render(self, env: SandboxedEnvironment, part: str, source: str, values: Any) -> str:
        template = self._compiled(env, part, source)
        try:
            return template.render(values)
        except Exception as exc:  # noqa: BLE001 - every template failure is told the same way
            raise self._fail(part, exc).with_traceback(sys.exc_info()[2]) from None

    def render(self, context: dict[str, Any]) -> dict[str, str]:
        """`subject`, `preheader`, `content_html` and `content_text` for one reader."""
        values = reader_variables(context)
        subject = self._render(_PLAIN_ENV, "subject", self.subject, values)
        preheader = self._render(_PLAIN_ENV, "preheader", self.preheader, values)
        body = self._render(_MARKDOWN_ENV, _BODY, self.body, values)
        html, text = markdown_parts(body)
        return {
            "subject": " ".join(subject.split()),
            "preheader": " ".join(preheader.split()),
            "content_html": html,
            "content_text": text.rstrip("\n"),
        }
