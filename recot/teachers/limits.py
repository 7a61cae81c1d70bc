"""How many requests the OpenAI-compatible teacher keeps in flight.

A hosted API answers 429 when it is full; a vLLM server does not: it queues, so every request in excess of
what it runs at once only waits longer, and a tight ``timeout_s`` fires on work the server still finishes (the
retry then pays for it twice). Two limits, both at most ``concurrency`` and both halved on a 429:

- :class:`ConcurrencyLimit` (``limit = "fixed"``): ``concurrency`` in flight, grown back by one per window of
  successes after a 429;
- :class:`QueueAwareLimit` (``limit = "adaptive"``, the default): finds the server's knee. It starts at 4 and doubles
  while that pays, then settles and probes a quarter higher now and then. Where the server is vLLM it says itself
  whether it is full (its Prometheus gauges ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc`` from
  ``/metrics``): requests waiting mean the limit is past what it runs at once, so the limit drops to what it runs,
  and otherwise it grows. Any other server is judged by the answers per second of each window of replies: a limit is
  kept while raising it raises them (a server that queues gains nothing past its knee, so latency stops growing
  there; one that batches gains until its compute is full). Latency alone would mistake batching for queueing: on
  vLLM-CPU the answers per second rose 5x from 4 to 64 in flight while each request took 2x longer.
"""

from __future__ import annotations

import asyncio
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
    GAIN = 1.15  # a doubled limit must raise the answers per second this much, or the knee is behind
    PROBE_EVERY = 8  # windows at a settled limit between two probes a quarter higher

    def __init__(self, maximum: int, start: int = 4) -> None:
        super().__init__(maximum)
        self.limit = min(start, maximum)
        self.changes: list[tuple[float, int]] = [(time.monotonic(), self.limit)]  # (when, limit): how it moved
        self._answers, self._window_start, self._window_peak = 0, time.monotonic(), 0
        self._server: tuple[float, float, float | None] | None = None
        self._slow_start = True
        self._settled: tuple[int, float] | None = None  # (limit, answers per second) that paid last
        self._windows_settled = 0

    def observe(self, waiting: float, running: float, kv_usage: float | None) -> None:
        self._server = (waiting, running, kv_usage)

    async def acquire(self) -> None:
        await super().acquire()
        self._window_peak = max(self._window_peak, self.active)

    def _halve(self) -> None:
        super()._halve()
        self._slow_start, self._settled = False, None
        self._moved()

    def _succeeded(self, latency: float | None, tokens: int) -> None:
        self._answers += 1
        if self._answers >= max(8, 2 * self.limit):  # a window: enough answers for a rate at this limit
            now = time.monotonic()
            rate, used = self._answers / max(now - self._window_start, 1e-9), self._window_peak >= self.limit
            self._answers, self._window_start, self._window_peak = 0, now, self.active
            if self._server is not None:
                self._by_server(*self._server, used)
            else:
                self._by_rate(rate, used)
            self._moved()

    def _by_server(self, waiting: float, running: float, kv_usage: float | None, used: bool) -> None:
        """vLLM says whether it queues: the knee is what it runs at once."""
        if waiting > 0 or (kv_usage is not None and kv_usage >= self.FULL_KV):
            self.limit = max(1, min(self.limit - 1, max(int(running), self.limit // 2)))  # a snapshot: at most halve
            self._slow_start = False
        elif used:
            self.limit = min(self.maximum, self.limit * 2 if self._slow_start else self.limit + 1)

    def _by_rate(self, rate: float, used: bool) -> None:
        """Any other server: a higher limit is kept while it raises the answers per second (a server that queues gains
        nothing past its knee; one that batches gains until its compute is full)."""
        if self._slow_start:
            if self._settled is None or rate >= self._settled[1] * self.GAIN:
                self._settled = (self.limit, rate)
                if used:
                    self.limit = min(self.maximum, self.limit * 2)
            else:
                self.limit, self._slow_start, self._windows_settled = self._settled[0], False, 0
            return
        if self._settled is None:  # after a 429 halved the limit: its rate is the one to beat
            self._settled, self._windows_settled = (self.limit, rate), 0
            return
        settled_limit, settled_rate = self._settled
        if self.limit != settled_limit:  # a probe's window
            if rate >= settled_rate * (1 + (self.GAIN - 1) / 2):
                self._settled = (self.limit, rate)
            else:
                self.limit = settled_limit
            self._windows_settled = 0
            return
        self._settled = (settled_limit, (settled_rate + rate) / 2)  # follows a server whose speed changes
        self._windows_settled += 1
        if self._windows_settled >= self.PROBE_EVERY and used:
            self.limit = min(self.maximum, settled_limit + max(1, settled_limit // 4))

    def _moved(self) -> None:
        if self.changes[-1][1] != self.limit:
            self.changes.append((time.monotonic(), self.limit))
