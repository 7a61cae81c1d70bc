"""How many requests the OpenAI-compatible teacher keeps in flight.

A hosted API answers 429 when it is full; a vLLM server does not: it queues, so every request in excess of
what it runs at once only waits longer, and a tight ``timeout_s`` fires on work the server still finishes (the
retry then pays for it twice). Two limits, both at most ``concurrency`` and both halved on a 429:

- :class:`ConcurrencyLimit` (``limit = "fixed"``): ``concurrency`` in flight, grown back by one per window of
  successes after a 429;
- :class:`QueueAwareLimit` (``limit = "adaptive"``, the default): finds the server's knee. It starts small and
  doubles while nothing says the server is full, then moves by one. Full is what the server says where it can
  (vLLM's Prometheus gauges ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc``, read from its
  ``/metrics``: requests waiting means the limit is past what it runs at once, so the limit drops to what it
  runs), and what the replies say everywhere: once a window of replies the median seconds per completion token
  is held against the best window's (the unloaded service time, let go by 1% a second) as TCP Vegas does, and the limit shrinks when
  the estimated queue, ``limit * (1 - best / recent)``, exceeds ``beta`` (30% of the limit, at least 2) and grows
  when it is under ``alpha`` (10%, at least 1) and the limit was used up.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time


class ConcurrencyLimit:
    """At most ``limit`` requests in flight; 429s halve it, each ``limit`` successes in a row add one back."""

    def __init__(self, maximum: int) -> None:
        self.maximum = self.limit = maximum
        self.active = 0
        self.peak = 0  # the most in flight at once, for the job summary
        self._streak = 0
        self._last_cut = 0.0
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.active < self.limit)
            self.active += 1
            self.peak = max(self.peak, self.active)

    async def release(self, throttled: bool = False, latency: float | None = None, tokens: int = 0) -> None:
        """One request done: ``throttled`` if any attempt got a 429; ``latency`` and ``tokens`` of its answer."""
        async with self._cond:
            self.active -= 1
            if throttled:
                self._halve()
            else:
                self._succeeded(latency, tokens)
            self._cond.notify_all()

    def observe(self, waiting: float, running: float, kv_usage: float | None) -> None:
        """What the server says about its own load (summed over its endpoints); this limit does not listen."""

    def _halve(self) -> None:
        now = time.monotonic()
        if now - self._last_cut > 1.0:
            self.limit, self._streak, self._last_cut = max(1, self.limit // 2), 0, now

    def _succeeded(self, latency: float | None, tokens: int) -> None:
        self._streak += 1
        if self._streak >= self.limit and self.limit < self.maximum:
            self.limit, self._streak = self.limit + 1, 0


class QueueAwareLimit(ConcurrencyLimit):
    """The server's knee: see the module's docstring. ``start``: the first limit (doubled until the server is full)."""

    FULL_KV = 0.95  # KV cache this full: new requests wait for blocks, however few are counted waiting
    DRIFT = 0.01  # a second: how fast the remembered unloaded service time lets go

    def __init__(self, maximum: int, start: int = 4) -> None:
        super().__init__(maximum)
        self.limit = min(start, maximum)
        self.best = math.inf  # the best recent window's median seconds per completion token: the unloaded service time
        self._adjusted = time.monotonic()
        self.changes: list[tuple[float, int]] = [(time.monotonic(), self.limit)]  # (when, limit): how it moved
        self._window: list[float] = []
        self._window_peak = 0
        self._server: tuple[float, float, float | None] | None = None
        self._slow_start = True

    def observe(self, waiting: float, running: float, kv_usage: float | None) -> None:
        self._server = (waiting, running, kv_usage)

    async def acquire(self) -> None:
        await super().acquire()
        self._window_peak = max(self._window_peak, self.active)

    def _halve(self) -> None:
        super()._halve()
        self._slow_start = False
        self._moved()

    def _succeeded(self, latency: float | None, tokens: int) -> None:
        if latency is None:
            return
        self._window.append(latency / max(tokens, 1))
        if len(self._window) >= max(4, self.limit):
            self._adjust(statistics.median(self._window))
            self._window, self._window_peak = [], self.active

    def _adjust(self, recent: float) -> None:
        now = time.monotonic()
        # the best drifts up by DRIFT a second, so a server that got slower for good is re-learned; near the knee the
        # limit keeps dipping to what the server runs at once, and those windows bring the best back down
        self.best = min(self.best * (1 + self.DRIFT) ** (now - self._adjusted), recent)
        self._adjusted = now
        queue = self.limit * (1 - self.best / recent)
        # Vegas keeps alpha..beta requests queued; an LLM server's queue is all latency, so the band is a share of the limit
        alpha, beta = max(1.0, 0.1 * self.limit), max(2.0, 0.3 * self.limit)
        waiting, running, kv_usage = self._server or (0.0, 0.0, None)
        if waiting > 0 or (kv_usage is not None and kv_usage >= self.FULL_KV):
            # what the server runs at once is its knee (a snapshot: never below half the limit at one step)
            self.limit = max(1, min(self.limit - 1, max(int(running), self.limit // 2)))
            self._slow_start = False
        elif queue > beta:
            self.limit = max(1, self.limit - max(1, int(queue - beta)))
            self._slow_start = False
        elif queue < alpha and self._window_peak >= self.limit:  # grow only a limit that is used up
            self.limit = min(self.maximum, self.limit * 2 if self._slow_start else self.limit + 1)
        else:
            return
        self._moved()

    def _moved(self) -> None:
        if self.changes[-1][1] != self.limit:
            self.changes.append((time.monotonic(), self.limit))
