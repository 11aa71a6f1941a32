"""Progress as the studio shows it: what a run's progress bar says, and how long work has left.

A run launched from the studio writes its console (progress bars included) to a file; the bar
of the step now running is the last line of it. octrain's samplers and TRL's trainers draw
their bars with tqdm, whose line carries everything worth showing:
``teacher answers:  45%|####5     | 9/20 [00:10<00:12,  1.10seq/s]``: the step, the count,
the time spent and tqdm's own estimate of the time left. :func:`parse_bar` reads it back.

Work the studio does itself (a data preview) has no tqdm: :class:`Countdown` keeps the same
figures for it, estimating the time left from the mean time per unit so far.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

# tqdm's default layout: "{desc}: {percentage}%|{bar}| {n}/{total} [{elapsed}<{remaining}, {rate}{postfix}]"
_BAR = re.compile(
    r"^(?:(?P<desc>.*?):\s*)?(?P<percent>\d{1,3})%\|[^|]*\|\s*(?P<done>[\d.]+[kMG]?)/(?P<total>[\d.]+[kMG]?)"
    r"(?:\s*\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:]+|\?))?"
)


@dataclass(frozen=True)
class BarState:
    """One tqdm line, read back: ``remaining`` is None while tqdm has no estimate yet (``<?``)."""

    desc: str
    fraction: float
    done: str
    total: str
    elapsed: float | None
    remaining: float | None


def clock_seconds(text: str) -> float | None:
    """``"1:02:03"``, ``"02:03"`` or ``"03"`` as seconds; None for anything else (tqdm's ``?``)."""
    parts = text.split(":")
    if not all(part.isdigit() for part in parts) or len(parts) > 3:
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(seconds)


def parse_bar(line: str) -> BarState | None:
    """The state a tqdm progress line shows, or None when the line is not a progress bar."""
    match = _BAR.search(line.strip())
    if match is None:
        return None
    elapsed = match.group("elapsed")
    remaining = match.group("remaining")
    return BarState(
        desc=(match.group("desc") or "").strip(),
        fraction=min(int(match.group("percent")), 100) / 100,
        done=match.group("done"),
        total=match.group("total"),
        elapsed=clock_seconds(elapsed) if elapsed else None,
        remaining=clock_seconds(remaining) if remaining else None,
    )


def duration_text(seconds: float | None) -> str:
    """``h:mm:ss`` or ``m:ss``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def time_left_text(seconds: float | None) -> str:
    """``about m:ss left``, or ``estimating time left`` while there is no estimate yet."""
    return "estimating time left" if seconds is None else f"about {duration_text(seconds)} left"


def bar_label(state: BarState) -> str:
    """What the studio writes on a bar: the step, its count, and the time left on it."""
    return f"{state.desc or 'working'}: {state.done}/{state.total} · {time_left_text(state.remaining)}"


@dataclass
class Countdown:
    """Progress over ``total`` units of the studio's own work, with the time left estimated.

    The estimate is the mean time per finished unit times the units left: rough for units of
    different sizes (loading a model, then answering), which is why the page says "about".
    """

    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def advance(self, units: int = 1) -> None:
        self.done = min(self.total, self.done + units)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def remaining(self) -> float | None:
        """Seconds left, estimated; None before the first unit is done."""
        if self.done == 0:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def label(self, step: str) -> str:
        return f"{step} ({self.done}/{self.total}) · {time_left_text(self.remaining)}"
