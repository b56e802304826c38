"""Cron strings as cron reads them, in UTC: five fields (minute hour day-of-month month day-of-week, Sunday = 0
or 7, names such as mon or jan), or one of @yearly (@annually), @monthly, @weekly, @daily (@midnight), @hourly.

The day rule is cron's (POSIX, and Vixie cron, cronie): when day-of-month and day-of-week are both restricted
(neither starts with `*`), a day matches if EITHER does: "0 6 1 * 1" fires on the 1st of each month and on every
Monday. Otherwise both must match (one of them is `*`, so the other decides). Celery's own crontab requires both
always, so beat runs with CronSchedule, which keeps Celery's field parsing and uses this rule for the times.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from celery.schedules import crontab

FIELDS = "minute hour day-of-month month day-of-week"
ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
           "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
SEARCH_LIMIT = 6000  # steps of the fire-time search; a few hundred cover any real cron string


class CronSchedule(crontab):
    """Celery's crontab with cron's day rule, so beat fires when `dreamgen schedules` says it will."""

    def remaining_estimate(self, last_run_at: datetime, ffwd=None) -> timedelta:
        last = self.maybe_make_aware(last_run_at).astimezone(timezone.utc)
        now = self.maybe_make_aware(self.now()).astimezone(timezone.utc)
        return next_fire_times(self, 1, last)[0] - now

    @property
    def either_day(self) -> bool:
        """Whether a day matches on day-of-month OR day-of-week (both restricted), rather than on both."""
        return not (str(self._orig_day_of_month).startswith("*") or str(self._orig_day_of_week).startswith("*"))


def parse_cron(cron: str) -> CronSchedule:
    """The schedule of a cron string; ValueError saying what is wrong."""
    text = ALIASES.get(cron.strip().lower(), cron) if cron.strip().startswith("@") else cron
    if text.strip().startswith("@"):
        raise ValueError(f"{cron!r} is not a time; use five fields ({FIELDS}) or one of {', '.join(ALIASES)}")
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"{cron!r} needs 5 fields ({FIELDS}), got {len(fields)}")
    minute, hour, day_of_month, month, day_of_week = fields
    day_of_week = ",".join(_sunday_as_zero(part) for part in day_of_week.split(","))
    try:
        return CronSchedule(minute=minute, hour=hour, day_of_week=day_of_week, day_of_month=day_of_month,
                            month_of_year=month)
    except ValueError as e:
        raise ValueError(f"{cron!r}: {e}") from None


def _sunday_as_zero(part: str) -> str:
    """Cron's Sunday 7 in Celery's words (0-6): "7" -> "0", "5-7" -> "5-6,0"."""
    if part == "7":
        return "0"
    if part.endswith("-7") and part[:-2].isdigit():
        return f"{part[:-2]}-6,0"
    return part


def matches_day(tab: CronSchedule, t: datetime) -> bool:
    if t.month not in tab.month_of_year:
        return False
    on_month_day, on_week_day = t.day in tab.day_of_month, t.isoweekday() % 7 in tab.day_of_week
    return (on_month_day or on_week_day) if tab.either_day else (on_month_day and on_week_day)


def previous_fire_time(tab: CronSchedule, now: datetime) -> datetime:
    """The latest fire time at or before `now` (UTC, whole minutes)."""
    t = minute_of(now)
    for _ in range(SEARCH_LIMIT):
        if not matches_day(tab, t):
            t = t.replace(hour=0, minute=0) - timedelta(minutes=1)  # the last minute of the day before
        elif t.hour not in tab.hour:
            t = t.replace(minute=0) - timedelta(minutes=1)
        elif t.minute not in tab.minute:
            t -= timedelta(minutes=1)
        else:
            return t
    raise ValueError(f"no fire time of {tab} found before {now}")


def next_fire_times(tab: CronSchedule, count: int, now: datetime) -> list[datetime]:
    """The next `count` fire times after `now` (UTC)."""
    t = minute_of(now) + timedelta(minutes=1)
    found = []
    for _ in range(SEARCH_LIMIT * max(count, 1)):
        if len(found) == count:
            break
        if not matches_day(tab, t):
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
        elif t.hour not in tab.hour:
            t = t.replace(minute=0) + timedelta(hours=1)
        elif t.minute not in tab.minute:
            t += timedelta(minutes=1)
        else:
            found.append(t)
            t += timedelta(minutes=1)
    return found


def minute_of(t: datetime) -> datetime:
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).replace(second=0, microsecond=0)
