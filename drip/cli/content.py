"""Content commands: `drip pack build` and `drip preview NAME`.

Kept apart from drip/cli/__init__.py so the people who write the course can check their
work (render an email with sample data, rebuild the PDF) without touching the
sending side; the main CLI mounts `pack_app` and `preview`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from drip.cli.output import fail
from drip.pack import DEFAULT_OUT, DEFAULT_SOURCE, build_pack
from drip.render import render_email, sample_context, template_names
from drip.settings import load_settings
from drip.templating import Rendered

pack_app = typer.Typer(help="Build the information pack PDF.", no_args_is_help=True)


#: `drip preview` and `drip newsletter preview`: which part to show, and where.
TextPart = Annotated[bool, typer.Option("--text", help="Print the plain-text part.")]
HtmlOut = Annotated[Path | None, typer.Option("--out", help="Write the HTML part to this file.")]


def preview(
    name: Annotated[str, typer.Argument(help="Email to render, e.g. welcome or confirm.")],
    text: TextPart = False,
    out: HtmlOut = None,
) -> None:
    """Render an email template with sample data."""
    settings = load_settings()
    emails_dir = settings.emails_dir
    names = template_names(emails_dir)
    if name not in names:
        known = ", ".join(names) or "none"
        fail(f"no email named {name!r} in {emails_dir}/ (known: {known})")
    show(render_email(emails_dir, name, sample_context(settings, name)), text=text, out=out)


def show(rendered: Rendered, *, text: bool, out: Path | None) -> None:
    """Print a rendered email: its subject, then its HTML or (--text) its text part."""
    typer.echo(f"Subject: {rendered.subject}")
    if out is not None:
        try:
            out.write_text(rendered.html, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out} ({exc.strerror or exc})")
        typer.echo(f"Wrote the HTML part to {out}; open it in a browser.")
    if text:
        typer.echo("")
        typer.echo(rendered.text, nl=False)
    elif out is None:
        typer.echo("")
        typer.echo(rendered.html)


@pack_app.command("build")
def build(
    source: Annotated[Path, typer.Option(help="The pack's text source.")] = DEFAULT_SOURCE,
    out: Annotated[Path, typer.Option(help="Where to write the PDF.")] = DEFAULT_OUT,
) -> None:
    """Build the information pack PDF from its text source."""
    try:
        build_pack(source, out)
    except OSError as exc:
        fail(f"cannot write {out} ({exc.strerror or exc})")
    typer.echo(f"Wrote {out} ({out.stat().st_size // 1024} KB) from {source}")
