"""A one-line progress bar for uploads: bytes, rate, time left (``m:ss``). Client-side, on stderr.

Shown only on a terminal and never with ``--quiet``; anywhere else it prints nothing, so logs and
pipes stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from enclave_infer.client._text import clock

__all__ = ["Progress"]

# Redraw at most this often: a terminal line per chunk would cost more than the upload.
REDRAW_SECONDS = 0.1
BAR_WIDTH = 28


class Progress:
    def __init__(
        self, total: int, *, label: str, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.label, self.done = max(total, 1), label, 0
        self._started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= REDRAW_SECONDS or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-6)
        rate = self.done / elapsed
        fraction = min(self.done / self.total, 1.0)
        filled = int(BAR_WIDTH * fraction)
        eta = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{self.done / 1e6:7.1f}/{self.total / 1e6:.1f} MB  {rate / 1e6:6.1f} MB/s  ETA {clock(eta):>7}"
        )
        self.stream.flush()
