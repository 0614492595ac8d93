"""How the client and the command word quantities for people: counts with their noun in the right
number, durations in the unit a person would use.

Client side, internal; pure functions on numbers.
"""

from __future__ import annotations

__all__ = ["clock", "count", "duration"]


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 request``, ``2 requests`` (``plural`` for nouns that do not take an ``s``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def duration(seconds: float) -> str:
    """``250 ms``, ``1 second``, ``45 seconds``, ``5 minutes``, ``1 minute 30 seconds``, ``2 hours``:
    rounded to the unit shown, never ``300 s`` or ``0.25 s``."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 1) if seconds > 0 else 0} ms"
    whole = round(seconds)
    if whole < 60:
        return count(whole, "second")
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return count(minutes, "minute") + (f" {count(rest, 'second')}" if rest else "")
    hours, minutes = divmod(minutes, 60)
    return count(hours, "hour") + (f" {count(minutes, 'minute')}" if minutes else "")


def clock(seconds: float) -> str:
    """A time left as a progress bar shows it: ``0:07``, ``12:05``, ``1:02:03``."""
    minutes, secs = divmod(max(round(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
