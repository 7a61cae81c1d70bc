"""A loopback OpenAI-compatible server that answers at once, for client benchmarks and failure tests.

Not a teacher: it exists so that (a) a benchmark can measure the client when the client is the
bottleneck (as in front of a fleet of GPU servers), and (b) tests can make an endpoint fail in
every way a real one does. The requested model name picks the behaviour:

    ok         a fixed schema-valid R1 answer          refuse     a refusal
    truncate   finish_reason "length"                  filter     finish_reason "content_filter"
    empty      empty content                           garbage    content that is not JSON
    badrequest HTTP 400                                flaky      every 3rd request 429, every 5th 503, else ok
    denied     HTTP 401                                missing    HTTP 404 (an unknown model)
    cutbody    HTTP 200, a JSON body cut in half       textplain  HTTP 200, a text/plain body
    html       HTTP 200, an HTML page labelled JSON    nochoices  HTTP 200, a completion with no choices
    shaky      every 2nd reply is a cut body (retried), else ok
    cut500     a prompt's first attempt gets a cut body, its later ones HTTP 500 (cut429: HTTP 429)
    drop       the connection is closed without a reply
    cot        a schema-valid R3 trace citing purchase #1 that answers the prompt's last SID
    queue      a server that queues as vLLM does: it runs QUEUE_CAPACITY requests at once, each taking
               QUEUE_SERVICE_S (a little more the more run beside it), and the rest wait their turn
    batch      a server that batches: it runs every request at once, each a little slower the more run beside it
               (answers per second grow with the number in flight)

Thinking teachers (the answer is ``ok``'s; the reasoning, THOUGHT, comes apart from it as each kind of server sends it):

    think        ``message.reasoning`` and ``usage.completion_tokens_details.reasoning_tokens`` (vLLM with a reasoning parser)
    thinkold     ``message.reasoning_content`` (DeepSeek's API, vLLM before 0.11), no reasoning token count
    thinkinline  the content opens with ``<think>THOUGHT</think>`` (a thinking model served without a reasoning parser)
    thinkcut     finish_reason "length" inside the reasoning: no content, the reasoning cut short
    hidden       reasoning tokens counted but not shown, and HTTP 400 for ``max_tokens`` (OpenAI's reasoning models take
                 ``max_completion_tokens``)

``GET /stats`` returns how many chat requests each model name received. ``GET /metrics`` shows the queue as vLLM's
Prometheus gauges do (``vllm:num_requests_waiting``, ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``);
the same server under ``/plain/v1`` has no metrics page (a server that is not vLLM). ``GET /queue`` returns how many
were waiting, at most and on average, when a ``queue`` request arrived; ``POST /queue`` starts that count afresh.

Usage: python -m recot.testing.instant_server --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
from collections import Counter

from aiohttp import web

ANSWER = json.dumps({"relation": "complement", "rationale": "a drill needs bits"})
THOUGHT = "The teacher thinks first: a drill and its bits are used together, so the relation is complement."
THOUGHT_TOKENS = 21
SID = re.compile(r"(?:<[a-z_]+\d*_\d+>)+")


def _trace(prompt: str) -> str:
    sids = SID.findall(prompt)
    return json.dumps({"persona": {"prototype": "student", "evidence": "bought #1 for a class project"},
                       "interests": [{"name": "more of the same", "evidence": [1]}],
                       "transition": {"recent": "#1", "follows": 1, "reasoning": "the latest purchase sets the interest for the term"},
                       "answer": sids[-1] if sids else "?"})
QUEUE_CAPACITY, QUEUE_SERVICE_S = 4, 0.05
_counter = itertools.count(1)
_received: Counter = Counter()
_attempts: Counter = Counter()  # per (model, prompt): how often it was asked
_queue = {"running": 0, "waiting": 0, "arrivals": 0, "waiting_sum": 0, "waiting_max": 0, "batched": 0}
_slots: asyncio.Semaphore | None = None


def _completion(model: str, content: str | None, finish: str = "stop", refusal: str | None = None) -> dict:
    return {
        "id": "chatcmpl-local", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }


async def chat(request: web.Request) -> web.Response:
    body = await request.json()
    model = body.get("model", "ok")
    n = next(_counter)
    _received[model] += 1
    _attempts[model, json.dumps(body.get("messages"))] += 1
    if model in ("cut500", "cut429") and _attempts[model, json.dumps(body.get("messages"))] > 1:
        status = 500 if model == "cut500" else 429
        return web.json_response({"error": {"message": "upstream failed"}}, status=status)
    if model == "drop":
        assert request.transport is not None
        request.transport.close()
        return web.Response()
    if model in ("cutbody", "cut500", "cut429") or (model == "shaky" and _received[model] % 2 == 0):
        text = json.dumps(_completion(model, ANSWER))
        return web.Response(text=text[: len(text) // 2], content_type="application/json")
    if model == "textplain":
        return web.Response(text="upstream says hello", content_type="text/plain")
    if model == "html":
        return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="application/json")
    if model == "nochoices":
        return web.json_response({**_completion(model, ANSWER), "choices": []})
    if model == "missing":
        return web.json_response({"error": {"message": f"The model `{model}` does not exist."}}, status=404)
    if model == "badrequest":
        return web.json_response({"error": {"message": "bad request", "type": "invalid_request_error"}}, status=400)
    if model == "denied":
        return web.json_response({"error": {"message": "invalid api key"}}, status=401)
    if model == "flaky" and n % 3 == 0:
        return web.json_response({"error": {"message": "slow down"}}, status=429)
    if model == "flaky" and n % 5 == 0:
        return web.json_response({"error": {"message": "overloaded"}}, status=503)
    replies = {
        "refuse": _completion(model, None, refusal="I can't help with that."),
        "truncate": _completion(model, ANSWER[:20], "length"),
        "filter": _completion(model, "", "content_filter"),
        "empty": _completion(model, ""),
        "garbage": _completion(model, "Sure! Here is the relation: complement."),
    }
    if model == "cot":
        return web.json_response(_completion(model, _trace(body["messages"][-1]["content"])))
    if model == "hidden" and "max_tokens" in body:
        return web.json_response({"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                                       "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                                            "param": "max_tokens", "code": "unsupported_parameter"}}, status=400)
    if model.startswith("think") or model == "hidden":
        return web.json_response(_thinking(model))
    if model == "queue":
        await _served_in_turn()
    if model == "batch":
        _queue["batched"] += 1
        try:
            await asyncio.sleep(QUEUE_SERVICE_S * (1 + 0.02 * _queue["batched"]))
        finally:
            _queue["batched"] -= 1
    return web.json_response(replies.get(model) or _completion(model, ANSWER))


def _thinking(model: str) -> dict:
    """A thinking teacher's reply, shaped as the server kind named by ``model`` sends it."""
    reply = _completion(model, ANSWER)
    message, usage = reply["choices"][0]["message"], reply["usage"]
    usage["completion_tokens"] += THOUGHT_TOKENS
    if model in ("think", "hidden", "thinkcut"):
        usage["completion_tokens_details"] = {"reasoning_tokens": THOUGHT_TOKENS}
    if model in ("think", "thinkcut"):
        message["reasoning"] = THOUGHT
    elif model == "thinkold":
        message["reasoning_content"] = THOUGHT
    elif model == "thinkinline":
        message["content"] = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"
    if model == "thinkcut":
        message["content"], message["reasoning"] = None, THOUGHT[:40]
        reply["choices"][0]["finish_reason"] = "length"
        usage["completion_tokens"] = usage["completion_tokens_details"]["reasoning_tokens"] = THOUGHT_TOKENS
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return reply


async def _served_in_turn() -> None:
    global _slots
    _slots = _slots or asyncio.Semaphore(QUEUE_CAPACITY)
    _queue["arrivals"] += 1
    _queue["waiting_sum"] += _queue["waiting"]
    _queue["waiting_max"] = max(_queue["waiting_max"], _queue["waiting"])
    _queue["waiting"] += 1
    async with _slots:
        _queue["waiting"] -= 1
        _queue["running"] += 1
        try:
            await asyncio.sleep(QUEUE_SERVICE_S * (1 + 0.1 * _queue["running"]))
        finally:
            _queue["running"] -= 1


async def metrics(_: web.Request) -> web.Response:
    labels = '{engine="0",model_name="queue"}'
    return web.Response(text=f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{labels} {_queue['running']}.0\n"
                             f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{labels} {_queue['waiting']}.0\n"
                             f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{labels} "
                             f"{_queue['running'] / (4 * QUEUE_CAPACITY)}\n", content_type="text/plain")


async def queue_seen(request: web.Request) -> web.Response:
    if request.method == "POST":
        _queue.update(arrivals=0, waiting_sum=0, waiting_max=0)
    return web.json_response({"arrivals": _queue["arrivals"], "waiting_max": _queue["waiting_max"],
                              "waiting_mean": _queue["waiting_sum"] / max(1, _queue["arrivals"])})


async def stats(_: web.Request) -> web.Response:
    return web.json_response(dict(_received))


async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "ok", "object": "model"}]})


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/v1/chat/completions", chat)
    application.router.add_post("/plain/v1/chat/completions", chat)
    application.router.add_get("/metrics", metrics)
    application.router.add_route("*", "/queue", queue_seen)
    application.router.add_get("/v1/models", models)
    application.router.add_get("/stats", stats)
    return application


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    web.run_app(app(), host="127.0.0.1", port=parser.parse_args().port, print=None, access_log=None)
