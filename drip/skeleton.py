"""Skeletons: an email's Jinja and css-inline done once per template, not once per reader.

A skeleton is the email rendered and inlined with a placeholder (a private-use
character no template or escaping makes) for each value that differs from reader to
reader, then split at the placeholders. Each email is the skeleton with the reader's
values put in, escaped as css-inline writes them back (its parser decodes Jinja's
escapes and its serializer escapes again, differently in text and in attributes).
Only values a template merely prints (`{{ email }}`, `{{ name|first_name }}`) or tests
(`{% if pack_url %}`) can be placeholders, which the templates' syntax trees say; an
empty or missing value goes in as itself, so every `if` goes the same way. The first
skeleton of each kind is checked against the email built from scratch; anything else
(another use, an odd value, a skeleton that does not match) is built from scratch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from jinja2 import nodes
from jinja2.meta import find_referenced_templates

from drip.templating import (
    INLINER,
    Rendered,
    RenderError,
    environment,
    first_name,
    from_scratch,
    make_environment,
    render_part,
    subject_line,
)

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
            subject=subject_line(name, subject),
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
    return make_environment(emails_dir, _skeleton_first_name)


def _inlined_skeleton(html: str) -> tuple[list[str], list[tuple[int, bool, str]]] | None:
    """The HTML skeleton inlined, split at its placeholders, each with how css-inline
    escapes there; None if a placeholder is anywhere a value could change the styles."""
    for style in re.findall(r"<style[^>]*>(.*?)</style>", html, re.S | re.I):
        if "[" in style or _PRIVATE.search(style):
            return None  # an attribute selector could match a reader's value
    inlined = INLINER.inline(_PLACEHOLDER.sub(lambda m: m.group() + _PROBE, html))
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
        used = self.used  # read once: another thread may give up on skeletons meanwhile
        if used is None:
            return None
        shape: list[Any] = []
        values: dict[int, str] = {}
        for index in used:
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
        rendered = from_scratch(emails_dir, name, context)
        skeleton = _build(emails_dir, name, context, values)
        if skeleton is not None and skeleton.fill(name, values) != rendered:
            skeleton = None
        kept.insert(0, (rest, skeleton))
        del kept[_KEPT:]
        return rendered


def _build(
    emails_dir: Path,
    name: str,
    context: dict[str, Any],
    values: dict[int, str],
) -> _Skeleton | None:
    skeleton_context = dict(context)
    for index in values:
        skeleton_context[READER_VALUES[index]] = chr(_VALUE + index)
    env = _skeleton_environment(emails_dir)
    try:
        html, subject = render_part(env, f"{name}.html", skeleton_context)
        text, _ = render_part(env, f"{name}.txt", skeleton_context)
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


def plan(emails_dir: Path, name: str) -> _Plan | None:
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


def _escapes(env: jinja2.Environment, template: str) -> bool:
    autoescape = env.autoescape
    return bool(autoescape(template) if callable(autoescape) else autoescape)


def _new_plan(emails_dir: Path, name: str) -> _Plan | None:
    env = environment(emails_dir)
    assert env.loader is not None
    files: list[Stamp] = []
    used: set[str] | None = set()
    # Each file with the part it is reached from: the part's escaping is the skeleton's.
    todo = [(f"{name}.html", f"{name}.html"), (f"{name}.txt", f"{name}.txt")]
    seen: set[tuple[str, str]] = set()
    while todo:
        template, part = todo.pop()
        if (template, part) in seen:
            continue
        seen.add((template, part))
        if _escapes(env, template) != _escapes(env, part):
            used = None  # e.g. a .html partial in the text part: Jinja escapes it there
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
        todo.extend((r, part) for r in referenced if r is not None)
        uses = _reader_uses(tree)
        if uses is None or used is None:
            used = None
        else:
            used |= uses
    indexes = None if used is None else tuple(READER_VALUES.index(v) for v in sorted(used))
    return _Plan(files=tuple(files), used=indexes)


def fill(emails_dir: Path, name: str, context: dict[str, Any]) -> Rendered | None:
    """`name`'s email for `context` from its skeleton, or None: build it from scratch."""
    found = plan(emails_dir, name)
    if found is None or found.used is None:
        return None
    return found.render(emails_dir, name, context)
