"""Render an email from its template pair in `emails/`: NAME.html and NAME.txt.

The HTML template extends `base.html` and sets the subject in a `subject` block;
its CSS is inlined (css-inline) so Gmail and Outlook show it as designed. Any
error names the template and line, and nothing half-rendered ever leaves.
"""

from __future__ import annotations

import html as html_lib
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import css_inline
import jinja2
import markupsafe
from jinja2 import nodes
from jinja2.meta import find_referenced_templates

from drip.course import Course, CourseError, load_course
from drip.errors import DripError
from drip.identity import identity
from drip.pace import Pace
from drip.settings import Settings

SAMPLE_CONTEXT: dict[str, Any] = {
    "name": "Sam",
    "email": "sam@example.com",
    "base_url": "http://127.0.0.1:8000",
    "unsubscribe_url": "http://127.0.0.1:8000/unsubscribe/SAMPLE-TOKEN",
    "confirm_url": "http://127.0.0.1:8000/confirm/SAMPLE-TOKEN",
    #: Set on the welcome with DRIP_PACK_DELIVERY=link; None: the pack is attached.
    "pack_url": None,
    "lesson_number": 1,
    "lesson_total": 9,
    "course_title": "Trigger Point Relief",
    # drip.identity's variables, as its defaults make them for the shipped course.
    "site_name": "Trigger Point Relief",
    "author_name": "",
    "signoff": "Warmly,",
    "signature": "Your Trigger Point Relief teacher",
    "privacy_controller": "Trigger Point Course",
    "privacy_contact": "course@localhost",
    "privacy_contact_href": "mailto:course@localhost",
    "newsletter": True,
    "first_lesson": "tomorrow morning",
    "first_lesson_later": "a day later",
    # The shipped course (emails/course.toml): number, title, and the day after
    # confirmation when each lesson arrives; tests/test_content.py keeps them in step.
    "lessons": [
        {"number": 1, "title": "What trigger points are", "day": 1},
        {"number": 2, "title": "Finding your trigger points", "day": 3},
        {"number": 3, "title": "The pressure release, step by step", "day": 6},
        {"number": 4, "title": "Gluteus minimus, the hidden hip muscle", "day": 8},
        {"number": 5, "title": "Trigger point or sciatica?", "day": 11},
        {"number": 6, "title": "After a release: heat, stretch, move", "day": 13},
        {"number": 7, "title": "Why they come back, and a daily routine", "day": 16},
        {"number": 8, "title": "Looking back, and where to go next", "day": 18},
        {"number": 9, "title": "Your questions, answered", "day": 20},
    ],
    "question_subject": "Re: Lesson 4 of 9: Gluteus minimus, the hidden hip muscle",
    "question_text": "Does this work for shoulder pain too?",
    "answer_text": "Often, yes: the same steps work for any muscle you can reach.\n\n"
    "Start with the top of the shoulder, and never press the front of the neck.",
    "subject": "Hip pain on the stairs? Three small changes",
    "preheader": "Why stairs hurt more than walking, and three things to try this week.",
    "content_html": (
        "<h1>Hip pain on the stairs?</h1>"
        "<p>A reader asked why her hip aches most on the stairs. Here is what I told her.</p>"
    ),
    "content_text": (
        "HIP PAIN ON THE STAIRS?\n\n"
        "A reader asked why her hip aches most on the stairs. Here is what I told her."
    ),
}


def sample_context(settings: Settings, name: str) -> dict[str, Any]:
    """SAMPLE_CONTEXT made true to the course in the emails folder and to its author
    (drip.identity) for the email `name`: what `drip preview`, `drip check` and a
    newsletter's dry run render with."""
    context = dict(SAMPLE_CONTEXT)
    try:
        course: Course | None = load_course(settings.emails_dir)
    except CourseError:
        course = None  # `drip check` reports a broken course; a preview still helps
    if course is not None:
        context["course_title"] = course.title
        context["lesson_total"] = course.total
        context["lessons"] = course.schedule()
        context.update(Pace(settings.minutes_per_day).first_lesson(course))
        for number, lesson in enumerate(course.lessons, start=1):
            if lesson.template == name:
                context["lesson_number"] = number
    context.update(identity(settings, context["course_title"]).context())
    if name == "confirm":
        context["unsubscribe_url"] = None  # as sent: nothing to unsubscribe from yet
    return context


#: Never fetch a stylesheet over the network: emails are built from local files only.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)


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


def _environment(emails_dir: Path, first_name_filter: Callable[[Any], str]) -> jinja2.Environment:
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
    return _environment(emails_dir, first_name)


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


def _render(env: jinja2.Environment, name: str, context: dict[str, Any]) -> tuple[str, str]:
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


def _render_now(emails_dir: Path, name: str, context: dict[str, Any]) -> Rendered:
    """Jinja, then css-inline: the email as sent, built from scratch."""
    env = environment(emails_dir)
    html, subject = _render(env, f"{name}.html", context)
    text, _ = _render(env, f"{name}.txt", context)
    html = _inline(name, html)
    return Rendered(subject=_subject(name, subject), html=html, text=text)


def _subject(name: str, subject: str) -> str:
    # The subject block is rendered with HTML escaping on; a header wants the plain text.
    subject = html_lib.unescape(" ".join(subject.split()))
    if not subject:
        raise RenderError(f"{name}.html: no subject (add a {{% block subject %}})")
    return subject


def _inline(name: str, html: str) -> str:
    try:
        return _INLINER.inline(html)
    except ValueError as exc:
        raise RenderError(f"{name}.html: CSS could not be inlined ({exc})") from None


@cache
def _resolved(emails_dir: Path) -> Path:
    return emails_dir.resolve()


def render_email(emails_dir: Path, name: str, context: dict[str, Any]) -> Rendered:
    """`name`'s email for `context`. The same email, to the byte, as Jinja and css-inline
    make from scratch; a skeleton of it (`_Skeleton`) is reused when the template allows."""
    emails_dir = _resolved(emails_dir)
    plan = _plan(emails_dir, name)
    if plan is not None and plan.used is not None:
        rendered = plan.render(emails_dir, name, context)
        if rendered is not None:
            return rendered
    return _render_now(emails_dir, name, context)


# -- skeletons: Jinja and css-inline once per template, not once per reader -------------
#
# A skeleton is the email rendered and inlined with a placeholder (a private-use
# character no template or escaping makes) for each value that differs from reader to
# reader, then split at the placeholders. Each email is the skeleton with the reader's
# values put in, escaped as css-inline writes them back (its parser decodes Jinja's
# escapes and its serializer escapes again, differently in text and in attributes).
# Only values a template merely prints (`{{ email }}`, `{{ name|first_name }}`) or tests
# (`{% if pack_url %}`) can be placeholders, which the templates' syntax trees say; an
# empty or missing value goes in as itself, so every `if` goes the same way. The first
# skeleton of each kind is checked against the email built from scratch; anything else
# (another use, an odd value, a skeleton that does not match) is built from scratch.

#: The values that differ from reader to reader: placeholders when a template allows.
READER_VALUES = ("name", "email", "unsubscribe_url", "confirm_url", "pack_url")
_READER = frozenset(READER_VALUES)
#: Placeholder of READER_VALUES[i]: chr(_VALUE + i); of its first name: chr(_FIRST + i).
_VALUE = 0xE000
_FIRST = 0xE100
_PLACEHOLDER = re.compile("([\ue000-\ue0fe\ue100-\ue1fe])")
_PRIVATE = re.compile("[\ue000-\uf8ff]")
#: Put after each placeholder to learn where css-inline writes it: text or attribute.
_PROBE = str(markupsafe.escape("&<>\"'")) + "\ue0ff"
_PROBED = re.compile("([\ue000-\ue0fe\ue100-\ue1fe])([^\ue0ff]*)\ue0ff")
_IN_TEXT = "&amp;&lt;&gt;\"'"
_IN_ATTRIBUTE = "&amp;<>&quot;'"
_ATTRIBUTE_NAME = re.compile("([^\\s\"'>/=]+)=$")
#: Syntax that could change a placeholder's text on its way out: never in a skeleton.
_UNSAFE = (
    nodes.FilterBlock,
    nodes.AssignBlock,
    nodes.Macro,
    nodes.CallBlock,
    nodes.EvalContextModifier,
    nodes.Import,
    nodes.FromImport,
)
#: Tests that a value's truth, emptiness or absence decides alike for every reader.
_TRUTH_TESTS = frozenset({"defined", "undefined", "none"})
#: Skeletons kept per template and kind of reader: the newest few sets of other values.
_KEPT = 4
_MISSING = object()


def _in_test(chain: list[nodes.Node], node: nodes.Node) -> bool:
    """`node` is tested only for truth: in an `if` (or `x if y else z`) test, through
    `and`, `or`, `not` and `is defined`/`is none` alone."""
    for parent in reversed(chain):
        if isinstance(parent, (nodes.If, nodes.CondExpr)):
            return parent.test is node
        if isinstance(parent, (nodes.And, nodes.Or, nodes.Not)):
            node = parent
        elif isinstance(parent, nodes.Test) and parent.node is node and not parent.args:
            if parent.name not in _TRUTH_TESTS:
                return False
            node = parent
        else:
            return False
    return False


def _placeable(chain: list[nodes.Node], node: nodes.Name) -> bool:
    """A reader's value used only in ways a placeholder renders the same."""
    if node.ctx != "load":
        return False
    parent = chain[-1]
    if isinstance(parent, nodes.Output):
        return True
    if (
        isinstance(parent, nodes.Filter)
        and parent.name == "first_name"
        and parent.node is node
        and not (parent.args or parent.kwargs or parent.dyn_args or parent.dyn_kwargs)
    ):
        return isinstance(chain[-2], nodes.Output) or _in_test(chain[:-1], parent)
    return _in_test(chain, node)


def _reader_uses(tree: nodes.Template) -> set[str] | None:
    """The reader's values `tree` uses, or None when one is used in another way."""
    used: set[str] = set()
    chain: list[nodes.Node] = []

    def walk(node: nodes.Node) -> bool:
        if isinstance(node, _UNSAFE):
            return False
        if isinstance(node, nodes.Name) and node.name in _READER:
            used.add(node.name)
            if not _placeable(chain, node):
                return False
        chain.append(node)
        try:
            return all(walk(child) for child in node.iter_child_nodes())
        finally:
            chain.pop()

    return used if walk(tree) else None


Stamp = tuple[str, int, int]


def _stamp(path: str) -> Stamp:
    st = os.stat(path)
    return (path, st.st_mtime_ns, st.st_size)


@dataclass
class _Skeleton:
    """An email split at its placeholders: literal, slot, literal, ..., literal."""

    subject: list[str]
    html: list[str]
    text: list[str]
    #: Per slot of each part: (index in READER_VALUES, first name only, escape for).
    subject_slots: list[tuple[int, bool, str]]
    html_slots: list[tuple[int, bool, str]]
    text_slots: list[tuple[int, bool, str]]

    def fill(self, name: str, values: dict[int, str]) -> Rendered:
        subject = _filled(self.subject, self.subject_slots, values)
        return Rendered(
            subject=_subject(name, subject),
            html=_filled(self.html, self.html_slots, values),
            text=_filled(self.text, self.text_slots, values),
        )


def _escaped(value: str, how: str) -> str:
    if how == "text":  # css-inline's serializer, in text
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if how == "attribute":  # ... in an attribute value
        return value.replace("&", "&amp;").replace('"', "&quot;")
    if how == "jinja":  # as Jinja printed it (the subject, before it is unescaped)
        return str(markupsafe.escape(value))
    return value  # the text part


def _filled(literals: list[str], slots: list[tuple[int, bool, str]], values: dict[int, str]) -> str:
    out = [literals[0]]
    for (index, first, how), literal in zip(slots, literals[1:], strict=True):
        value = values[index]
        out.append(_escaped(first_name(value) if first else value, how))
        out.append(literal)
    return "".join(out)


def _split(rendered: str, how: str) -> tuple[list[str], list[tuple[int, bool, str]]]:
    pieces = _PLACEHOLDER.split(rendered)
    slots = [_slot(ord(p), how) for p in pieces[1::2]]
    return pieces[0::2], slots


def _slot(code: int, how: str) -> tuple[int, bool, str]:
    first = code >= _FIRST
    return (code - (_FIRST if first else _VALUE), first, how)


def _skeleton_first_name(value: Any) -> str:
    """`first_name` in a skeleton: a value's placeholder gives its first name's."""
    if isinstance(value, str) and len(value) == 1 and _VALUE <= ord(value) < _FIRST:
        return chr(ord(value) - _VALUE + _FIRST)
    return first_name(value)


@cache
def _skeleton_environment(emails_dir: Path) -> jinja2.Environment:
    return _environment(emails_dir, _skeleton_first_name)


def _inlined_skeleton(html: str) -> tuple[list[str], list[tuple[int, bool, str]]] | None:
    """The HTML skeleton inlined, split at its placeholders, each with how css-inline
    escapes there; None if a placeholder is anywhere a value could change the styles."""
    for style in re.findall(r"<style[^>]*>(.*?)</style>", html, re.S | re.I):
        if "[" in style or _PRIVATE.search(style):
            return None  # an attribute selector could match a reader's value
    inlined = _INLINER.inline(_PLACEHOLDER.sub(lambda m: m.group() + _PROBE, html))
    literals: list[str] = []
    slots: list[tuple[int, bool, str]] = []
    start = 0
    for match in _PROBED.finditer(inlined):
        literal = inlined[start : match.start()]
        if match.group(2) == _IN_TEXT:
            how = "text"
        elif match.group(2) == _IN_ATTRIBUTE:
            attribute = _ATTRIBUTE_NAME.search(literal[: literal.rfind('"')])
            if attribute is None or attribute.group(1).lower() in ("class", "id", "style"):
                return None
            how = "attribute"
        else:
            return None  # e.g. in a <style> or <script>: written out unescaped
        literals.append(literal)
        slots.append(_slot(ord(match.group(1)), how))
        start = match.end()
    literals.append(inlined[start:])
    if any(_PRIVATE.search(literal) for literal in literals):
        return None
    return literals, slots


@dataclass
class _Plan:
    """What one template (with the layout and partials it uses) allows, while its files
    are as `files` says."""

    files: tuple[Stamp, ...]
    #: Indexes into READER_VALUES of the values the templates use; None: no skeletons.
    used: tuple[int, ...] | None
    skeletons: dict[tuple[Any, ...], list[tuple[dict[str, Any], _Skeleton | None]]] = field(
        default_factory=dict
    )
    hits: int = 0
    misses: int = 0

    def current(self) -> bool:
        try:
            return all(_stamp(stamp[0]) == stamp for stamp in self.files)
        except OSError:
            return False

    def render(self, emails_dir: Path, name: str, context: dict[str, Any]) -> Rendered | None:
        """The email from a skeleton, or None: build it from scratch."""
        assert self.used is not None
        shape: list[Any] = []
        values: dict[int, str] = {}
        for index in self.used:
            value = context.get(READER_VALUES[index], _MISSING)
            if value is _MISSING or value is None or value == "":
                shape.append(value)
            elif type(value) is str and value.isprintable() and not value.isspace():
                shape.append(True)
                values[index] = value
            else:
                return None
        rest = {k: v for k, v in context.items() if k not in _READER}
        kept = self.skeletons.setdefault(tuple(shape), [])
        for other, skeleton in kept:
            if other == rest:
                self.hits += 1
                return None if skeleton is None else skeleton.fill(name, values)
        self.misses += 1
        if self.misses > 8 and self.misses * 4 > self.hits:
            self.used = None  # the other values differ per reader too: not worth it
            return None
        rendered = _render_now(emails_dir, name, context)
        skeleton = _build(emails_dir, name, context, self.used, values)
        if skeleton is not None and skeleton.fill(name, values) != rendered:
            skeleton = None
        kept.insert(0, (rest, skeleton))
        del kept[_KEPT:]
        return rendered


def _build(
    emails_dir: Path,
    name: str,
    context: dict[str, Any],
    used: tuple[int, ...],
    values: dict[int, str],
) -> _Skeleton | None:
    skeleton_context = dict(context)
    for index in values:
        skeleton_context[READER_VALUES[index]] = chr(_VALUE + index)
    env = _skeleton_environment(emails_dir)
    try:
        html, subject = _render(env, f"{name}.html", skeleton_context)
        text, _ = _render(env, f"{name}.txt", skeleton_context)
    except RenderError:
        return None
    allowed = {chr(_VALUE + i) for i in values} | {chr(_FIRST + i) for i in values}
    if any(set(_PRIVATE.findall(part)) - allowed for part in (html, subject, text)):
        return None  # a template's own private-use characters: not ours to replace
    try:
        inlined = _inlined_skeleton(html)
    except ValueError:
        return None
    if inlined is None:
        return None
    subject_literals, subject_slots = _split(subject, "jinja")
    text_literals, text_slots = _split(text, "plain")
    return _Skeleton(
        subject=subject_literals,
        html=inlined[0],
        text=text_literals,
        subject_slots=subject_slots,
        html_slots=inlined[1],
        text_slots=text_slots,
    )


_PLANS: dict[tuple[Path, str], _Plan] = {}


def _plan(emails_dir: Path, name: str) -> _Plan | None:
    """The template's plan while its files are unchanged; None when it cannot be read
    (building from scratch then says why)."""
    plan = _PLANS.get((emails_dir, name))
    if plan is not None and plan.current():
        return plan
    try:
        plan = _new_plan(emails_dir, name)
    except (OSError, jinja2.TemplateError):
        return None
    if plan is not None:
        _PLANS[(emails_dir, name)] = plan
    return plan


def _new_plan(emails_dir: Path, name: str) -> _Plan | None:
    env = environment(emails_dir)
    assert env.loader is not None
    files: list[Stamp] = []
    used: set[str] | None = set()
    todo = [f"{name}.html", f"{name}.txt"]
    seen: set[str] = set()
    while todo:
        template = todo.pop()
        if template in seen:
            continue
        seen.add(template)
        source, filename, _ = env.loader.get_source(env, template)
        if filename is None:
            return None
        before = _stamp(filename)
        tree = env.parse(source, template, filename)
        if _stamp(filename) != before:
            return None  # changed while read: plan again next time
        files.append(before)
        referenced = list(find_referenced_templates(tree))
        if None in referenced:
            used = None  # a template named at run time: files not known in advance
        todo.extend(r for r in referenced if r is not None)
        uses = _reader_uses(tree)
        if uses is None or used is None:
            used = None
        else:
            used |= uses
    indexes = None if used is None else tuple(READER_VALUES.index(v) for v in sorted(used))
    return _Plan(files=tuple(files), used=indexes)


def template_names(emails_dir: Path) -> list[str]:
    """Every email that has both parts; `base` is the layout, not an email."""
    html = {p.stem for p in emails_dir.glob("*.html")}
    text = {p.stem for p in emails_dir.glob("*.txt")}
    return sorted((html & text) - {"base"})
