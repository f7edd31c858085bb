"""The course definition, `emails/course.toml`: ordered lessons, the send window and days.

Lessons are identified by their `slug`, not their position, so an operator may
add, reorder or retitle lessons without resending one a subscriber already has.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import time
from pathlib import Path

from drip.errors import DripError

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
#: `send_days` names, in the order of `datetime.weekday()` (Monday is 0).
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY_DAY = frozenset(range(7))


class CourseError(DripError):
    """The course file is wrong; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Lesson:
    slug: str
    template: str
    title: str
    delay_days: float
    #: Added mid-course for newcomers only: readers already past it (who have a later
    #: lesson) skip it instead of getting it next. See README, "Changing the course mid-way".
    skip_if_past: bool = False


@dataclass(frozen=True)
class Course:
    title: str
    window_start: time
    window_end: time
    lessons: tuple[Lesson, ...]
    #: Weekdays (0 is Monday) on which lessons may go, in the subscriber's time zone.
    send_days: frozenset[int] = EVERY_DAY
    #: False (the default): a lesson never goes on a day a newsletter went to that reader.
    newsletter_same_day: bool = False

    @property
    def total(self) -> int:
        return len(self.lessons)

    def schedule(self) -> list[dict[str, object]]:
        """Each lesson's number, title and the day after confirmation it arrives (delays add up)."""
        day = 0.0
        out: list[dict[str, object]] = []
        for number, lesson in enumerate(self.lessons, start=1):
            day += lesson.delay_days
            out.append({"number": number, "title": lesson.title, "day": round(day)})
        return out

    def number_of(self, slug: str) -> int:
        """1-based position of a lesson in the course as it stands now."""
        for i, lesson in enumerate(self.lessons, start=1):
            if lesson.slug == slug:
                return i
        raise KeyError(slug)


def _parse_window(text: object) -> tuple[time, time]:
    if not isinstance(text, str) or not re.fullmatch(r"\d{2}:\d{2}-\d{2}:\d{2}", text):
        raise ValueError("send_window must look like '08:00-10:00'")
    start_s, end_s = text.split("-")
    start, end = time.fromisoformat(start_s), time.fromisoformat(end_s)
    if start >= end:
        raise ValueError("send_window must end after it starts, within one day")
    return start, end


def _parse_days(value: object) -> frozenset[int]:
    """`["mon", "tue", ...]` to weekday numbers; any case, each name once at least."""
    names = ", ".join(DAY_NAMES)
    if not isinstance(value, list) or not value:
        raise ValueError(f'send_days must be a list of days such as ["mon", "tue"] ({names})')
    days: set[int] = set()
    for item in value:
        day = item.strip().lower() if isinstance(item, str) else None
        if day not in DAY_NAMES:
            raise ValueError(f"send_days: {item!r} is not a day; use {names}")
        days.add(DAY_NAMES.index(day))
    return frozenset(days)


def load_course(emails_dir: Path) -> Course:
    """Read and check the course file, naming every problem found."""
    path = emails_dir / "course.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CourseError([f"{path}: the course file is missing"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise CourseError([f"{path}: not valid TOML ({exc})"]) from None

    problems: list[str] = []
    meta = data.get("course", {})
    title = meta.get("title") if isinstance(meta, dict) else None
    if not isinstance(title, str) or not title.strip():
        problems.append(f"{path}: [course] needs a title")
        title = ""
    try:
        start, end = _parse_window(meta.get("send_window", "08:00-10:00"))
    except ValueError as exc:
        problems.append(f"{path}: {exc}")
        start, end = time(8), time(10)
    days = EVERY_DAY
    if isinstance(meta, dict) and "send_days" in meta:
        try:
            days = _parse_days(meta["send_days"])
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
    same_day = meta.get("newsletter_same_day", False) if isinstance(meta, dict) else False
    if not isinstance(same_day, bool):
        problems.append(f"{path}: newsletter_same_day must be true or false")
        same_day = False

    lessons: list[Lesson] = []
    seen: set[str] = set()
    raw_lessons = data.get("lesson", [])
    if not isinstance(raw_lessons, list) or not raw_lessons:
        problems.append(f"{path}: the course has no [[lesson]] entries")
        raw_lessons = []
    for i, raw in enumerate(raw_lessons, start=1):
        where = f"{path}: lesson {i}"
        slug = raw.get("slug")
        if not isinstance(slug, str) or not SLUG.match(slug):
            problems.append(f"{where}: slug must be lower-case letters, digits and dashes")
            continue
        where = f"{path}: lesson {i} ({slug})"
        if slug in seen:
            problems.append(f"{where}: duplicate slug; each lesson needs its own")
        seen.add(slug)
        template = raw.get("template", slug)
        lesson_title = raw.get("title")
        delay = raw.get("delay_days")
        if not isinstance(lesson_title, str) or not lesson_title.strip():
            problems.append(f"{where}: needs a title")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 365:
            problems.append(f"{where}: delay_days must be a number from 0 to 365")
            delay = 0
        skip_if_past = raw.get("skip_if_past", False)
        if not isinstance(skip_if_past, bool):
            problems.append(f"{where}: skip_if_past must be true or false")
            skip_if_past = False
        for suffix in (".html", ".txt"):
            if not (emails_dir / f"{template}{suffix}").is_file():
                problems.append(f"{where}: template {template}{suffix} is missing")
        lessons.append(
            Lesson(slug, str(template), str(lesson_title), float(delay), skip_if_past=skip_if_past)
        )
    if problems:
        raise CourseError(problems)
    return Course(
        title=str(title),
        window_start=start,
        window_end=end,
        lessons=tuple(lessons),
        send_days=days,
        newsletter_same_day=same_day,
    )
