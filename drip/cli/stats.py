"""`drip stats [--json]`: the course funnel (drip.funnel), as /admin/funnel shows it;
JSON in ASCII, so a visitor's source can hold nothing a terminal would act on.

`--json` prints one object a line per step in course order (`step`: `confirm`,
`welcome`, each lesson's slug, `finished`), then one last object with `"summary": true`:
completion rate, median time to finish, unattributed unsubscribes, signups per source
and, with DRIP_PACK_DELIVERY=link, pack downloads.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from drip.cli.output import console, print_lines
from drip.clicks import how_counted
from drip.course import load_course
from drip.db import ensure_schema, get_engine, read_scope
from drip.funnel import Funnel, funnel, percent, span
from drip.printable import printable
from drip.settings import load_settings


def _human(found: Funnel, click_delay: float) -> None:
    out = console()
    header = ["step", "reached", "delivered", "bounced", "complained", "unsub. after", "lost"]
    rows = [header]
    for step, loss in zip(found.steps, found.losses(), strict=True):
        lost = percent(loss[1]) if loss is not None else ""
        cells = [step.reached, step.delivered, step.bounced, step.complained]
        rows.append([step.step, *map(str, cells), str(step.unsubscribed_after), lost])
    print_lines(out, rows)
    out.print(
        f"\nstarted the course {found.started}, finished {found.finished}: completion "
        f"{percent(found.completion_rate)}; median time to finish {span(found.median_to_finish)}",
        markup=False,
    )
    out.print(
        f"unsubscribed without a lesson's link {found.unsubscribed_unattributed}, "
        f"through other mail {found.unsubscribed_elsewhere}",
        markup=False,
    )
    if found.any_clicks:
        table = [["lesson", "clicks", "a reader's", "readers clicking"]]
        table += [
            [step.step, str(step.clicks), str(step.human_clicks), str(step.readers_clicking)]
            for step in found.steps
            if step.clicks
        ]
        out.print("", markup=False)
        print_lines(out, table)
        out.print(how_counted(click_delay), markup=False)
    if found.unconfirmed_expired:
        out.print(
            f"signups never confirmed, deleted and only counted {found.unconfirmed_expired}",
            markup=False,
        )
    if found.pack_downloads is not None:
        downloads, readers = found.pack_downloads
        out.print(f"pack downloads {downloads}, by {readers} subscribers", markup=False)
    if found.sources:
        out.print("")
        table = [["source", "signups", "confirmed", "finished", "confirmation", "completion"]]
        for s in found.sources:
            counts = [str(s.signups), str(s.confirmed), str(s.finished)]
            rates = [percent(s.confirmation_rate), percent(s.completion_rate)]
            table.append([printable(s.source) or "(none)", *counts, *rates])
        print_lines(out, table)


def stats(
    json_output: Annotated[
        bool,
        typer.Option("--json", help="one JSON object a line per step, then a summary object"),
    ] = False,
) -> None:
    """The course funnel: per step, how many reached it, got it, bounced, complained and
    left through its link; completion, time to finish, and signups per source."""
    settings = load_settings()
    course = load_course(settings.emails_dir)
    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    with read_scope(engine) as session:
        found = funnel(session, course, pack_link=settings.pack_delivery == "link")
    if not json_output:
        _human(found, settings.click_delay_seconds)
        return
    for step in found.steps:
        sys.stdout.write(json.dumps(step.as_json()) + "\n")
    summary = found.summary_json()
    if found.any_clicks:
        summary["clicks_counted_as_human"] = how_counted(settings.click_delay_seconds)
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
