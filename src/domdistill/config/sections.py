"""The run configuration's sections: one pydantic model each, with defaults and bounds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from domdistill.errors import ConfigError
from domdistill.redact import ENV_NAME

METHODS = (
    "zero_shot_cot", "random_ft", "random_ft_cot", "duplicate_ft_cot", "balance_ft_cot",
    "active_ft_cot", "baldistill_n", "baldistill_a", "cpt", "kd", "ddk_es", "ddk_wo_fs", "ddk",
)
MethodName = Literal[
    "zero_shot_cot", "random_ft", "random_ft_cot", "duplicate_ft_cot", "balance_ft_cot",
    "active_ft_cot", "baldistill_n", "baldistill_a", "cpt", "kd", "ddk_es", "ddk_wo_fs", "ddk",
]
TaskType = Literal["classification", "multiple_choice", "math", "qa", "builtin"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class FieldMap(Section):
    """Names of the source fields that hold each part of an example (JSONL, CSV, HF datasets)."""

    id: str | None = Field(None, description="Field with each example's unique id; unset, ids are "
                           "FILE-LINE and an `id` field in the records stays in metadata "
                           "(set `id: id` to use it)")
    domain: str = "domain"
    input: str = "input"
    answer: str = "answer"
    rationale: str | None = None


class DataConfig(Section):
    """Where the examples come from and how they are split."""

    path: str = Field("builtin", description="File, folder, HF dataset, or 'builtin' for the embedded task")
    format: Literal["auto", "jsonl", "csv", "r52", "math", "recorded", "hf", "builtin"] = "auto"
    fields: FieldMap = Field(default_factory=FieldMap)
    split: str | None = Field(None, description="Split inside the source (MATH: train/test; HF: split name)")
    test_path: str | None = Field(None, description="Separate test set; else a stratified split of path")
    test_format: Literal["auto", "jsonl", "csv", "r52", "math", "recorded", "hf", "builtin"] = "auto"
    task: TaskType = "builtin"
    label_set: list[str] | None = Field(None, description="Allowed labels (classification); default: all seen")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.0, ge=0, lt=1)
    zipf_alpha: float | None = Field(None, gt=0, description="Resample the pool long-tailed with this exponent")
    zipf_largest: int | None = Field(
        None, gt=0, description="With zipf_alpha: size of the largest domain after resampling "
        "(the domain of rank r gets zipf_largest / r**zipf_alpha); default: its full size")
    max_test_per_domain: int | None = Field(
        None, gt=0, description="Keep at most N test examples per domain when the test set is "
        "made (the rest are dropped from the run); `evaluation.max_per_domain` instead keeps the "
        "whole test set and evaluates at most N per domain of it")
    builtin_size: int = Field(2000, gt=0, le=10**7, description="Pool size of the built-in task")
    seed: int = 0

    @field_validator("max_test_per_domain")
    @classmethod
    def _builtin_test_set_size(cls, value: int | None, info: ValidationInfo) -> int | None:
        from domdistill.data.builtin import MAX_TEST_PER_DOMAIN  # data imports the config

        builtin = "builtin" in (info.data.get("path"), info.data.get("format"))
        if builtin and value is not None and value > MAX_TEST_PER_DOMAIN:
            raise ValueError(f"the built-in task makes 1 to {MAX_TEST_PER_DOMAIN:,} test "
                             "examples per domain")
        return value


class TeacherConfig(Section):
    """Which teacher answers, and how it is called."""

    kind: Literal["program", "openai", "hf", "recorded"] = "program"
    model: str = Field("program", description="Model name (API), HF id, folder or .gguf file (hf), or a label")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the environment variable holding "
                                                           "the key (the name, never the key)")
    recorded_paths: list[str] = Field(default_factory=list, description="Recorded-teacher JSONL(.gz) files")
    concurrency: int = Field(16, gt=0, le=4096)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0, description="Extra attempts per request after the first")
    max_outage_s: float = Field(
        30.0, gt=0, description="Stop a batch (resumable) when the teacher has answered nothing "
                                "for this long: refused connections, 5xx, timeouts")
    max_failure_rate: float = Field(
        0.1, ge=0, le=1, description="Stop the run (resumable, exit 2) when more than this share "
                                     "of a stage's teacher requests failed")
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(512, gt=0, le=10**7)
    price_per_1k_input: float = Field(0.0, ge=0, description="Cost estimate, currency per 1k prompt tokens")
    price_per_1k_output: float = Field(0.0, ge=0)
    shared_cache: str | None = Field(None, description="Ledger file shared across runs as a cache")
    retry_base_s: float = Field(1.0, gt=0, description="First backoff step (jittered, doubles per retry)")
    retry_max_s: float = Field(60.0, gt=0, description="Longest backoff wait (Retry-After is honoured)")
    budget_tokens: int | None = Field(None, gt=0, le=10**15, description="Hard token budget on top of method.budget calls")
    budget_money: float | None = Field(None, gt=0, description="Hard money budget (needs the prices)")
    recorded_match: Literal["exact", "r52"] = Field("exact", description="How recorded inputs are matched")
    batch_size: int = Field(8, gt=0, description="Prompts per generate() call (hf teacher)")
    top_logprobs: int | None = Field(None, gt=0, le=20, description="Ask the API for top-k log-probs")
    system_prompt: str | None = Field(None, description="Teacher system prompt (default built in)")
    rationale_prompt: str | None = Field(None, description="Zero-shot CoT template: {instruction} {input}")
    rationale_prompt_with_answer: str | None = Field(None, description="Same with the gold {answer} shown")
    synthesis_prompt: str | None = Field(None, description="Tail synthesis template: {instruction} {domain} "
                                                           "{k} {exemplars} {number}")

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _names_a_variable(cls, value: Any) -> Any:
        if isinstance(value, str) and not ENV_NAME.fullmatch(value):
            raise PydanticCustomError(
                "env_name", "expected the name of an environment variable (letters, digits and _, "
                "e.g. OPENAI_API_KEY), not the key itself; the value is not shown")
        return value


class StudentConfig(Section):
    """The model being trained: a tiny preset (CPU), an HF id or a local path."""

    model: str = Field("tiny", description="Preset name (tiny, small, ...), HF model id, local folder, "
                       ".gguf file, or smollm2-135m-instruct (the reference model)")
    lora: bool = False
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit NF4 base (needs bitsandbytes + GPU)")
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vocab_size: int = Field(512, ge=260, description="Tokenizer vocabulary of a tiny preset (trained on the data)")
    init: Literal["pretrained", "depth_pruned", "fresh"] = Field(
        "pretrained", description="pretrained: model's weights as they are; depth_pruned: keep "
        "num_layers of its decoder layers (evenly spaced, first and last kept) and its "
        "embeddings, norms and lm_head (set model to the teacher to shrink it); fresh: its "
        "architecture and tokenizer with random weights (init_seed)")
    num_layers: int | None = Field(None, gt=0, description="Decoder layers of a depth_pruned "
                                   "(required) or fresh (default: all) student")
    init_seed: int = Field(
        0, description="Seed of the random initialisation: a tiny preset's weights, a new LoRA adapter, a fresh student")

    @model_validator(mode="after")
    def _layers_need_init(self) -> "StudentConfig":
        if self.init == "depth_pruned" and self.num_layers is None:
            raise ValueError("init: depth_pruned needs num_layers (how many of the model's "
                             "layers to keep)")
        if self.init == "pretrained" and self.num_layers is not None:
            raise ValueError(f"num_layers: {self.num_layers} shrinks the model only with init: "
                             "depth_pruned or fresh")
        return self


class MethodConfig(Section):
    """The recipe and its knobs. BalDistill fields apply to sequence-level methods, DDK to logit KD."""

    name: MethodName = "baldistill_a"
    # BalDistill
    budget: int = Field(400, gt=0, le=10**9, description="Total teacher calls B")
    stages: int = Field(5, gt=0, le=10_000, description="Number of stages K")
    adaptive_indexing: Literal["paper", "code"] = "paper"
    selection: Literal["ifd", "random", "entropy"] = "ifd"
    score_max_new_tokens: int = Field(200, gt=0, le=1_000_000, description="Tokens the student writes when scored")
    score_candidates: int | None = Field(
        None, gt=0, description="Score at most this many random candidates per head domain "
                                "(default: the whole remaining pool)")
    synthesis_exemplars: int = Field(4, gt=0)
    synthesis_cost: Literal[1, 2] = 1
    answer_filter: bool = True
    retrain: Literal["fresh", "continue"] = "fresh"
    # DDK
    gamma: float = Field(0.2, ge=0)
    kd_temperature: float = Field(1.0, gt=0)
    divergence: Literal["fkl", "rkl", "jsd", "skew_fkl", "skew_rkl", "tvd"] = "fkl"
    divergence_param: float | None = Field(
        None, description="beta of jsd (default 0.5), lambda of skew_fkl/skew_rkl (default 0.1)")
    interval_steps: int = Field(10, gt=0)
    smoothing_alpha: float = Field(0.5, ge=0, le=1)
    val_per_domain: int = Field(500, gt=0)
    init_mixture: Literal["natural", "uniform", "r0"] = Field(
        "natural", description="DDK: mixture of the first interval (r0 = Eq. 1 of the initial student)")
    weight_update: Literal["ddk", "doremi"] = Field(
        "ddk", description="DDK: Eq. 2 (perplexity ratio) or a DoReMi-style excess-loss step")
    interval_sampling: Literal["categorical", "largest_remainder"] = Field(
        "categorical", description="DDK: draw each interval's domains i.i.d. or as exact counts")
    teacher_logits: Literal["online", "offline"] = Field(
        "online", description="Logit KD: run the teacher every step, or train from cached top-k")
    topk: int = Field(64, gt=0, description="Offline teacher logits: log-probs kept per token")
    teacher_cache: str | None = Field(
        None, description="Folder shared by runs for what the teacher computes once per data "
        "set: offline top-k logits and validation/test perplexities (default: inside each run "
        "folder). Runs on the same data, teacher and tokenization reuse it")

    @model_validator(mode="after")
    def _stages_fit_budget(self) -> "MethodConfig":
        if self.stages > self.budget:
            raise ValueError(f"stages ({self.stages}) is larger than budget ({self.budget}): "
                             "every stage needs at least one teacher call")
        return self

    @field_validator("divergence_param")
    @classmethod
    def _divergence_param_in_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None:
            from domdistill.training.divergences import resolve_divergence

            try:
                resolve_divergence(info.data.get("divergence", "fkl"), value, value)
            except ConfigError as e:
                raise ValueError(e.reason) from None
        return value

    @model_validator(mode="after")
    def _offline_logits_use_forward_kl(self) -> "MethodConfig":
        if self.teacher_logits == "offline" and self.divergence != "fkl":
            raise ValueError(f"divergence {self.divergence!r} needs the teacher's full distribution; "
                             "offline top-k logits train with forward KL (divergence: fkl), or use "
                             "teacher_logits: online")
        return self


class TrainingConfig(Section):
    """Fine-tuning hyperparameters (passed to the HF training stack)."""

    epochs: float = Field(3.0, gt=0, le=1_000_000)
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(16, gt=0, le=1_000_000, description="Sequences per optimizer step "
                            "and process: under accelerate launch / torchrun the global batch is "
                            "batch_size x processes x grad_accum")
    grad_accum: int = Field(1, gt=0)
    max_seq_len: int = Field(256, gt=0, le=10_000_000)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    max_grad_norm: float = Field(0.3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps (default: each epoch)")
    save_total_limit: int = Field(2, gt=0)
    logging_steps: int = Field(1, gt=0, description="Record the training loss every N optimizer steps")
    deterministic: bool = Field(False, description="Deterministic kernels (bit-reproducible resume on CPU)")
    cpu_threads: int | None = Field(None, gt=0, description="torch CPU threads (1 is fastest for tiny "
                                                            "models on small machines; default: torch's)")
    seed: int = 0


class EvaluationConfig(Section):
    """How students are judged per domain."""

    max_new_tokens: int = Field(128, gt=0, le=1_000_000)
    batch_size: int = Field(32, gt=0, le=1_000_000)
    bootstrap: int = Field(1000, ge=0, le=1_000_000, description="Bootstrap resamples for confidence intervals (0: none)")
    perplexity: bool = True
    ci_level: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap confidence intervals")
    max_per_domain: int | None = Field(None, gt=0, description="Evaluate at most N examples per domain")
    seed: int = Field(0, description="Seed of the bootstrap resampling")


class OutputConfig(Section):
    """Where the run folder goes."""

    dir: str = "runs/run"
    overwrite: bool = False
    tracking: list[Literal["tensorboard", "wandb"]] | None = Field(
        None, description="Experiment trackers for per-domain metrics, domain weights and spend "
                          "(logs/tensorboard; wandb uses WANDB_PROJECT). Unset: TensorBoard when "
                          "installed; [] for none")


class RunConfig(Section):
    """A complete run: data -> teacher -> method -> student training -> evaluation -> output."""

    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    # where the loaded file wrote ${VAR}: location -> the text as written (saved instead of values)
    _templates: dict[tuple[str | int, ...], str] = PrivateAttr(default_factory=dict)

    def redacted(self) -> dict[str, Any]:
        """The config as a plain dict, safe to write: ``${VAR}`` references as the file wrote
        them (never their values), variable names rather than keys."""
        data = self.model_dump(mode="json")
        for loc, raw in self._templates.items():
            node: Any = data
            for part in loc[:-1]:
                node = node[part] if isinstance(node, (dict, list)) else None
            if isinstance(node, dict) and loc[-1] in node or \
                    isinstance(node, list) and isinstance(loc[-1], int) and loc[-1] < len(node):
                node[loc[-1]] = raw
        return data
