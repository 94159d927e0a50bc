"""The task a run works on: the training pool, the test set, the task type and its template."""

from __future__ import annotations

from dataclasses import dataclass, replace

from domdistill.config import DataConfig, RunConfig
from domdistill.data.example import DomainDataset
from domdistill.data.templates import StudentTemplate
from domdistill.errors import ConfigError


def drop_duplicate_inputs(dataset: DomainDataset) -> tuple[DomainDataset, int]:
    """Keep the first of examples with the same domain and input: annotating one input twice
    would pay the teacher for nothing (the ledger would serve the second from cache)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for ex in dataset:
        key = (ex.domain, ex.input)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return dataset.subset(kept), len(dataset) - len(kept)


@dataclass
class Task:
    """Pool (unlabelled inputs with gold answers), test set, task type and student template."""

    pool: DomainDataset
    test: DomainDataset
    task: str
    labels: list[str] | None
    template: StudentTemplate
    duplicates_dropped: int = 0

    @property
    def name(self) -> str:
        return self.pool.name


def prompt_budget(cfg: RunConfig) -> int:
    """Tokens a student prompt may take: what the training length leaves once evaluation's
    longest answer is written (one limit for training, scoring, zero-shot and evaluation)."""
    room = cfg.training.max_seq_len - cfg.evaluation.max_new_tokens
    if room <= 0:
        raise ConfigError(f"training.max_seq_len ({cfg.training.max_seq_len}) leaves no room for a "
                          f"prompt once evaluation.max_new_tokens ({cfg.evaluation.max_new_tokens}) "
                          "are written; raise training.max_seq_len or lower "
                          "evaluation.max_new_tokens", field="training.max_seq_len")
    return room


def task_for_run(cfg: RunConfig) -> Task:
    """The run's task with its template's prompt limit set (:func:`prompt_budget`)."""
    task = load_task(cfg.data)
    task.template = replace(task.template, max_prompt_tokens=prompt_budget(cfg))
    return task


def load_task(cfg: DataConfig) -> Task:
    """Load pool and test set as ``cfg`` says (a separate test file, or a stratified split)."""
    from domdistill.data.domains import stratified_split, zipf_resample
    from domdistill.data.loaders import load_dataset

    if cfg.path == "builtin" or cfg.format == "builtin":
        from domdistill.data.builtin import builtin_dataset, builtin_test_set

        pool = builtin_dataset(size=cfg.builtin_size, seed=cfg.seed)
        test = builtin_test_set(per_domain=cfg.max_test_per_domain or 30, seed=cfg.seed + 1)
        pool, dropped = drop_duplicate_inputs(pool)
        return Task(pool, test, "builtin", None, StudentTemplate.for_task("builtin"), dropped)

    pool = load_dataset(cfg.path, format=cfg.format, fields=cfg.fields, split=cfg.split,
                        label_set=cfg.label_set)
    if cfg.test_path:
        test = load_dataset(cfg.test_path, format=cfg.test_format, fields=cfg.fields,
                            split="test" if cfg.split == "train" else cfg.split,
                            label_set=cfg.label_set)
        unseen = sorted(set(test.domains) - set(pool.domains))
        if unseen:
            counts = test.counts()
            shown = ", ".join(f"{d} ({counts[d]})" for d in unseen[:10])
            raise ConfigError(f"{len(unseen)} test domain(s) have no training examples: {shown}"
                              f"{' ...' if len(unseen) > 10 else ''}. Per-domain results "
                              "need every test domain in the pool: drop them from the test set "
                              "or add training data for them", path=cfg.test_path,
                              field="domain")
    else:
        single = sorted(d for d, n in pool.counts().items() if n < 2)
        if single:
            raise ConfigError(f"domain(s) with a single example: {', '.join(single[:10])}"
                              f"{' ...' if len(single) > 10 else ''}. The test set is split off "
                              "each domain, so every domain needs at least 2 examples (one to "
                              "train, one to test); add examples, drop these domains, or give "
                              "data.test_path", path=cfg.path, field="domain")
        pool, _, test = stratified_split(pool, test_fraction=cfg.test_fraction, seed=cfg.seed)
    if cfg.zipf_alpha:
        pool = zipf_resample(pool, cfg.zipf_alpha, seed=cfg.seed, largest=cfg.zipf_largest)
    if cfg.max_test_per_domain:
        test = test.subset([ex for d, exs in test.by_domain.items()
                            for ex in exs[:cfg.max_test_per_domain]])
    pool, dropped = drop_duplicate_inputs(pool)
    if not len(pool):
        raise ConfigError("the training pool is empty", path=cfg.path, field="data.path")
    labels = cfg.label_set
    if cfg.task == "classification" and labels is None:
        labels = sorted(set(pool.domains) | set(test.domains))
    return Task(pool, test, cfg.task, labels, StudentTemplate.for_task(cfg.task, labels), dropped)
