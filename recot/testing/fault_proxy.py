"""A loopback proxy that injects faults in front of a real OpenAI-compatible server (vLLM), for testing that
a client loses nothing and counts everything.

Faults follow a fixed schedule over the chat requests it receives (the ``n``-th request gets
``schedule[n % len(schedule)]``), so a retried request meets another entry and a test is reproducible:

    ok         forwarded as is                      429 / 503  that HTTP status, nothing forwarded
    drop       the connection closes with no reply  cut        the real reply, its body cut in half
    text       HTTP 200 with a text/plain body      nochoices  the real reply with ``choices`` emptied

``received`` counts chat requests by fault, ``forwarded`` those that reached the server.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Sequence

from aiohttp import ClientSession, web

from recot.testing.servers import free_port

DEFAULT_SCHEDULE = ("ok", "ok", "429", "ok", "cut", "ok", "503", "ok", "drop", "ok", "text", "ok", "nochoices", "ok")


class FaultProxy:
    """``with FaultProxy(target_url) as proxy:`` serves ``proxy.url`` (an OpenAI base URL) on loopback."""

    def __init__(self, target: str, schedule: Sequence[str] = DEFAULT_SCHEDULE) -> None:
        self.target = target.rstrip("/")
        self.schedule = tuple(schedule)
        self.received: Counter = Counter()
        self.forwarded = 0
        self._count = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        fault = self.schedule[self._count % len(self.schedule)]
        self._count += 1
        self.received[fault] += 1
        if fault in ("429", "503"):
            return web.json_response({"error": {"message": f"injected {fault}"}}, status=int(fault))
        if fault == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        if fault == "text":
            return web.Response(text="injected: not a chat completion", content_type="text/plain")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with ClientSession() as session, session.post(f"{self.target}/chat/completions", data=body,
                                                            headers=headers) as reply:
            content, status = await reply.read(), reply.status
        self.forwarded += 1
        if fault == "cut":
            content = content[: len(content) // 2]
        elif fault == "nochoices" and status == 200:
            content = json.dumps({**json.loads(content), "choices": []}).encode()
        return web.Response(body=content, status=status, content_type="application/json")

    async def _models(self, _: web.Request) -> web.Response:
        async with ClientSession() as session, session.get(f"{self.target}/models") as reply:
            return web.Response(body=await reply.read(), status=reply.status, content_type="application/json")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        assert self._runner is not None  # set by _start
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *_) -> None:
        assert self._loop is not None  # set when the thread starts serving
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
