"""Warm windows: hours in which one GPU container is kept up (OLLAMA_WARM_SCHEDULE).

    OLLAMA_WARM_SCHEDULE="Mon-Fri 08:30-18:00 Europe/Berlin"
    OLLAMA_WARM_SCHEDULE="Mon-Fri 08:00-19:00, Sat 10:00-14:00 America/New_York"

Windows are `DAYS HH:MM-HH:MM`, separated by commas, in one IANA time zone given last
(UTC if none). DAYS is a day (`Mon`) or a range (`Mon-Fri`, `Fri-Mon`, `Mon-Sun`); an end
before the start runs past midnight (`Fri 22:00-02:00`), and `24:00` ends a day. Times
are wall-clock times in that zone, so a window follows daylight saving time.

A Modal cron function (app.py) runs `apply_schedule()` every 5 minutes, on the clock's
5-minute marks: it sets the backend's `min_containers` to what the schedule wants, and
Modal's own autoscaler keeps the container up.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"(?P<days>[A-Za-z]{3}(?:-[A-Za-z]{3})?)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})")
_ZONE = re.compile(r"[A-Za-z_]+(?:/[A-Za-z0-9_+-]+)*")  # UTC, Europe/Berlin, America/Argentina/Salta
EXAMPLE = "Mon-Fri 08:30-18:00 Europe/Berlin"


class ScheduleError(ValueError):
    """Not a schedule this module understands."""


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time | None  # None: midnight at the end of the day (24:00)

    def covers(self, local: datetime) -> bool:
        now = local.time()
        end = self.end or time.max
        if self.end is None or self.start < end:  # within one day
            return local.weekday() in self.days and self.start <= now < end
        # Past midnight: the evening of a listed day, or the morning after one.
        return (local.weekday() in self.days and now >= self.start) or ((local.weekday() - 1) % 7 in self.days and now < end)


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...]
    zone: ZoneInfo

    def is_warm(self, when: datetime) -> bool:
        """Is `when` (an aware datetime, any zone) inside a window?"""
        if when.tzinfo is None:
            raise ValueError("is_warm needs an aware datetime")
        local = when.astimezone(self.zone)
        return any(window.covers(local) for window in self.windows)


def _day(name: str) -> int:
    try:
        return DAYS.index(name.lower())
    except ValueError:
        raise ScheduleError(f"{name!r} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)") from None


def _time(text: str, allow_24: bool) -> time | None:
    hours, minutes = (int(part) for part in text.split(":"))
    if allow_24 and (hours, minutes) == (24, 0):
        return None
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ScheduleError(f"{text!r} is not a time of day (HH:MM)")
    return time(hours, minutes)


def parse_schedule(text: str) -> Schedule:
    """`Mon-Fri 08:30-18:00 Europe/Berlin` -> Schedule; raises ScheduleError."""
    parts = text.strip().rsplit(None, 1)
    zone_name = "UTC"
    if len(parts) == 2 and _ZONE.fullmatch(parts[1]):
        text, zone_name = parts
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{zone_name!r} is not an IANA time zone (such as Europe/Berlin or UTC)") from None
    windows = []
    for raw in text.split(","):
        match = _WINDOW.fullmatch(raw.strip())
        if match is None:
            raise ScheduleError(f"{raw.strip()!r} is not a window: expected DAYS HH:MM-HH:MM, as in {EXAMPLE!r}")
        first, _, last = match["days"].partition("-")
        start_day = _day(first)
        span = (_day(last) - start_day) % 7 if last else 0
        days = frozenset((start_day + i) % 7 for i in range(span + 1))
        start, end = _time(match["start"], allow_24=False), _time(match["end"], allow_24=True)
        if start == end:
            raise ScheduleError(f"{raw.strip()!r} starts and ends at the same time")
        windows.append(Window(days, start, end))
    return Schedule(tuple(windows), zone)


def wanted_containers(schedule: Schedule, now: datetime, lead: timedelta = timedelta(minutes=5)) -> int:
    """1 if a container should be up now or within `lead` (the cron's period: a window's
    container starts before the window does), else 0."""
    return 1 if schedule.is_warm(now) or schedule.is_warm(now + lead) else 0


def apply_schedule(schedule: str, backend: Any, now: datetime, lead: timedelta) -> int:
    """Set `backend`'s (an `OllamaBackend()` instance's) min_containers for `now`.

    `update_autoscaler` on a Cls instance is modal 1.6's way; the override lasts until the
    next deploy, and the cron sets it again within minutes."""
    wanted = wanted_containers(parse_schedule(schedule), now, lead)
    backend.update_autoscaler(min_containers=wanted)
    log.info("warm windows %r: min_containers=%d", schedule, wanted)
    return wanted
