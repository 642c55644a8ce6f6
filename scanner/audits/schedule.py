"""Schedules: ``every 6h`` / ``every 30s`` intervals, or 5-field cron expressions (croniter does the calendar
arithmetic: month lengths, day-of-week/day-of-month rules and ranges are easy to get subtly wrong by hand).

The missed-run policy decides what a tick does with a slot that passed while no scheduler was running:
``run-once`` runs it once now (however many slots were missed), ``skip`` drops it and waits for the next
future slot.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from croniter import croniter

MISSED_POLICIES = ("run-once", "skip")
_INTERVAL = re.compile(r"^every\s+(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MIN_INTERVAL = dt.timedelta(seconds=1)
MAX_INTERVAL = dt.timedelta(days=1000)


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; ``text`` is what is stored in ``audits.schedule``."""

    text: str
    interval: dt.timedelta | None = None
    cron: str | None = None

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first slot strictly after ``moment`` (UTC)."""
        if self.interval is not None:
            return moment + self.interval
        assert self.cron is not None
        return croniter(self.cron, moment.astimezone(dt.UTC)).get_next(dt.datetime)


def parse(text: str) -> Schedule:
    """``every 6h``, ``every 30s``, ``every 2d``, or a 5-field cron expression such as ``0 3 * * *`` (UTC)."""
    text = text.strip()
    match = _INTERVAL.match(text)
    if match:
        amount = int(match.group(1))
        if amount > 10**6:
            raise ValueError("an interval must be at most a million units")
        interval = dt.timedelta(**{_UNITS[match.group(2)]: amount})
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise ValueError("an interval must be from 1 second to 1000 days")
        return Schedule(f"every {match.group(1)}{match.group(2)}", interval=interval)
    if len(text.split()) == 5 and croniter.is_valid(text):
        return Schedule(text, cron=text)
    raise ValueError(f"a schedule is 'every <n><s|m|h|d>' or a 5-field cron expression, not {text!r}")


def interval_text(every: str) -> str:
    """``6h`` (the CLI's ``--every``) as a schedule."""
    return f"every {every.strip()}"


def next_slot(
    schedule: Schedule, due: dt.datetime, now: dt.datetime, policy: str, grace: dt.timedelta
) -> tuple[bool, dt.datetime]:
    """For a slot ``due`` that has come (``due <= now``): whether to run now, and the next slot to store.

    The next slot is always in the future, so a scheduler that was down never works through a backlog slot by
    slot.  A slot is *missed* when it came more than ``grace`` (a few ticks) ago: ``run-once`` still runs it
    (once, whatever the number of slots missed), ``skip`` drops it."""
    if policy not in MISSED_POLICIES:
        raise ValueError(f"missed-run policy must be one of {MISSED_POLICIES}, not {policy!r}")
    run = policy == "run-once" or now - due <= grace
    if schedule.interval is not None:  # keep the phase of the interval: due + k * interval
        steps = (now - due) // schedule.interval + 1
        return run, due + steps * schedule.interval
    return run, schedule.next_after(now)
