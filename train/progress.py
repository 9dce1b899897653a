"""A small progress bar on stderr (the GPU box may not have tqdm).

On a terminal it redraws one line in place, at most every ``interval`` seconds;
into a log file or pipe it writes a full line every ``log_interval`` seconds
and at the end, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(
        self,
        total: int,
        desc: str = "",
        stream: TextIO | None = None,
        enabled: bool = True,
        interval: float = 0.2,
        log_interval: float = 30.0,
        width: int = 24,
    ) -> None:
        self.total = max(total, 1)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.width = width
        self.start = time.perf_counter()
        self.done = 0
        self.offset = 0  # steps already done before this bar started (resume): not in the rate
        self.last_draw = float("-inf")
        self.postfix = ""

    def begin_at(self, done: int) -> None:
        self.done = self.offset = done

    def update(self, done: int, postfix: str = "", force: bool = False) -> None:
        self.done, self.postfix = done, postfix
        now = time.perf_counter()
        if self.enabled and (force or now - self.last_draw >= self.interval):
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = now - self.start
        rate = (self.done - self.offset) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = f"{self.desc} [{bar}] {self.done}/{self.total} {_clock(elapsed)}<{_clock(eta)} {self.postfix}".rstrip()
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, postfix: str | None = None) -> None:
        if postfix is not None:
            self.postfix = postfix
        if self.enabled:
            self._draw(time.perf_counter())
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
