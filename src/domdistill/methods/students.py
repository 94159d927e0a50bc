"""Student life-cycle shared by the recipes: build, fine-tune, save, reload, evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domdistill import distributed as dist
from domdistill.config import RunConfig
from domdistill.data.example import DomainExample
from domdistill.io import atomic_dir
from domdistill.errors import ConfigError
from domdistill.methods.task import Task
from domdistill.progress import say
from domdistill.runs import RunDir


def tokenizer_texts(task: Task) -> list[str]:
    """Texts a tiny preset's tokenizer is trained on: the pool as the student will see it."""
    t = task.template
    return [t.prompt(ex.input) + t.completion(ex.rationale, ex.answer) for ex in task.pool]


def student_tokenizer(cfg: RunConfig, run_dir: RunDir | None, task: Task) -> Any:
    """The base student's tokenizer (a tiny preset's is trained, so its model is built too)."""
    from domdistill.models.loading import is_tiny_preset, prepare_tokenizer

    if is_tiny_preset(cfg.student.model):
        from domdistill.models.loading import load_student

        cache = run_dir.root / "models" if run_dir is not None else None
        return load_student(cfg.student, texts=tokenizer_texts(task), cache_dir=cache)[1]
    from transformers import AutoTokenizer

    from domdistill.models.gguf import resolve_model_name

    name = resolve_model_name(cfg.student.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - missing/damaged files raise many kinds
        raise ConfigError(f"cannot load the tokenizer of {cfg.student.model!r}: "
                          f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                          field="student.model") from None
    return prepare_tokenizer(tokenizer)


def check_student_format(cfg: RunConfig, task: Task, tokenizer: Any = None,
                         training_answers: list[str] | None = None) -> dict[str, Any]:
    """Before anything is paid: the prompts and answers fit the student. Refuses a
    ``max_seq_len`` whose prompts cannot hold the instruction and label set, a
    ``max_new_tokens`` that cannot hold the answer line; reports how many inputs will be cut
    and, given sample ``training_answers`` (rationale and answer line), their lengths in tokens
    against ``evaluation.max_new_tokens`` and ``method.score_max_new_tokens``."""
    tok = tokenizer if tokenizer is not None else student_tokenizer(cfg, None, task)
    template = task.template
    template.room_for_input(tok)
    answers = sorted(set(task.labels or [ex.answer for ex in task.pool]), key=len)
    longest = answers[-1] if task.labels else answers[len(answers) // 2]
    line = len(tok(template.completion(None, longest), add_special_tokens=False)["input_ids"]) + 1
    if line > cfg.evaluation.max_new_tokens:
        raise ConfigError(
            f"evaluation.max_new_tokens ({cfg.evaluation.max_new_tokens}) cannot hold the answer line "
            f"'{template.completion(None, longest)}' ({line} tokens with eos)",
            field="evaluation.max_new_tokens")
    positions = _max_positions(cfg)
    if positions is not None and cfg.training.max_seq_len > positions:
        raise ConfigError(f"training.max_seq_len ({cfg.training.max_seq_len}) is longer than the "
                          f"student's {positions} positions", field="training.max_seq_len")
    texts = [ex.input for ex in list(task.pool) + list(task.test)]
    cut = sum(template.fit(tok, text)[1] for text in texts)
    out: dict[str, Any] = {"inputs": len(texts), "cut": cut,
                           "max_prompt_tokens": template.max_prompt_tokens}
    if training_answers:
        # the text alone: an output cut just before its eos still holds the answer line
        lengths = sorted(len(tok(a, add_special_tokens=False)["input_ids"]) for a in training_answers)
        limits = {"evaluation.max_new_tokens": cfg.evaluation.max_new_tokens,
                  "method.score_max_new_tokens": cfg.method.score_max_new_tokens}
        out["answers"] = {"measured": len(lengths), "median_tokens": lengths[len(lengths) // 2],
                          "p95_tokens": lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
                          "longer_than": {k: sum(n > v for n in lengths) / len(lengths)
                                          for k, v in limits.items()}}
    return out


def _max_positions(cfg: RunConfig) -> int | None:
    from domdistill.models.loading import is_tiny_preset

    if is_tiny_preset(cfg.student.model):
        return None
    from transformers import AutoConfig

    from domdistill.models.gguf import resolve_model_name

    try:
        config = AutoConfig.from_pretrained(resolve_model_name(cfg.student.model))
    except Exception:  # noqa: BLE001 - the model load reports a damaged config properly
        return None
    return getattr(config, "max_position_embeddings", None)


def base_student(cfg: RunConfig, run_dir: RunDir, task: Task, for_generation: bool = False):
    """A fresh copy of the base student (tiny presets are built once and cached in the run)."""
    from domdistill.models.loading import load_student

    return load_student(cfg.student, texts=tokenizer_texts(task), cache_dir=run_dir.root / "models",
                        for_generation=for_generation)


def load_trained_student(path: str | Path, for_generation: bool = False):
    """Reload a saved student; a LoRA adapter folder is merged into its base for inference.
    ``for_generation``: left padding, and on this process's GPU when there is one."""
    from domdistill.models.loading import load_model_and_tokenizer

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        from domdistill.models.loading import prepare_tokenizer

        model = AutoPeftModelForCausalLM.from_pretrained(path).merge_and_unload()
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path), for_generation)
    else:
        model, tok = load_model_and_tokenizer(path, for_generation=for_generation)
    return (on_accelerator(model) if for_generation else model), tok


def on_accelerator(model: Any) -> Any:
    """``model`` on this process's GPU (``cuda:LOCAL_RANK`` under a launcher) when there is one."""
    import torch  # heavy: only once a model is loaded

    if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False):
        return model.to(dist.device())
    return model


LOSSES = "training_losses.json"


def save_student(model: Any, tokenizer: Any, path: Path,
                 losses: list[tuple[int, float]] | None = None) -> None:
    """Save model and tokenizer as one folder (complete or absent), with the loss log if given."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if losses is not None:
            (tmp / LOSSES).write_text(json.dumps(losses), encoding="utf-8")


def train_student(cfg: RunConfig, run_dir: RunDir, task: Task, train_set: list[DomainExample],
                  stage: int, student_dir: Path, with_rationale: bool = True,
                  new_examples: list[DomainExample] | None = None,
                  progress: bool = True) -> list[tuple[int, float]]:
    """Fine-tune a student for one stage and save it to ``student_dir``; returns the loss log.

    ``fresh`` retraining (default, as the authors' code) starts from the base model on the whole
    cumulative set; ``continue`` starts from the previous stage's student on the new examples.
    A stage whose student is already saved is not trained again (resume); an interrupted one
    continues from its latest complete checkpoint.
    """
    from domdistill.training.sft import train_sft

    if (student_dir / "config.json").is_file() or (student_dir / "adapter_config.json").is_file():
        saved = student_dir / LOSSES  # trained before a crash: the same log as then
        return [(int(s), float(v)) for s, v in json.loads(saved.read_text())] if saved.is_file() else []
    previous = student_dir.parent / f"stage-{stage - 1}"
    if cfg.method.retrain == "continue" and stage > 1 and previous.is_dir():
        model, tok = load_trained_student(previous)
        from domdistill.models.loading import apply_training_options

        model = apply_training_options(model, cfg.student)
        examples = new_examples if new_examples is not None else train_set
    else:
        model, tok = base_student(cfg, run_dir, task)
        examples = train_set
    pairs, cut = task.template.pairs(tok, examples, with_rationale=with_rationale)
    note_cut(cut, len(pairs), task)
    result = train_sft(model, tok, pairs, cfg.training, run_dir.checkpoints / f"stage-{stage}",
                       resume=True, method_state={"stage": stage}, progress=progress)
    losses = [(int(s), float(v)) for s, v in result.losses]
    if dist.is_main():  # under a launcher the others wait until the student is saved
        save_student(result.model if result.model is not None else model, tok, student_dir, losses)
    dist.barrier()
    return losses


def note_cut(cut: int, total: int, task: Task) -> None:
    """Say how many inputs lost their end to fit the prompt limit."""
    if cut:
        say(f"{cut} of {total} inputs cut to fit {task.template.max_prompt_tokens} prompt tokens "
            "(the end of the input text is dropped; instruction and labels are kept)")


def evaluate_student(cfg: RunConfig, task: Task, student_dir: Path | None,
                     head_tail: tuple[list[str], list[str]], progress: bool = True,
                     predictions_path: Path | None = None) -> dict[str, Any]:
    """Per-domain metrics of a saved student (``None``: the untrained base student);
    ``predictions_path`` gets one JSON line per test example (output, parsed answer, gold).
    Under a launcher every process calls it: each generates its share of the test set and the
    main process writes the predictions."""
    from domdistill.evaluation.metrics import evaluate_model

    if student_dir is None:
        from domdistill.models.loading import load_student

        model, tok = load_student(cfg.student, texts=tokenizer_texts(task), for_generation=True)
        model = on_accelerator(model)
    else:
        model, tok = load_trained_student(student_dir, for_generation=True)
    head, tail = head_tail
    with dist.sharded():
        return evaluate_model(model, tok, task.test, task.task, task.template, cfg.evaluation,
                              labels=task.labels, head=head, tail=tail, progress=progress,
                              predictions_path=predictions_path if dist.is_main() else None)
