"""The loop every teacher-backed job shares: send what the journal lacks, parse, commit.

A synthesis job and an LLM judge differ in how they build requests and read answers, not in
how answers are obtained. :func:`answer` takes a stream of requests, skips those the journal
already answers (or that are in flight, or answered but not yet committed: a repeated prompt is
never sent twice), streams the rest through the teacher, turns each response into a journal row
with the caller's parser, and commits rows in small transactions. Answers that never came
(``retryable``) are counted, not recorded, so a rerun asks again. Memory is bounded by the
commit window plus what is in flight, whatever the number of requests.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from recot.synth.journal import Journal, answer_row
from recot.synth.parse import Parsed
from recot.synth.teachers.base import Request, Response, Teacher

# Turns one response into its validation result and its training text (None when rejected).
Parser = Callable[[Request, Response], tuple[Parsed, str | None]]


@dataclass
class AnswerStats:
    cached: int = 0
    sent: int = 0
    ok: int = 0
    rejected: Counter = field(default_factory=Counter)
    unanswered: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def answer(teacher: Teacher, journal: Journal, requests: Iterable[Request], parse: Parser, stats: AnswerStats,
           commit_rows: int = 256, commit_s: float = 2.0, on_commit: Callable[[], Any] = lambda: None) -> AnswerStats:
    """Obtain and commit an answer for every request in ``requests``; ``stats`` is updated as it goes."""
    inflight: dict[str, Request] = {}
    uncommitted: set[str] = set()

    def pending() -> Iterator[Request]:
        # Runs in whichever thread the teacher consumes it from: it opens its own read connection.
        reader = journal.reader()
        stream = iter(requests)
        while chunk := list(itertools.islice(stream, 512)):
            done = journal.answered(reader, [r.key for r in chunk])
            for request in chunk:
                if request.key in done or request.key in uncommitted:
                    stats.cached += 1
                    continue
                uncommitted.add(request.key)
                inflight[request.key] = request
                yield request
        reader.close()

    def commit(rows: list[dict[str, Any]]) -> None:
        journal.append(rows)
        uncommitted.difference_update(row["key"] for row in rows)
        on_commit()

    identity = (teacher.kind, teacher.model)
    buffer: list[dict[str, Any]] = []
    last_commit = time.monotonic()
    for response in teacher.generate(pending()):
        request = inflight.pop(response.key)
        stats.sent += 1
        stats.prompt_tokens += response.prompt_tokens
        stats.completion_tokens += response.completion_tokens
        if response.retryable:
            stats.unanswered[response.error or "unknown"] += 1
            uncommitted.discard(response.key)
        else:
            parsed, text = parse(request, response)
            if parsed.status == "ok":
                stats.ok += 1
            else:
                stats.rejected[parsed.reason] += 1
            buffer.append(answer_row(request, response, parsed, text, identity))
        if len(buffer) >= commit_rows or time.monotonic() - last_commit > commit_s:
            commit(buffer)
            buffer, last_commit = [], time.monotonic()
    commit(buffer)
    return stats
