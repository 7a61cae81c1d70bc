"""The OpenAI-compatible teacher: a vLLM server, OpenAI, or any compatible endpoint, over HTTP.

Layers, each small: endpoints (one ``AsyncOpenAI`` client per base URL on the aiohttp transport,
load spread to the least busy healthy one) -> a concurrency limit that finds the server's knee (its
queue as vLLM's /metrics tells it, and the replies' latency; halved on 429: :mod:`recot.teachers.limits`)
-> retries with exponential backoff and full jitter on 429,
408/409, 5xx, timeouts, connection errors and unusable HTTP 200 replies (a truncated or non-JSON
body, no choices). A wrong key or an unknown model stops the job at once: what is in flight is
cancelled and nothing more is sent (every request would fail the same way). Any other 4xx, and a
reply that stayed unusable after the retries, becomes a rejected row with its reason; a request
whose endpoint stayed unreachable is unanswered (not recorded, so a rerun asks again). No task
ends unobserved: each one's outcome reaches the consuming loop.

The event loop runs in a helper thread so the runner stays a plain loop over responses.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recot.errors import TeacherError
from recot.teachers.base import Request, Response, TeacherInputs, TeacherKind
from recot.teachers.limits import ConcurrencyLimit, QueueAwareLimit

RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {401, 403, 404}
DOWN_S = 1.0  # the least time an endpoint that failed to connect is left out when another is healthy
_DONE = object()


class OpenAITeacherConfig(BaseModel):
    """Any OpenAI-compatible server (vLLM, SGLang, OpenAI): one or more base URLs, the load spread over them."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai"] = Field("openai", description="an OpenAI-compatible server")
    model: str = Field(description="the served model name")
    base_urls: list[str] = Field(min_length=1, description='e.g. ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]')
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never printed)")
    concurrency: int = Field(64, ge=1, description="the most requests in flight (the adaptive limit's ceiling); halved on 429")
    limit: Literal["adaptive", "fixed"] = Field(
        "adaptive", description="adaptive: in flight follows the server's knee (its queue from vLLM's /metrics, reply latency); "
        "fixed: concurrency in flight (for a server that answers 429 when full)")
    timeout_s: float = Field(120.0, gt=0, description="seconds one request may take")
    max_retries: int = Field(8, ge=0, description="retries of 429, 5xx, timeouts, dropped connections and unusable replies")
    backoff_s: float = Field(0.5, gt=0, description="base of the exponential backoff (full jitter)")
    backoff_cap_s: float = Field(30.0, gt=0, description="the longest backoff between retries")
    structured: Literal["response_format", "extra_body", "none"] = Field(
        "response_format", description="how the JSON schema is sent: OpenAI json_schema, vLLM structured_outputs, or not")
    transport: Literal["aiohttp", "httpx"] = Field("aiohttp", description="the HTTP client under the openai SDK (aiohttp is faster)")
    tokenizer: str | None = Field(None, description="a local folder with the served model's tokenizer: dry runs count prompt tokens with it")
    token_limit: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="the request field that carries sampling.max_tokens: OpenAI's reasoning models refuse max_tokens "
        "and take max_completion_tokens (which vLLM and SGLang accept too); either bounds reasoning and answer together")


@dataclass
class _Endpoint:
    url: str
    client: Any
    in_flight: int = 0
    down_until: float = 0.0
    metrics: str | None = None  # the server's Prometheus /metrics, while it answers with vLLM's gauges


class OpenAITeacher:
    kind = "openai"

    def __init__(self, model: str, base_urls: list[str], api_key_env: str = "OPENAI_API_KEY", concurrency: int = 64,
                 timeout_s: float = 120.0, max_retries: int = 8, backoff_s: float = 0.5, backoff_cap_s: float = 30.0,
                 structured: str = "response_format", transport: str = "aiohttp", limit: str = "adaptive",
                 token_limit: str = "max_tokens") -> None:
        """``structured``: "response_format" (OpenAI json_schema, strict), "extra_body" (vLLM's
        structured_outputs), or "none". ``transport``: "aiohttp" (fast) or "httpx" (the client's default)."""
        if not base_urls:
            raise ValueError("an OpenAI-compatible teacher needs at least one base URL")
        if structured not in ("response_format", "extra_body", "none"):
            raise ValueError(f"structured must be response_format, extra_body or none, not {structured!r}")
        self.model, self.base_urls = model, list(base_urls)
        self.api_key_env = api_key_env
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.backoff_cap_s = max_retries, backoff_s, backoff_cap_s
        self.structured, self.transport, self.limit_kind, self.token_limit = structured, transport, limit, token_limit
        self.retries = 0  # retried attempts in the last generate(), for the job summary
        self.limit: ConcurrencyLimit | None = None  # the last generate()'s limit: its peak and how it moved
        self._stop = threading.Event()

    def __repr__(self) -> str:  # the key is never part of what is printed or logged
        return f"OpenAITeacher(model={self.model!r}, base_urls={self.base_urls!r}, concurrency={self.concurrency})"

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]:
        out: queue.Queue = queue.Queue()
        self._stop.clear()
        worker = threading.Thread(target=lambda: asyncio.run(self._run(iter(requests), out)), daemon=True)
        worker.start()
        try:
            while (item := out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            worker.join(timeout=self.timeout_s)

    def close(self) -> None:
        self._stop.set()

    def _clients(self) -> list[_Endpoint]:
        from openai import AsyncOpenAI, DefaultAioHttpClient

        key = os.environ.get(self.api_key_env) or "EMPTY"
        return [_Endpoint(url, AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=self.timeout_s,
                                           http_client=DefaultAioHttpClient() if self.transport == "aiohttp" else None),
                          metrics=url.rstrip("/").removesuffix("/v1") + "/metrics")
                for url in self.base_urls]

    async def _run(self, requests: Iterator[Request], out: queue.Queue) -> None:
        endpoints = self._clients()
        limit = self.limit = QueueAwareLimit(self.concurrency) if self.limit_kind == "adaptive" else ConcurrencyLimit(self.concurrency)
        watcher = asyncio.create_task(watch_servers(endpoints, limit)) if self.limit_kind == "adaptive" else None
        pending: set[asyncio.Task] = set()
        failures: list[BaseException] = []
        self.retries = 0

        def settle(task: asyncio.Task) -> None:
            """Observe every task's outcome: the first failure stops the job (nothing more is sent)."""
            pending.discard(task)
            if not task.cancelled() and (failure := task.exception()) is not None:
                failures.append(failure)
                self._stop.set()

        try:
            for request in requests:
                await limit.acquire()
                if self._stop.is_set():
                    break
                task = asyncio.create_task(self._answer(request, endpoints, limit, out))
                pending.add(task)
                task.add_done_callback(settle)
            while pending and not failures:
                await asyncio.wait(set(pending), return_when=asyncio.FIRST_EXCEPTION)
            if failures:  # cancel what is in flight: every request would fail the same way
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                out.put(failures[0])
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which re-raises it
            for task in pending:
                task.cancel()
            out.put(exc)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            for endpoint in endpoints:
                await endpoint.client.close()
            out.put(_DONE)

    def _pick(self, endpoints: list[_Endpoint]) -> _Endpoint:
        now = time.monotonic()
        healthy = [e for e in endpoints if e.down_until <= now] or [min(endpoints, key=lambda e: e.down_until)]
        return min(healthy, key=lambda e: e.in_flight)

    async def _answer(self, request: Request, endpoints: list[_Endpoint], limit: ConcurrencyLimit, out: queue.Queue) -> None:
        import openai

        throttled, bad_reply, answered = False, None, None
        try:
            for attempt in range(self.max_retries + 1):
                endpoint = self._pick(endpoints)
                endpoint.in_flight += 1
                started = time.perf_counter()
                try:
                    reply = await endpoint.client.chat.completions.create(**chat_kwargs(self.model, request, self.structured, self.token_limit))
                    response = _response(request.key, reply, time.perf_counter() - started)
                except openai.APIStatusError as exc:
                    if exc.status_code in FATAL_STATUS:
                        self._stop.set()  # before this task ends: no new request may start in between
                        raise TeacherError(_fatal_message(exc.status_code, endpoint.url, self.model, self.api_key_env)) from None
                    if exc.status_code not in RETRYABLE_STATUS and exc.status_code < 500:
                        out.put(Response(request.key, error=f"HTTP {exc.status_code}: {_short(exc)}"))
                        return
                    throttled = throttled or exc.status_code == 429
                    # the last word decides: an unusable reply followed by a transient failure is worth asking again
                    failure, bad_reply = f"HTTP {exc.status_code}", None
                except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                    # out of the rotation for a while: an endpoint that refuses at once would otherwise look least busy
                    endpoint.down_until = time.monotonic() + max(DOWN_S, self._delay(attempt))
                    failure, bad_reply = _connection_failure(exc, time.perf_counter() - started, self.timeout_s), None
                except Exception as exc:  # noqa: BLE001 - an HTTP 200 whose body is no chat completion
                    failure = bad_reply = f"{type(exc).__name__}: {_short(exc)}"
                else:
                    out.put(answered := response)
                    return
                finally:
                    endpoint.in_flight -= 1
                if attempt < self.max_retries:
                    self.retries += 1
                    await asyncio.sleep(self._delay(attempt))
            attempts = f"after {self.max_retries + 1} attempts"
            if bad_reply:  # the endpoint answers, but never usably: a rejected row, not a retry for ever
                out.put(Response(request.key, error=f"no usable reply {attempts} (last: {bad_reply})", reason="bad_reply"))
            else:
                out.put(Response(request.key, error=f"no answer {attempts} ({failure})", retryable=True))
        finally:
            await limit.release(throttled, answered.latency_s if answered else None, answered.completion_tokens if answered else 0)

    def _delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_s * 2 ** attempt))


# vLLM's scheduler gauges (vllm/v1/metrics/loggers.py), one line per engine: requests waiting and running, KV use
_GAUGE = re.compile(r"^(vllm:num_requests_waiting|vllm:num_requests_running|vllm:kv_cache_usage_perc)(?:\{[^}]*\})?\s+(\S+)",
                    re.MULTILINE)
WATCH_S = 0.25  # how often the servers' /metrics are read


def server_load(text: str) -> tuple[float, float, float | None] | None:
    """(waiting, running, KV use) from a Prometheus text page: counts summed over engines, KV use the fullest
    engine's; None for a page without vLLM's gauges (another server)."""
    found: dict[str, list[float]] = {}
    for name, value in _GAUGE.findall(text):
        found.setdefault(name, []).append(float(value))
    if "vllm:num_requests_waiting" not in found:
        return None
    kv = found.get("vllm:kv_cache_usage_perc")
    return sum(found["vllm:num_requests_waiting"]), sum(found.get("vllm:num_requests_running", [0.0])), max(kv) if kv else None


async def watch_servers(endpoints: list[_Endpoint], limit: ConcurrencyLimit) -> None:
    """Read each endpoint's /metrics every WATCH_S and tell ``limit`` the servers' load; an endpoint whose page is missing
    or holds no vLLM gauges is not asked again (the limit then goes by latency alone)."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while any(e.metrics for e in endpoints):
            loads = []
            for endpoint in endpoints:
                if endpoint.metrics is None:
                    continue
                try:
                    async with session.get(endpoint.metrics) as reply:
                        load = server_load(await reply.text()) if reply.status == 200 else None
                except (TimeoutError, aiohttp.ClientError):
                    continue  # down for now: the requests' own retries deal with it
                if load is None:
                    endpoint.metrics = None
                else:
                    loads.append(load)
            if loads:
                kv = [k for _, _, k in loads if k is not None]
                limit.observe(sum(w for w, _, _ in loads), sum(r for _, r, _ in loads), max(kv) if kv else None)
            await asyncio.sleep(WATCH_S)


def chat_kwargs(model: str, request: Request, structured: str, token_limit: str = "max_tokens") -> dict[str, Any]:
    """The chat completion call for ``request``, as keyword arguments of ``chat.completions.create``: the live
    client sends exactly this, and a batch file's body is the same (``extra_body`` merged into it). The schema binds
    the answer; a server with a reasoning parser (vLLM ``--reasoning-parser``) applies it after the reasoning ends."""
    call: dict[str, Any] = {"model": model, "messages": request.messages, "temperature": request.temperature,
                            "top_p": request.top_p, token_limit: request.max_tokens, "seed": request.seed}
    if structured == "response_format":
        call["response_format"] = {"type": "json_schema", "json_schema": {"name": request.task, "schema": request.schema, "strict": True}}
    elif structured == "extra_body":
        call["extra_body"] = {"structured_outputs": {"json": request.schema}}
    return call


def _response(key: str, reply: Any, latency: float) -> Response:
    """A Response from a parsed chat completion; raises when the reply is not one (a text body, no choices)."""
    if not getattr(reply, "choices", None):
        raise ValueError(f"the reply has no choices: {_short(reply)}")
    choice = reply.choices[0]
    return reply_response(key, choice.message.model_dump(), choice.finish_reason,
                          reply.usage.model_dump() if reply.usage else {}, latency)


def reply_response(key: str, message: dict[str, Any], finish_reason: str | None, usage: dict[str, Any],
                   latency: float = 0.0) -> Response:
    """A Response from a chat completion's message and usage as plain JSON (a live reply or a batch output line).

    The teacher's own reasoning is read under each name servers use: ``reasoning`` (vLLM 0.11+), ``reasoning_content``
    (DeepSeek's API, older vLLM); its tokens from ``usage.completion_tokens_details.reasoning_tokens`` (OpenAI, vLLM with
    a reasoning parser)."""
    details = usage.get("completion_tokens_details") or {}
    return Response(key, message.get("content"), finish_reason, message.get("refusal"), usage.get("prompt_tokens") or 0,
                    usage.get("completion_tokens") or 0, latency,
                    reasoning=message.get("reasoning") or message.get("reasoning_content"),
                    reasoning_tokens=details.get("reasoning_tokens"))


def _connection_failure(exc: Exception, seconds: float, timeout_s: float) -> str:
    """What went wrong on the wire, in words: the aiohttp transport reports a connection the server closed without a
    reply as a timeout, so a "timeout" well inside the time limit is named a dropped connection."""
    import openai

    if isinstance(exc, openai.APITimeoutError) and seconds < 0.9 * timeout_s:
        return f"connection dropped without a reply after {seconds:.1f} s"
    if isinstance(exc, openai.APITimeoutError):
        return f"no reply within the {timeout_s:g} s timeout"
    return f"connection failed ({_short(exc)})"


def _short(exc: Exception) -> str:
    return str(exc).replace("\n", " ")[:300]


def _fatal_message(status: int, url: str, model: str, key_env: str) -> str:
    if status == 404:
        return f"{url}: model {model!r} is not served there (HTTP 404); set teacher.model to a served model name"
    return f"{url}: the API key was refused (HTTP {status}); put a valid key in the environment variable {key_env}"


def _build(config: OpenAITeacherConfig, inputs: TeacherInputs) -> OpenAITeacher:
    return OpenAITeacher(config.model, config.base_urls, config.api_key_env, config.concurrency, config.timeout_s,
                         config.max_retries, config.backoff_s, config.backoff_cap_s, config.structured, config.transport, config.limit,
                         config.token_limit)


KIND = TeacherKind(OpenAITeacherConfig, _build)
