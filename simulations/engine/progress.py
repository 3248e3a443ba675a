"""Progress for long loops: a tqdm bar on a terminal, plain periodic lines in a log file."""

from __future__ import annotations

import sys
import time
from typing import Iterable

LINE_INTERVAL_SECONDS = 30.0
"""Seconds between two plain progress lines when stderr is not a terminal."""


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class LineProgress:
    """The part of tqdm's interface we use, writing one line ("desc: 40/300 steps (13%), 0:12 elapsed,
    ETA 1:18") at most every `interval` seconds and one at the end, so that a log file stays readable."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, initial: int = 0, desc: str = "",
                 unit: str = "it", interval: float = LINE_INTERVAL_SECONDS, stream=None):
        self.iterable = iterable
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.count = self.initial = initial
        self.desc, self.unit, self.interval = desc, unit, interval
        self.stream = stream or sys.stderr
        self.started = self.last = time.perf_counter()
        self.closed = False
        self.written, self.written_count = False, initial

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        self.count += count
        if time.perf_counter() - self.last >= self.interval:
            self._write()

    def close(self) -> None:
        # A loop too short for a periodic line stays silent; one whose last count is written ends there.
        if not self.closed and self.written and self.written_count != self.count:
            self._write()
        self.closed = True

    def _write(self) -> None:
        now = time.perf_counter()
        self.last, self.written, self.written_count = now, True, self.count
        elapsed = now - self.started
        done = self.count - self.initial
        line = f"{self.desc}: {self.count}"
        if self.total:
            line += f"/{self.total} {self.unit} ({100 * self.count / self.total:.0f}%)"
            if 0 < done and self.count < self.total:
                line += f", {_duration(elapsed)} elapsed, ETA {_duration(elapsed / done * (self.total - self.count))}"
            else:
                line += f", {_duration(elapsed)}"
        else:
            line += f" {self.unit}, {_duration(elapsed)}"
        print(line, file=self.stream, flush=True)


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **options):
    """tqdm when stderr is a terminal; `LineProgress` otherwise; a plain pass-through when not `enabled`.
    Options: total, initial, desc, unit, leave (terminal only)."""
    from tqdm.auto import tqdm

    if not enabled:
        return tqdm(iterable, disable=True, **options)
    if sys.stderr.isatty():
        return tqdm(iterable, **options)
    options.pop("leave", None)
    return LineProgress(iterable, **options)
