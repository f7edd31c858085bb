"""`drip check`: everything that can be wrong before a subscriber would notice, listed at once."""

from __future__ import annotations

from drip.bounce_mailbox import setting_problems as bounce_setting_problems
from drip.course import CourseError, load_course
from drip.db import DatabaseError, get_engine, schema_state
from drip.deliverability import setting_problems
from drip.keycheck import KeyMismatch, inspect_key
from drip.render import render_email, sample_context, template_names
from drip.sending.message import PackMissing, check_pack
from drip.settings import Settings, SettingsError
from drip.templating import RenderError

REQUIRED_EMAILS = ("confirm", "welcome", "newsletter")


def problems(settings: Settings) -> list[str]:
    found: list[str] = []
    try:
        settings.require_secret()
        keyed = True
    except SettingsError as exc:
        found.append(str(exc))
        keyed = False
    found.extend(setting_problems(settings))
    found.extend(bounce_setting_problems(settings))
    if (
        settings.dkim_enabled
        and settings.dkim_private_key
        and not settings.dkim_private_key.is_file()
    ):
        found.append(f"DRIP_DKIM_PRIVATE_KEY: no file at {settings.dkim_private_key}")
    try:
        engine = get_engine(settings.database_url)
        state = schema_state(engine)
        if state != "current":
            found.append(f"database schema is {state}: run `drip db upgrade`")
        elif keyed:
            inspect_key(engine, settings)
    except KeyMismatch as exc:
        found.append(str(exc))
    except DatabaseError as exc:
        found.append(str(exc))
    if not settings.emails_dir.is_dir():
        return [*found, f"{settings.emails_dir}: the emails folder is missing"]
    names = template_names(settings.emails_dir)
    for name in REQUIRED_EMAILS:
        if name not in names:
            found.append(f"{settings.emails_dir}/{name}.html and .txt: email template missing")
    for name in names:
        try:
            render_email(settings.emails_dir, name, sample_context(settings, name))
        except RenderError as exc:
            found.append(f"template {exc}")
    try:
        load_course(settings.emails_dir)
    except CourseError as exc:
        found.extend(exc.problems)
    try:
        check_pack(settings.info_pack)
    except PackMissing as exc:
        found.append(f"DRIP_INFO_PACK: {exc}")
    return found


def course_changes(settings: Settings) -> list[str]:
    """What the course file as it is now does to the readers already on it
    (drip.course_changes): information for the author, not problems. Empty when the
    course or the database cannot be read: `problems` says why."""
    from drip.course_changes import explain
    from drip.db import read_scope

    try:
        course = load_course(settings.emails_dir)
        engine = get_engine(settings.database_url)
        if schema_state(engine) != "current":
            return []
        with read_scope(engine) as session:
            return explain(session, course, settings.emails_dir)
    except (CourseError, DatabaseError):
        return []
