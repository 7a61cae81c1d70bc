"""Teachers behind one small interface (:class:`synth.teachers.base.Teacher`), chosen by config."""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recot.synth.catalog import Catalog
from recot.synth.teachers.base import Request, Response, Sampling, Teacher

__all__ = ["Request", "Response", "Sampling", "Teacher", "TeacherConfig", "make_teacher"]


class TeacherConfig(BaseModel):
    """Which teacher answers, and its connection knobs. With no model and no URL, the rules teacher."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["rules", "vllm", "openai"] = "rules"
    model: str | None = None
    # openai: one or more servers; the load is spread over them
    base_urls: list[str] = []
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(64, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(8, ge=0)
    backoff_s: float = Field(0.5, gt=0)
    backoff_cap_s: float = Field(30.0, gt=0)
    structured: Literal["response_format", "extra_body", "none"] = "response_format"
    transport: Literal["aiohttp", "httpx"] = "aiohttp"
    # vllm: keyword arguments of vllm.LLM, and requests per LLM.chat call
    engine: dict[str, Any] = {}
    batch_size: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> TeacherConfig:
        if self.kind != "rules" and not self.model:
            raise ValueError(f"kind = {self.kind!r} needs model (a model path for vllm, a served model name for openai)")
        if self.kind == "openai" and not self.base_urls:
            raise ValueError("kind = 'openai' needs base_urls, e.g. [\"http://127.0.0.1:8000/v1\"]")
        return self


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
