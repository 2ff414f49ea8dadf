"""Progress for long work: a bar on a terminal, a plain line every tenth otherwise; a ticker for phases."""

from __future__ import annotations

import sys
import threading
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


class Ticker:
    """On a terminal, a line that shows a phase of work and how long it has run, until it ends.

    Training phases log one line when they end; a phase can take minutes, and a
    terminal with nothing moving looks hung.  Off a terminal it shows nothing.
    """

    def __init__(self, label: str, stream=None, every: float = 0.5):
        self.label, self.every = label, every
        self.stream = stream or sys.stderr
        self._done = threading.Event()
        self._thread = None
        if self.stream.isatty():
            self.start = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        spin = "|/-\\"
        i = 0
        while not self._done.wait(self.every):
            i += 1
            self.stream.write(f"\r{self.label} {spin[i % 4]} {time.monotonic() - self.start:.0f} s\033[K")
            self.stream.flush()

    def close(self) -> None:
        """Stop and clear the line, so the phase's own log line takes its place."""
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
