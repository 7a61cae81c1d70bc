"""Batch-file mode: a job's unanswered requests as OpenAI Batch API JSONL, and batch outputs read back.

Both sides are teachers for the runner's usual answering loop, so nothing about a batch is special
downstream: the journal skips what it already holds, answers are parsed and validated exactly like
live ones, and every request is counted.

- :class:`BatchWriter` answers nothing. Each request becomes one line ``{"custom_id": <request
  hash>, "method": "POST", "url": "/v1/chat/completions", "body": <the chat request the live client
  sends>}`` in ``requests-NNNNN.jsonl`` files, a new file before the provider's request or byte
  limit is passed; the request stays unanswered (a later read or run fills it in).
- :class:`BatchReader` answers from output files (OpenAI's output and error files, or the output of
  vLLM's ``python -m vllm.entrypoints.openai.run_batch``). It indexes each file by ``custom_id``
  and reads a line only when its request comes up. A 200 becomes the answer; expired, throttled
  and 5xx requests stay unanswered (write them again); any other error becomes a rejected row with
  its reason. Ids the job does not hold are counted by the job (:func:`recot.synth.job.read_batch`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from recot.errors import DataError
from recot.teachers.base import Request, Response
from recot.teachers.openai_http import RETRYABLE_STATUS, chat_kwargs, reply_response

OPENAI_MAX_REQUESTS = 50_000  # the Batch API's limits per input file
OPENAI_MAX_BYTES = 200 * 1024 * 1024
WRITTEN = "written to a batch file"
NOT_IN_OUTPUT = "not in the batch output files"
_RETRY_CODES = {"batch_expired", "batch_cancelled", "rate_limit_exceeded", "server_error"}


def batch_line(request: Request, model: str, structured: str, token_limit: str = "max_tokens") -> dict[str, Any]:
    """One Batch API input line: the live client's chat request as the body (``extra_body`` merged in, as the SDK sends it)."""
    call = chat_kwargs(model, request, structured, token_limit)
    body = {k: v for k, v in call.items() if k != "extra_body"} | call.get("extra_body", {})
    return {"custom_id": request.key, "method": "POST", "url": "/v1/chat/completions", "body": body}


class BatchWriter:
    """Writes requests to batch input files under ``folder`` instead of answering them."""

    kind = "openai"  # request keys are those of the live OpenAI-compatible teacher: a later live run reuses the answers

    def __init__(self, model: str, structured: str, folder: Path, max_requests: int = OPENAI_MAX_REQUESTS,
                 max_bytes: int = OPENAI_MAX_BYTES, token_limit: str = "max_tokens") -> None:
        self.model, self.structured, self.folder, self.token_limit = model, structured, folder, token_limit
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.files: list[Path] = []
        self._handle: Any = None
        self._requests = self._bytes = 0

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]:
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("requests-*.jsonl"):  # a rewrite holds what is unanswered now, nothing older
            stale.unlink()
        for request in requests:
            line = (json.dumps(batch_line(request, self.model, self.structured, self.token_limit), ensure_ascii=False) + "\n").encode()
            if len(line) > self.max_bytes:
                raise DataError(request.key, f"one request is {len(line)} bytes, over the file limit of {self.max_bytes}",
                                "raise max_bytes or shorten the prompt (max_history)")
            if self._handle is None or self._requests >= self.max_requests or self._bytes + len(line) > self.max_bytes:
                self._next_file()
            self._handle.write(line)
            self._requests, self._bytes = self._requests + 1, self._bytes + len(line)
            yield Response(request.key, error=WRITTEN, retryable=True)
        self.close()

    def _next_file(self) -> None:
        self.close()
        path = self.folder / f"requests-{len(self.files) + 1:05d}.jsonl"
        self.files.append(path)
        self._handle, self._requests, self._bytes = path.open("wb"), 0, 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class BatchReader:
    """Answers requests from batch output files, read line by line as requests come up."""

    kind = "openai"

    def __init__(self, model: str, files: list[Path]) -> None:
        self.model = model
        self.lines = 0
        self.index: dict[str, tuple[Path, int]] = {}  # custom_id -> where its line starts; a success beats an error
        for path in files:
            self._index(path)

    def _index(self, path: Path) -> None:
        with path.open("rb") as handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    try:
                        record = json.loads(raw)
                        key = record["custom_id"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise DataError(f"{path}:{number}", "not a batch output line (JSON with a custom_id)",
                                        "pass the output or error files the batch provider returned") from None
                    self.lines += 1
                    if key not in self.index or _succeeded(record):
                        self.index[key] = (path, offset)
                offset += len(raw)

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]:
        handles: dict[Path, Any] = {}
        try:
            for request in requests:
                where = self.index.get(request.key)
                if where is None:
                    yield Response(request.key, error=NOT_IN_OUTPUT, retryable=True)
                    continue
                path, offset = where
                handle = handles.get(path) or handles.setdefault(path, path.open("rb"))
                handle.seek(offset)
                yield _response(request.key, json.loads(handle.readline()))
        finally:
            for handle in handles.values():
                handle.close()

    def close(self) -> None:
        """Files are closed after each generate()."""


def _succeeded(record: dict[str, Any]) -> bool:
    return not record.get("error") and (record.get("response") or {}).get("status_code") == 200


def _response(key: str, record: dict[str, Any]) -> Response:
    """The Response of one output line: the answer, a rejected error, or an unanswered one to send again."""
    reply = record.get("response") or {}
    body = reply.get("body") or {}
    if not _succeeded(record):
        error = record.get("error") or body.get("error") or {}
        code = error.get("code") or reply.get("status_code") or "error"
        status = reply.get("status_code") or 0
        message = f"batch {code}: {error.get('message', '')}".strip()[:300]
        retry = code in _RETRY_CODES or status in RETRYABLE_STATUS or status >= 500
        return Response(key, error=message, retryable=retry)
    choices = body.get("choices") or []
    if not choices:
        return Response(key, error="the batch output line has no choices", reason="bad_reply")
    return reply_response(key, choices[0].get("message") or {}, choices[0].get("finish_reason"), body.get("usage") or {})
