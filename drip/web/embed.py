"""The signup form for the author's own site: a copy-paste snippet, shown in /admin/embed.

A plain HTML form posting to drip's /subscribe, so it works without JavaScript, and a
small script (static/embed.js) that posts the same fields as JSON and shows drip's
answer in place, which needs the site's origin in DRIP_CORS_ORIGINS. The checkbox
words come from the same macros as drip's own signup page (partials/consent.html).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).with_name("templates")


def snippet(base_url: str, facts: dict[str, Any]) -> str:
    """The HTML to paste, for drip at `base_url` and the course `facts` (lesson count...)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        keep_trailing_newline=True,
    )
    return env.get_template("embed.html").render(base_url=base_url.rstrip("/"), **facts)
