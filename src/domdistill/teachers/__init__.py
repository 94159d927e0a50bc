"""Teachers: back-ends (OpenAI-compatible API, local HF model, recorded outputs, built-in program),
the call ledger (SQLite cache + hard budget) and the client the methods call.

Typical use from a method::

    client = open_client(cfg.teacher, run_dir, budget_calls=cfg.method.budget,
                         task=cfg.data.task, labels=labels)
    batch = client.rationales(selected, with_answer=True, tags={"stage": 1})
    batch.raise_if_stopped()  # or keep batch.delivered and report batch.stopped
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from domdistill.config import TeacherConfig
from domdistill.data.example import DomainExample
from domdistill.redact import remember
from domdistill.teachers.base import CallError, Teacher, TeacherRequest, TeacherResponse
from domdistill.teachers.client import TeacherClient
from domdistill.teachers.results import (
    DELIVERED, EXHAUSTED, FAILED, Batch, RationaleResult, SynthResult,
)
from domdistill.teachers.ledger import LEDGER_NAME, Budget, Ledger, Tags
from domdistill.teachers.prompts import PromptSet
from domdistill.teachers.recorded import ProgramTeacher, RecordedTeacher
from domdistill.teachers.retry import RetryPolicy

__all__ = ["Batch", "Budget", "CallError", "DELIVERED", "EXHAUSTED", "FAILED", "LEDGER_NAME",
           "Ledger", "ProgramTeacher", "PromptSet", "RationaleResult", "RecordedTeacher",
           "RetryPolicy", "SynthResult", "Tags", "Teacher", "TeacherClient", "TeacherRequest",
           "TeacherResponse", "check_teacher", "make_teacher", "open_client", "prompts_from_config"]


def make_teacher(cfg: TeacherConfig, real: Iterable[DomainExample] | None = None, seed: int = 0) -> Teacher:
    """The back-end named by ``cfg.kind``. ``real`` (the training pool) lets a recorded teacher
    tell real documents from synthetic ones in files that mix them (R52)."""
    if cfg.kind == "openai":
        from domdistill.teachers.openai_api import OpenAITeacher

        return OpenAITeacher(cfg.model, cfg.base_url, cfg.api_key_env, cfg.timeout_s)
    if cfg.kind == "hf":
        from domdistill.teachers.hf_local import HFTeacher

        return HFTeacher.from_pretrained(cfg.model, batch_size=cfg.batch_size)
    if cfg.kind == "recorded":
        return RecordedTeacher.from_paths(cfg.recorded_paths, match=cfg.recorded_match,
                                          real=real, name=cfg.model)
    return ProgramTeacher(seed=seed)


def check_teacher(cfg: TeacherConfig) -> None:
    """What can be checked before a run folder exists or a call is made: the API key variable
    is set, the recorded-teacher files are there, the shared cache is a ledger."""
    import os

    from domdistill.errors import ConfigError

    if cfg.kind == "openai" and os.environ.get(cfg.api_key_env):
        remember(os.environ[cfg.api_key_env], f"${cfg.api_key_env}")  # hidden in every message
    elif cfg.kind == "openai":
        raise ConfigError(f"environment variable ${cfg.api_key_env} holding the API key is not "
                          "set (for a local server that needs no key, set it to any value)",
                          field="teacher.api_key_env")
    if cfg.kind == "recorded":
        for i, p in enumerate(cfg.recorded_paths):
            if not Path(p).is_file():
                raise ConfigError(f"{Path(p).resolve()}: recorded-teacher file does not exist",
                                  field=f"teacher.recorded_paths[{i}]")
    if cfg.shared_cache:
        from domdistill.errors import RunFolderError
        from domdistill.teachers.ledger import ledger_identity

        cache = Path(cfg.shared_cache).expanduser().resolve()
        if cache.exists() and not (cache.is_file() and cache.stat().st_size == 0):
            try:
                ledger_identity(cache)
            except RunFolderError as err:
                raise ConfigError(f"{err}; the shared cache must be a domdistill ledger file "
                                  "(or a path where one can be created)",
                                  field="teacher.shared_cache") from None
        elif not cache.exists() and not next((p for p in cache.parents if p.exists())).is_dir():
            raise ConfigError(f"{cache}: cannot create the shared cache there (a parent is a file)",
                              field="teacher.shared_cache")


def prompts_from_config(cfg: TeacherConfig, task: str, labels: list[str] | None = None) -> PromptSet:
    """The prompt templates: the configured ones where set, the built-in ones otherwise."""
    kw: dict[str, str] = {}
    if cfg.system_prompt is not None:
        kw["system"] = cfg.system_prompt
    if cfg.rationale_prompt:
        kw["rationale"] = cfg.rationale_prompt
    if cfg.rationale_prompt_with_answer:
        kw["rationale_with_answer"] = cfg.rationale_prompt_with_answer
    if cfg.synthesis_prompt:
        kw["synthesis"] = kw["synthesis_with_rationale"] = cfg.synthesis_prompt
    return PromptSet(task=task, labels=tuple(labels) if labels else None, **kw)


def open_client(cfg: TeacherConfig, run_dir: str | Path, budget_calls: int | None, task: str,
                labels: list[str] | None = None, synthesis_cost: int = 1,
                real: Iterable[DomainExample] | None = None, teacher: Teacher | None = None,
                seed: int = 0) -> TeacherClient:
    """A client over ``RUN_DIR/ledger.sqlite`` with the config's budget, limits and retries."""
    ledger = Ledger(Path(run_dir) / LEDGER_NAME,
                    Budget(calls=budget_calls, tokens=cfg.budget_tokens, money=cfg.budget_money),
                    shared_cache=cfg.shared_cache,
                    price_per_1k=(cfg.price_per_1k_input, cfg.price_per_1k_output))
    return TeacherClient(
        teacher or make_teacher(cfg, real, seed), ledger, prompts_from_config(cfg, task, labels),
        concurrency=cfg.concurrency, requests_per_minute=cfg.requests_per_minute,
        tokens_per_minute=cfg.tokens_per_minute,
        retry=RetryPolicy(cfg.max_retries, cfg.retry_base_s, cfg.retry_max_s),
        temperature=cfg.temperature, max_tokens=cfg.max_tokens, synthesis_cost=synthesis_cost,
        top_logprobs=cfg.top_logprobs, max_outage_s=cfg.max_outage_s)
