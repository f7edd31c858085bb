"""How course days map to real time, and how emails and pages say it.

`drip dev --minutes-per-day` compresses a day to minutes, so the words ("tomorrow
morning", "in about 2 minutes") come from the same place as the delays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from drip.course import Course


@dataclass(frozen=True)
class Pace:
    """How course days map to real time; `drip dev --minutes-per-day` compresses it."""

    minutes_per_day: float | None = None

    def delay(self, days: float) -> timedelta:
        if self.minutes_per_day is not None:
            return timedelta(minutes=days * self.minutes_per_day)
        return timedelta(days=days)

    @property
    def uses_window(self) -> bool:
        return self.minutes_per_day is None

    def after(self, days: float) -> str:
        """When something `days` course days away arrives, as a page or an email says it."""
        if self.minutes_per_day is None:  # real days: lessons go out in the morning
            return "tomorrow morning" if days <= 1 else f"in {round(days)} days"
        minutes = round(days * self.minutes_per_day)
        if minutes < 1:
            return "in a few seconds"
        return f"in about {minutes} minute{'s' if minutes != 1 else ''}"

    def later(self, days: float) -> str:
        """How long after something another comes, `days` course days on, in words."""
        if self.minutes_per_day is None:
            return "a day later" if days <= 1 else f"{round(days)} days later"
        minutes = round(days * self.minutes_per_day)
        if minutes < 1:
            return "seconds later"
        return f"about {minutes} minute{'s' if minutes != 1 else ''} later"

    def first_lesson(self, course: Course) -> dict[str, str]:
        """When the first lesson comes, for emails: `first_lesson` from now (the welcome
        goes at confirmation), `first_lesson_later` from a confirmation yet to happen."""
        days = course.lessons[0].delay_days if course.lessons else 1
        return {"first_lesson": self.after(days), "first_lesson_later": self.later(days)}

    def span(self, days: float) -> str:
        """How long `days` course days last, in words."""
        if self.minutes_per_day is None:
            weeks = max(1, round(days / 7))
            return f"about {weeks} week{'s' if weeks != 1 else ''}"
        minutes = max(1, round(days * self.minutes_per_day))
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"


#: Course days as real days: every pace but `drip dev --minutes-per-day`'s.
REAL_DAYS = Pace()
