"""Progress for long work: a bar on a terminal, a plain line every tenth otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """Report ``done`` out of ``total`` units of work under a label, on standard error."""

    def __init__(self, label: str, total: int | None, unit: str = "", stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last_tenth = -1

    def update(self, done: int) -> None:
        if not self.total:
            return
        fraction = min(1.0, done / self.total)
        if self.tty:
            bar = "#" * int(fraction * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {fraction:6.1%} {done}/{self.total}{self.unit}")
            self.stream.flush()
        elif int(fraction * 10) > self._last_tenth:
            self._last_tenth = int(fraction * 10)
            self.stream.write(f"{self.label}: {fraction:.0%} ({done} of {self.total}{self.unit}, "
                              f"{time.monotonic() - self.start:.1f} s)\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty and self.total:
            self.stream.write("\n")
            self.stream.flush()
