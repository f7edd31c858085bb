"""An email template's parts built from scratch: the Jinja environment of `emails/`, one
part rendered (with its subject block), css-inline over the HTML. Any error names the
template and line (RenderError), and nothing half-rendered ever leaves.
"""

from __future__ import annotations

import html as html_lib
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import css_inline
import jinja2

from drip.errors import DripError

#: Never fetch a stylesheet over the network: emails are built from local files only.
INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)


class RenderError(DripError):
    """A template could not be rendered; the message names the template and line."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def first_name(name: str | None) -> str:
    """The first word of a name, for a greeting ("Hi Sam"); "" when there is no name."""
    words = (name or "").split()
    return words[0] if words else ""


def make_environment(
    emails_dir: Path, first_name_filter: Callable[[Any], str]
) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(emails_dir)),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["first_name"] = first_name_filter
    return env


@cache
def environment(emails_dir: Path) -> jinja2.Environment:
    return make_environment(emails_dir, first_name)


def _where(exc: BaseException, fallback: str) -> str:
    """'name.html, line N' from a Jinja error or the template frame in its traceback."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return (
            f"{exc.filename and Path(exc.filename).name or exc.name or fallback}, line {exc.lineno}"
        )
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith((".html", ".txt")):
            return f"{Path(frame.filename).name}, line {frame.lineno}"
    return fallback


def render_part(env: jinja2.Environment, name: str, context: dict[str, Any]) -> tuple[str, str]:
    try:
        template = env.get_template(name)
        body = template.render(context)
        subject = ""
        if "subject" in template.blocks:
            ctx = template.new_context(context)
            subject = "".join(template.blocks["subject"](ctx))
        return body, subject
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"{exc.name}: template not found") from None
    except Exception as exc:  # noqa: BLE001 - any template failure is reported the same way
        message = getattr(exc, "message", None) or str(exc)
        raise RenderError(f"{_where(exc, name)}: {message}").with_traceback(
            sys.exc_info()[2]
        ) from None


def from_scratch(emails_dir: Path, name: str, context: dict[str, Any]) -> Rendered:
    """Jinja, then css-inline: the email as sent, built from scratch."""
    env = environment(emails_dir)
    html, subject = render_part(env, f"{name}.html", context)
    text, _ = render_part(env, f"{name}.txt", context)
    html = inline(name, html)
    return Rendered(subject=subject_line(name, subject), html=html, text=text)


def subject_line(name: str, subject: str) -> str:
    # The subject block is rendered with HTML escaping on; a header wants the plain text.
    subject = html_lib.unescape(" ".join(subject.split()))
    if not subject:
        raise RenderError(f"{name}.html: no subject (add a {{% block subject %}})")
    return subject


def inline(name: str, html: str) -> str:
    try:
        return INLINER.inline(html)
    except ValueError as exc:
        raise RenderError(f"{name}.html: CSS could not be inlined ({exc})") from None
