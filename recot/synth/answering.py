"""The loop every teacher-backed job shares: send what the journal lacks, parse, commit.

A synthesis job and an LLM judge differ in how they build requests and read answers, not in
how answers are obtained. :func:`answer` takes a stream of requests, skips those the journal
already answers (``cached``, from an earlier run) or that this run already asked (``shared``: in
flight, or answered but not yet committed; a repeated prompt is never sent twice), streams the rest
through the teacher, turns each response into a journal row with the caller's parser, and commits
rows in small transactions. Every request is counted as ok, rejected (with its reason) or
unanswered (``retryable``: not recorded, so a rerun asks again), whichever way its answer came.
Memory is bounded by the commit window plus what is in flight, whatever the number of requests.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from recot.synth.journal import Journal, answer_row, now
from recot.synth.parse import Parsed
from recot.teachers.base import Request, Response, Teacher

# Turns one response into its validation result and its training text (None when rejected).
Parser = Callable[[Request, Response], tuple[Parsed, str | None]]


@dataclass
class AnswerStats:
    """Where each request's answer came from and what it was; every request lands in exactly one of each:
    ``cached + shared + sent`` and ``ok + rejected + unanswered`` both equal the requests seen."""

    cached: int = 0  # answered by an earlier run (the journal)
    shared: int = 0  # the same prompt asked earlier in this run: one answer serves both
    sent: int = 0
    ok: int = 0
    rejected: Counter = field(default_factory=Counter)
    unanswered: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens, as the teacher reported them

    @property
    def seen(self) -> int:
        return self.cached + self.shared + self.sent

    @property
    def balanced(self) -> bool:
        return self.seen == self.ok + sum(self.rejected.values()) + sum(self.unanswered.values())

    def count(self, outcome: tuple[str, str | None], times: int = 1) -> None:
        """Add ``times`` requests with ``outcome``: ("ok", None), ("rejected", reason) or ("unanswered", why)."""
        kind, reason = outcome
        if kind == "ok":
            self.ok += times
        elif kind == "rejected":
            self.rejected[reason or "unknown"] += times
        else:
            self.unanswered[reason or "unknown"] += times


def answer(teacher: Teacher, journal: Journal, requests: Iterable[Request], parse: Parser, stats: AnswerStats,
           commit_rows: int = 256, commit_s: float = 2.0, on_commit: Callable[[], Any] = lambda: None) -> AnswerStats:
    """Obtain and commit an answer for every request in ``requests``; ``stats`` is updated as it goes. Rows
    received before a failure (a refused key, an interrupt) are committed before it propagates."""
    started = now()
    inflight: dict[str, Request] = {}
    received: dict[str, tuple[str, str | None]] = {}  # outcome of each answer of this run not yet committed
    committed: dict[str, tuple[str, str | None]] = {}  # ... and of those committed since pending() last read the journal
    followers: Counter = Counter()  # repeats of a prompt still in flight: they share its outcome
    lock = threading.Lock()  # pending() runs in the teacher's thread, the loop below in this one

    def pending() -> Iterator[Request]:
        # Runs in whichever thread the teacher consumes it from: it opens its own read connection.
        reader = journal.reader()
        stream = iter(requests)
        while chunk := list(itertools.islice(stream, 512)):
            with lock:
                committed.clear()  # what is committed from here on is in ``committed``, the rest in ``done``
            done = journal.answered(reader, [r.key for r in chunk])
            for request in chunk:
                with lock:
                    if request.key in done:
                        status, reason, created_at = done[request.key]
                        if created_at >= started:
                            stats.shared += 1
                        else:
                            stats.cached += 1
                        stats.count(("ok", None) if status == "ok" else ("rejected", reason))
                        continue
                    known = received.get(request.key) or committed.get(request.key)
                    if known:
                        stats.shared += 1
                        stats.count(known)
                        continue
                    if request.key in inflight:
                        stats.shared += 1
                        followers[request.key] += 1
                        continue
                    inflight[request.key] = request
                yield request
        reader.close()

    def commit(rows: list[dict[str, Any]]) -> None:
        journal.append(rows)
        with lock:
            for row in rows:
                committed[row["key"]] = received.pop(row["key"])
        on_commit()

    identity = (teacher.kind, teacher.model)
    buffer: list[dict[str, Any]] = []
    last_commit = time.monotonic()
    try:
        for response in teacher.generate(pending()):
            with lock:
                request = inflight.pop(response.key)
                stats.sent += 1
                stats.prompt_tokens += response.prompt_tokens
                stats.completion_tokens += response.completion_tokens
                stats.reasoning_tokens += response.reasoning_tokens or 0
                if response.retryable:
                    outcome = ("unanswered", response.error)
                    received[response.key] = outcome  # a repeat later in this run shares it: never sent twice in one run
                else:
                    parsed, text = parse(request, response)
                    outcome = ("ok", None) if parsed.status == "ok" else ("rejected", parsed.reason)
                    buffer.append(answer_row(request, response, parsed, text, identity))
                    received[response.key] = outcome
                stats.count(outcome, 1 + followers.pop(response.key, 0))
            if len(buffer) >= commit_rows or time.monotonic() - last_commit > commit_s:
                commit(buffer)
                buffer, last_commit = [], time.monotonic()
    finally:
        commit(buffer)
    return stats
