"""backend.warm: parsing OLLAMA_WARM_SCHEDULE and "warm at time T?", across days and DST."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from backend.warm import ScheduleError, parse_schedule, wanted_containers
from config import ConfigError, load_settings

BERLIN_OFFICE = parse_schedule("Mon-Fri 08:30-18:00 Europe/Berlin")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("when", "warm"),
    [
        ("2026-01-05T07:30:00", True),  # Monday 08:30 in Berlin (CET, UTC+1): the window opens
        ("2026-01-05T07:29:59", False),
        ("2026-01-05T16:59:59", True),
        ("2026-01-05T17:00:00", False),  # 18:00 CET: closed
        ("2026-07-06T06:30:00", True),  # Monday 08:30 in summer (CEST, UTC+2): two hours before UTC 08:30
        ("2026-07-06T06:29:00", False),
        ("2026-07-06T15:59:00", True),
        ("2026-07-06T16:00:00", False),
        ("2026-01-10T10:00:00", False),  # Saturday
        ("2026-01-09T16:00:00", True),  # Friday
        # The days DST changes (Sunday, so move to the Monday after): the window follows the wall clock.
        ("2026-03-30T06:30:00", True),  # first Monday of CEST
        ("2026-03-30T07:29:00", True),
        ("2026-10-26T07:30:00", True),  # first Monday of CET again
        ("2026-10-26T06:30:00", False),
    ],
)
def test_warm_follows_the_wall_clock_of_the_zone(when, warm):
    assert BERLIN_OFFICE.is_warm(utc(when)) is warm


def test_a_window_past_midnight_belongs_to_the_day_it_starts():
    late = parse_schedule("Fri 22:00-02:00 UTC")
    assert late.is_warm(utc("2026-01-09T23:00:00"))  # Friday night
    assert late.is_warm(utc("2026-01-10T01:59:00"))  # Saturday morning, still Friday's window
    assert not late.is_warm(utc("2026-01-10T02:00:00"))
    assert not late.is_warm(utc("2026-01-08T23:00:00"))  # Thursday night
    assert not late.is_warm(utc("2026-01-09T01:00:00"))  # Friday morning: Thursday is not listed


def test_several_windows_ranges_that_wrap_and_24_00():
    schedule = parse_schedule("Sat-Sun 10:00-24:00, Fri-Mon 06:00-07:00 America/New_York")
    assert schedule.is_warm(utc("2026-01-11T04:59:00"))  # Saturday 23:59 in New York
    assert schedule.is_warm(utc("2026-01-12T11:30:00"))  # Monday 06:30
    assert not schedule.is_warm(utc("2026-01-13T11:30:00"))  # Tuesday 06:30


def test_the_zone_defaults_to_utc():
    assert parse_schedule("Mon-Fri 08:30-18:00").is_warm(utc("2026-01-05T08:30:00"))


def test_the_container_is_wanted_a_little_before_the_window_opens():
    assert wanted_containers(BERLIN_OFFICE, utc("2026-01-05T07:26:00"), lead=timedelta(minutes=5)) == 1
    assert wanted_containers(BERLIN_OFFICE, utc("2026-01-05T07:20:00"), lead=timedelta(minutes=5)) == 0
    assert wanted_containers(BERLIN_OFFICE, utc("2026-01-05T17:00:00"), lead=timedelta(minutes=5)) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Mon-Fry 08:30-18:00", "'Fry' is not a day"),
        ("Mon-Fri 08:30-18:00 Mars/Olympus", "'Mars/Olympus' is not an IANA time zone"),
        ("Mon-Fri 8:30", "'Mon-Fri 8:30' is not a window"),
        ("Mon 25:00-26:00", "'25:00' is not a time of day"),
        ("Mon 09:00-09:00", "starts and ends at the same time"),
        ("weekdays 09:00-17:00", "is not a window"),
    ],
)
def test_bad_schedules_say_what_is_wrong(text, message):
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(text)


def test_config_refuses_a_bad_schedule_naming_the_variable():
    with pytest.raises(ConfigError, match=r"OLLAMA_WARM_SCHEDULE='Mon 9-5': .* expected windows such as 'Mon-Fri 08:30-18:00 Europe/Berlin'"):
        load_settings({"OLLAMA_WARM_SCHEDULE": "Mon 9-5"})
    assert load_settings({"OLLAMA_WARM_SCHEDULE": " Mon-Fri 08:30-18:00 Europe/Berlin "}).ollama_warm_schedule == "Mon-Fri 08:30-18:00 Europe/Berlin"


def test_an_aware_time_is_required():
    with pytest.raises(ValueError, match="aware"):
        BERLIN_OFFICE.is_warm(datetime(2026, 1, 5, 8, 30))


def test_apply_schedule_sets_min_containers_on_the_backend_instance():
    from backend.warm import apply_schedule

    class Backend:  # OllamaBackend(): update_autoscaler on a Cls instance, as modal 1.6 has it
        def __init__(self) -> None:
            self.calls: list[dict] = []

        def update_autoscaler(self, *, min_containers=None, max_containers=None, scaledown_window=None, buffer_containers=None):
            self.calls.append({"min_containers": min_containers})

    backend = Backend()
    schedule = "Mon-Fri 08:30-18:00 Europe/Berlin"
    assert apply_schedule(schedule, backend, utc("2026-01-05T07:25:00"), timedelta(minutes=5)) == 1  # 08:25 in Berlin
    assert apply_schedule(schedule, backend, utc("2026-01-05T17:00:00"), timedelta(minutes=5)) == 0
    assert backend.calls == [{"min_containers": 1}, {"min_containers": 0}]


def test_windows_over_the_missing_and_the_repeated_hour():
    night = parse_schedule("Sun 02:00-03:00 Europe/Berlin")
    assert not night.is_warm(utc("2026-03-29T00:59:00"))  # 01:59 CET; 02:00-03:00 does not exist that night
    assert not night.is_warm(utc("2026-03-29T01:00:00"))  # 03:00 CEST
    assert night.is_warm(utc("2026-10-25T00:30:00"))  # 02:30 CEST, the first time
    assert night.is_warm(utc("2026-10-25T01:30:00"))  # 02:30 CET, the second time
    assert not night.is_warm(utc("2026-10-25T02:00:00"))  # 03:00 CET
