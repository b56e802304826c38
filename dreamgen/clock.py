"""UTC timestamps as dreamgen writes them everywhere: ISO 8601 to the second, ending in "Z"."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_text(moment: datetime | float | None = None) -> str:
    """`moment` (a datetime, epoch seconds, or now) as e.g. 2026-11-28T10:15:00Z."""
    if moment is None:
        moment = datetime.now(timezone.utc)
    elif not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(float(moment), timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def utc_now() -> str:
    return utc_text()


def parse_utc(text: str) -> datetime:
    """The datetime of a timestamp written by utc_text (or any ISO 8601 text; naive means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
