"""A process-wide bound on the decoded pixels in memory at once.

An image at the pixel caps costs hundreds of MB while it is decoded (Pillow keeps RGB at 4 bytes a pixel, and
the analysis makes a crop of it), so the threads of one process that decode (the embedded analysis, audits'
robustness checks) share one budget: a decode holds its image's pixel count, counted after JPEG draft
reduction, until the analysis is done with the pixels, and waits while the budget is spent.  An image larger
than the whole budget waits until it can run alone.  Waiters are served in arrival order, so a large image is
never starved by a stream of small ones."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

# Two images at the 24 Mpx cap of the formats without a draft mode (a JPEG of at least 4096 px on both sides
# decodes at half size, a quarter of the pixels, and counts that).  README.md says what it costs.
DECODE_BUDGET_PIXELS = 48 * 1024 * 1024


class PixelBudget:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the pixel budget must be positive")
        self.capacity = capacity
        self.peak = 0  # the most pixels held at once since creation (or ``reset_peak``)
        self._held = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        with self._changed:
            return self._held

    @property
    def waiting(self) -> int:
        """Holders queued for their share."""
        with self._changed:
            return len(self._queue)

    def reset_peak(self) -> None:
        with self._changed:
            self.peak = self._held

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` for the block, waiting (in arrival order) until they fit; at most the capacity is
        counted against the others, so an image larger than the budget runs alone."""
        charge = min(max(pixels, 0), self.capacity)
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            self._changed.wait_for(lambda: self._queue[0] is ticket and self._held + charge <= self.capacity)
            self._queue.popleft()
            self._held += charge
            # an image larger than the budget is alone: what it really holds is its own size
            self.peak = max(self.peak, self._held if charge == pixels else pixels)
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._held -= charge
                self._changed.notify_all()


DECODE_BUDGET = PixelBudget(DECODE_BUDGET_PIXELS)
