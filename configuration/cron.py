"""Cron expressions as `schedule.cron` takes them: five fields (minute, hour, day of month, month, day of week),
each `*`, a number, a name (`jan`, `mon`), a range `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list.
Times are UTC. Day of week 0 and 7 are Sunday, as in crontab(5).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import FrozenSet, List, Tuple

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names counted from `lowest`)
_FIELDS: Tuple[Tuple[str, int, int, Tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: FrozenSet[int]
    hours: FrozenSet[int]
    days: FrozenSet[int]
    months: FrozenSet[int]
    weekdays: FrozenSet[int]  # 0 = Sunday
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`

    def matches(self, moment: datetime.datetime) -> bool:
        """Whether the job fires in this minute (UTC). As in cron, when both day fields are restricted, either
        matching is enough."""
        weekday = (moment.weekday() + 1) % 7
        day_ok = moment.day in self.days
        weekday_ok = weekday in self.weekdays
        if self.any_day or self.any_weekday:
            days_ok = day_ok and weekday_ok
        else:
            days_ok = day_ok or weekday_ok
        return moment.minute in self.minutes and moment.hour in self.hours and moment.month in self.months and days_ok


def _number(token: str, low: int, names: Tuple[str, ...], field: str) -> int:
    lowered = token.lower()
    if lowered in names:
        return names.index(lowered) + low
    if not token.isdigit():
        raise ValueError(f"invalid {field} {token!r}")
    return int(token)


def _parse_field(text: str, field: str, low: int, high: int, names: Tuple[str, ...]) -> FrozenSet[int]:
    values: set = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"invalid step in {field} {part!r}")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        else:
            start, dash, end = base.partition("-")
            first = _number(start, low, names, field)
            last = _number(end, low, names, field) if dash else (high if slash else first)
        if not (low <= first <= high and low <= last <= high) or first > last:
            raise ValueError(f"{field} {part!r} is out of range ({low}-{high})")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(text: str) -> Cron:
    if not isinstance(text, str):
        raise ValueError(f"invalid cron expression {text!r}: expected a string")
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"invalid cron expression {text!r}: expected 5 fields (minute hour day month weekday), "
                         f"got {len(fields)}")
    parsed: List[FrozenSet[int]] = []
    for value, (field, low, high, names) in zip(fields, _FIELDS):
        try:
            parsed.append(_parse_field(value, field, low, high, names))
        except ValueError as e:
            raise ValueError(f"invalid cron expression {text!r}: {e}") from None
    weekdays = frozenset(d % 7 for d in parsed[4])
    return Cron(text, parsed[0], parsed[1], parsed[2], parsed[3], weekdays,
                any_day=fields[2] == "*", any_weekday=fields[4] == "*")
