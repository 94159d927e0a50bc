"""DDK and its baselines as one recipe (``methods.md`` sections 2 and 3.2).

Held-out validation sequences per domain -> teacher perplexities (once, cached in the run
folder) -> the student trains on CE + gamma * KD (chunked) in intervals of K optimizer steps,
each interval's sequences drawn from the current domain weights -> at every boundary the
student's validation perplexities are measured and the weights updated -> per-domain test
perplexity and the student/teacher ratio. The variants differ only in weights and KD term:

==========  ========================================  =======
method      domain weights                            KD term
==========  ========================================  =======
cpt         natural mixture, fixed                    none
kd          natural mixture, fixed                    yes
ddk_es      uniform, fixed                            yes
ddk_wo_fs   Eq. 1 each interval (no smoothing)        yes
ddk         Eq. 2, alpha-smoothed from r_0 = Eq. 1    yes
==========  ========================================  =======

The first interval uses ``method.init_mixture`` (natural by default, as Alg. 1 samples D_0 at
random). Weights, sampler positions and the history live in every checkpoint, so a killed run
resumes with the same weights and draws.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from domdistill import distributed as dist
from domdistill.config import RunConfig
from domdistill.data.domains import HEAD_TAIL_RULE, report_head_tail
from domdistill.evaluation.plots import domain_weight_lines
from domdistill.evaluation.tracking import Tracker, metric_scalars
from domdistill.io import atomic_write_json
from domdistill.methods import ddk_parts as parts
from domdistill.methods.task import Task
from domdistill.progress import say
from domdistill.runs import RunDir
from domdistill.training import checkpoints as ck


class DDKRun:
    """One run of DDK or a baseline; ``run()`` trains (or resumes) and writes ``results.json``."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, task: Task, progress: bool = True):
        self.cfg, self.dir, self.task, self.progress = cfg, run_dir, task, progress
        self.method = cfg.method.name
        self.uses_kd = self.method != "cpt" and cfg.method.gamma > 0
        self.max_len = cfg.training.max_seq_len
        shared = Path(cfg.method.teacher_cache).expanduser() if cfg.method.teacher_cache else None
        self.logit_root = shared or run_dir.root / "teacher_logits"
        self.ppl_cache = (shared or run_dir.root) / "teacher_ppl.json"
        self.state_path = run_dir.root / "ddk_state.json"
        self.student_dir = run_dir.root / "student"
        self.params: dict[str, int | None] = {}
        self.logit_stats: dict[str, Any] | None = None  # the offline cache, as built or reused

    def _say(self, message: str) -> None:
        if dist.is_main():  # one phase line per run, not one per process
            say(f"{self.method}: {message}")

    # -- models ----------------------------------------------------------------------------

    def _teacher_ppl(self, teacher, tok, texts: dict[str, list[str]], split: str):
        """Teacher perplexity per domain, computed once per teacher and text set, then cached."""
        from domdistill.evaluation.perplexity import domain_perplexities

        if teacher is None:
            return None
        key = f"{parts.model_id(self.cfg.teacher.model)}|{split}|{parts.texts_hash(texts, self.max_len)}"
        return parts.cached_perplexities(self.ppl_cache, key, lambda: domain_perplexities(
            teacher, tok, texts, self.max_len, self.cfg.evaluation.batch_size))
    def _models(self):
        """(student, tokenizer, teacher or None); a tiny-preset student gets the teacher's
        tokenizer. Compatibility is checked before anything is computed."""
        from domdistill.models.compat import check_kd_compatible
        from domdistill.models.loading import (
            apply_training_options, is_tiny_preset, load_model_and_tokenizer, load_student)
        from domdistill.models.shrink import shrink
        from domdistill.models.tiny import build_tiny_model

        cfg = self.cfg
        teacher = t_tok = None
        if cfg.teacher.kind == "hf":
            teacher, t_tok = load_model_and_tokenizer(cfg.teacher.model, cfg.student.dtype)
        elif self.uses_kd:
            from domdistill.errors import ConfigError

            raise ConfigError(f"{self.method} distils logits: set teacher.kind to 'hf' and "
                              f"teacher.model to the teacher's folder or hub id",
                              field="teacher.kind")
        if is_tiny_preset(cfg.student.model) and t_tok is not None:
            tok = t_tok
            student = build_tiny_model(cfg.student.model, tok, seed=cfg.student.init_seed)
            student = shrink(student, cfg.student.init, cfg.student.num_layers,
                             cfg.student.init_seed)
            student = apply_training_options(student, cfg.student)
        else:
            texts = [parts.lm_text(ex) for ex in self.task.pool]
            student, tok = load_student(cfg.student, texts=texts,
                                        cache_dir=self.dir.root / "models")
        if teacher is not None:
            check_kd_compatible(t_tok, tok, teacher.config, student.config)
        import torch

        if torch.cuda.is_available():  # perplexities are measured before the Trainer moves them
            device = dist.device()
            teacher = teacher.to(device) if teacher is not None else None
            if not getattr(student, "is_loaded_in_4bit", False):
                student = student.to(device)
        return student, tok, teacher

    # -- the recipe -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        start = time.time()
        clock = {"start": start}
        self._say("loading the models")
        from domdistill.models.tiny import count_parameters  # torch + transformers: load on use

        student, tok, teacher = self._models()
        self.params = {"student": count_parameters(student),
                       "teacher": count_parameters(teacher) if teacher is not None else None}
        clock["load"] = time.time()
        train, val = parts.split_validation(list(self.task.pool), self.cfg.method.val_per_domain,
                                            self.cfg.data.seed)
        if dist.is_main():
            atomic_write_json(self.dir.root / "validation.json",
                              {d: [ex.id for ex in exs] for d, exs in val.items()})
        val_texts = {d: [parts.lm_text(ex) for ex in exs] for d, exs in val.items()}
        if teacher is not None:
            self._say(f"teacher perplexity on {sum(map(len, val_texts.values()))} validation texts "
                      f"in {len(val_texts)} domains")
        teacher_ppl = dist.on_main(lambda: self._teacher_ppl(teacher, tok, val_texts, "val"))
        clock["teacher_perplexity"] = time.time()
        tracker = (Tracker.from_config(self.cfg, self.dir.root) if dist.is_main()
                   else Tracker(self.dir.root, []))
        trained = (self.student_dir / "config.json").is_file() and self.state_path.is_file()
        try:
            state = (json.loads(self.state_path.read_text(encoding="utf-8")) if trained else
                     self._train(student, tok, teacher, train, val_texts, teacher_ppl, tracker))
            clock["train"] = time.time()

            def finish() -> dict[str, Any]:  # the main process: test metrics, plot, results
                from domdistill.methods.students import load_trained_student

                final, final_tok = load_trained_student(self.student_dir)  # also when resumed
                self._say(f"evaluating: test perplexity on {len(self.task.test)} texts")
                metrics = self._test_metrics(final, final_tok, teacher)
                clock["evaluate"] = time.time()
                steps = list(clock)
                phases = {k: round(clock[k] - clock[p], 2) for p, k in zip(steps, steps[1:])}
                tracker.log({"eval": metric_scalars(metrics)}, step=state["steps"])
                if state["history"]:
                    domain_weight_lines(state["history"], self.dir.root / "domain_weights.png",
                                        f"{self.method}: domain weights")
                return self._results(metrics, state, {d: len(v) for d, v in train.items()},
                                     {d: len(v) for d, v in val.items()}, time.time() - start,
                                     phases)

            return dist.on_main(finish)
        finally:
            tracker.close()

    def _train(self, student, tok, teacher, train, val_texts, teacher_ppl,
               tracker: Tracker) -> dict[str, Any]:
        """Interval-wise training; returns the final DDK state (history, tokens, losses). Each
        interval's weights and perplexities, and the training logs, go to ``tracker`` as they
        are made."""
        from transformers.trainer_callback import PrinterCallback
        from transformers.utils import logging as hf_logging

        from domdistill.data.mixture import DomainSampler
        from domdistill.evaluation.perplexity import domain_perplexities
        from domdistill.methods.students import save_student
        from domdistill.training.data import encode_pair, pad_id
        from domdistill.training.domain_plan import (
            DomainPlan, IntervalCallback, SlotDataset, collate_slots)
        from domdistill.training.kd_trainer import KDTrainer
        from domdistill.training.sft import (
            LogToTracker, _StepPrinter, show_progress, training_arguments)

        cfg, tc, m = self.cfg, self.cfg.training, self.cfg.method
        sequences = {d: [{"key": ex.id, **encode_pair(tok, "", parts.lm_text(ex), self.max_len)}
                         for ex in exs] for d, exs in train.items()}
        counts = {d: len(v) for d, v in sequences.items()}
        global_batch = tc.batch_size * tc.grad_accum * dist.world_size()
        total = tc.max_steps or max(1, math.ceil(tc.epochs * sum(counts.values()) / global_batch))

        def measure(model) -> dict[str, float]:  # the main process measures for all
            return dist.on_main(lambda: domain_perplexities(model, tok, val_texts, self.max_len,
                                                            cfg.evaluation.batch_size))

        def entry(step: int, student_ppl: dict[str, float], tokens: int) -> dict[str, Any]:
            ratio = ({d: student_ppl[d] / teacher_ppl[d] for d in student_ppl}
                     if teacher_ppl else None)
            return {"step": step, "weights": dict(state["weights"]), "factor": state["factor"],
                    "student_ppl": student_ppl, "teacher_ppl": teacher_ppl, "ratio": ratio,
                    "tokens": tokens}

        checkpoint, saved = ck.resume_point(self.dir.checkpoints)
        sampler = DomainSampler(counts, parts.initial_mixture(self.method, cfg, counts, None),
                                seed=tc.seed, mode=m.interval_sampling)
        plan = DomainPlan(sequences, sampler, m.interval_steps * global_batch, pad_id(tok),
                          self._offline_topk(teacher, tok, sequences))
        if saved is not None:
            state = saved["ddk"]
            plan.load_state(saved["plan"])
        else:
            ppl0 = measure(student)
            factor = parts.dw.discrepancy_factor(ppl0, teacher_ppl) if teacher_ppl else None
            state = {"factor": factor, "history": [],
                     "weights": parts.initial_mixture(self.method, cfg, counts, factor)}
            plan.sampler.set_weights(state["weights"])
            state["history"].append(entry(0, ppl0, 0))
            tracker.log_interval(0, state["weights"], ppl0, teacher_ppl)

        def on_boundary(step: int, model) -> None:
            self._say(f"step {step}/{total}: validation perplexity"
                      + (", domain weights updated" if self.method in parts.ADAPTIVE else ""))
            ppl = measure(model)
            if teacher_ppl:
                state["factor"] = parts.next_weights(self.method, cfg, state["factor"], ppl,
                                                     teacher_ppl)
                if self.method in parts.ADAPTIVE:
                    state["weights"] = dict(state["factor"])
                    plan.sampler.set_weights(state["weights"])
            state["history"].append(entry(step, ppl, trainer.tokens_seen))
            tracker.log_interval(step, state["weights"], ppl, teacher_ppl)

        callbacks = [IntervalCallback(m.interval_steps, total, on_boundary), LogToTracker(tracker)]
        if os.environ.get("DOMDISTILL_PRINT_STEPS"):
            callbacks.append(_StepPrinter())
        args = training_arguments(tc, self.dir.checkpoints, self.progress, max_steps=total,
                                  train_sampling_strategy="sequential", save_strategy="steps",
                                  save_steps=tc.save_steps or m.interval_steps)
        online = teacher if self.uses_kd and m.teacher_logits == "online" else None
        trainer = KDTrainer(
            model=student, args=args, train_dataset=SlotDataset(total * global_batch),
            data_collator=collate_slots, processing_class=tok, callbacks=callbacks,
            method_state=lambda: {"ddk": {**state, "tokens": trainer.tokens_seen},
                                  "plan": plan.state_dict()}, teacher=online,
            gamma=m.gamma if self.uses_kd else 0.0, temperature=m.kd_temperature,
            divergence=m.divergence, divergence_param=m.divergence_param, batch_fn=plan.resolve)
        trainer.tokens_seen = state.get("tokens", 0)  # resumed: what the checkpoint had seen
        self._say(f"training {total} steps of {global_batch} sequences"
                  + (f", resuming from {checkpoint.name}" if checkpoint else "")
                  + (f", gamma {m.gamma}" if self.uses_kd else " (no KD term)")
                  + f", validation every {m.interval_steps} steps")
        bars = hf_logging.is_progress_bar_enabled()
        if not show_progress(self.progress):
            trainer.remove_callback(PrinterCallback)
            hf_logging.disable_progress_bar()
        try:
            with ck.loading_checkpoint(checkpoint, trainer):
                trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        logs = trainer.state.log_history
        state["losses"] = [{k: e[k] for k in ("step", "loss", "ce", "kd") if k in e}
                           for e in logs if "loss" in e]
        for prev, cur in zip(state["history"], state["history"][1:]):  # mean loss per interval
            inside = [e["loss"] for e in state["losses"] if prev["step"] < e["step"] <= cur["step"]]
            cur["loss"] = sum(inside) / len(inside) if inside else None
        state["tokens"] = trainer.tokens_seen
        state["steps"] = total
        if dist.is_main():
            save_student(trainer.model, tok, self.student_dir)
            atomic_write_json(self.state_path, state)
        return state

    def _offline_topk(self, teacher, tok, sequences):
        """The offline teacher signal (``method.teacher_logits: offline``), built once."""
        if not (self.uses_kd and self.cfg.method.teacher_logits == "offline"):
            return None
        from domdistill.training.logit_cache import build_logit_cache

        shared = self.cfg.method.teacher_cache
        self._say(f"the teacher's top-{self.cfg.method.topk} logits for "
                  f"{sum(map(len, sequences.values()))} training sequences (cached "
                  + (f"in {shared}, shared by runs)" if shared else "in the run)"))

        def build():  # written by the main process; the others then open what it wrote
            return build_logit_cache(
                self.logit_root, teacher, tok,
                [(s["key"], s["input_ids"]) for seqs in sequences.values() for s in seqs],
                teacher_id=parts.model_id(self.cfg.teacher.model), k=self.cfg.method.topk,
                temperature=self.cfg.method.kd_temperature,
                batch_size=self.cfg.evaluation.batch_size, progress=self.progress,
                keyed=shared is not None)

        def build_on_main() -> None:
            started = time.time()
            cache = build()
            self.logit_stats = {"folder": str(cache.root), "seconds": round(time.time() - started, 2),
                                "sequences": len(cache), "tokens": cache.rows,
                                "bytes": cache.nbytes, "bytes_per_token": round(
                                    cache.nbytes / max(cache.rows, 1), 1), "k": cache.k}
            self._say(f"teacher logits: {cache.rows} tokens, {cache.nbytes / 2**20:.1f} MiB "
                      f"({self.logit_stats['bytes_per_token']:.0f} bytes per token), "
                      f"{self.logit_stats['seconds']:.1f} s")

        dist.on_main(build_on_main)
        return build().get

    def _test_metrics(self, student, tok, teacher) -> dict[str, Any]:
        """Per-domain test perplexity of the student, and of the teacher (cached) with ratios."""
        from domdistill.evaluation.perplexity import text_losses

        texts = {d: [parts.lm_text(ex) for ex in exs] for d, exs in self.task.test.by_domain.items()}
        student_losses = {}
        for d, items in texts.items():
            losses = text_losses(student, tok, items, self.max_len, self.cfg.evaluation.batch_size)
            student_losses[d] = (sum(x for x, _ in losses), sum(t for _, t in losses), len(items))
        teacher_ppl = self._teacher_ppl(teacher, tok, texts, "test")
        return parts.ppl_metrics(student_losses, teacher_ppl, report_head_tail(self.task.pool.counts()))

    def _results(self, metrics, state, train_counts, val_counts, wall, phases) -> dict[str, Any]:
        from domdistill.evaluation.results import write_results

        cfg = self.cfg
        return write_results(
            self.dir.results, self.method, metrics, wall_seconds=wall, phase_seconds=phases,
            history=state["history"],
            dataset={"name": self.task.name, "pool": len(self.task.pool),
                     "test": len(self.task.test), "domains": len(train_counts),
                     "domain_counts": self.task.pool.counts(), "train_counts": train_counts,
                     "validation_counts": val_counts},
            student={"model": cfg.student.model, "lora": cfg.student.lora,
                     "init": cfg.student.init, "num_layers": cfg.student.num_layers,
                     "params": self.params.get("student")},
            teacher={"kind": cfg.teacher.kind, "model": cfg.teacher.model,
                     "params": self.params.get("teacher"), "logits": self.logit_stats},
            training={"steps": state.get("steps"), "tokens": state.get("tokens"),
                      "sequences": (state.get("steps") or 0) * cfg.training.batch_size
                      * cfg.training.grad_accum, "losses": state.get("losses", []),
                      "gamma": cfg.method.gamma if self.uses_kd else 0.0,
                      "interval_steps": cfg.method.interval_steps,
                      "teacher_logits": cfg.method.teacher_logits if self.uses_kd else None},
            head_domains=metrics["head"]["domains"], tail_domains=metrics["tail"]["domains"],
            head_tail_rule=f"{HEAD_TAIL_RULE} of the training pool")


def run_ddk(cfg: RunConfig, run_dir: RunDir, task: Task, progress: bool = True) -> dict[str, Any]:
    """Run ``cfg.method.name`` (cpt, kd, ddk_es, ddk_wo_fs, ddk) into ``run_dir``."""
    return DDKRun(cfg, run_dir, task, progress).run()


def run_ddk_demo(out: str | Path, overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """KD vs DDK on the built-in task at equal tokens, with a tiny CPT teacher trained first."""
    from domdistill.methods.ddk_demo import run_demo

    return run_demo(Path(out), overwrite)
