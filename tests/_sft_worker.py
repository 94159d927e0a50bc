"""A small fine-tuning run used by the crash/resume and multi-process tests.

    python tests/_sft_worker.py OUT_DIR [--resume] [--steps N] [--save-steps N] [--batch N] [--kd] [--lora]

Trains a nano Llama (hidden 32, 2 layers) on the built-in task, writes ``OUT_DIR/result.json``
(losses, final loss, resumed-from) and the final weights to ``OUT_DIR/final``. ``--kd`` trains
with the chunked CE + KD loss against a second (frozen) nano Llama as the teacher instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from domdistill.config import StudentConfig, TrainingConfig
from domdistill.data.builtin import builtin_dataset
from domdistill.data.templates import StudentTemplate
from domdistill.models.loading import add_lora
from domdistill.models.tiny import build_tiny_model, train_tokenizer
from domdistill.training.sft import TrainResult, train_sft


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--steps", type=int, default=36)
    ap.add_argument("--save-steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--kd", action="store_true")
    ap.add_argument("--lora", action="store_true", help="train a LoRA adapter (dropout 0.1)")
    args = ap.parse_args()
    out = Path(args.out)
    data = builtin_dataset(160, seed=0)
    template = StudentTemplate.for_task("builtin")
    pairs = [template.pair(ex) for ex in data]
    tok = train_tokenizer([p + c for p, c in pairs], vocab_size=300)
    model = build_tiny_model("nano", tok, seed=0)
    if args.lora:
        model = add_lora(model, StudentConfig(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1))
    cfg = TrainingConfig(max_steps=args.steps, batch_size=args.batch, grad_accum=args.grad_accum,
                         save_steps=args.save_steps, save_total_limit=2, learning_rate=3e-3,
                         warmup_ratio=0.1, schedule="cosine", max_grad_norm=1.0, max_seq_len=128,
                         deterministic=True, seed=7)
    state = {"stage": 2, "selected": [ex.id for ex in data.examples[:3]]}
    if args.kd:
        result = train_kd(model, build_tiny_model("nano", tok, seed=1), tok, pairs, cfg, out)
    else:
        result = train_sft(model, tok, pairs, cfg, out / "checkpoints", resume=args.resume,
                           method_state=lambda: {**state, "note": "saved by the trainer"},
                           progress=False)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        result.model.save_pretrained(out / "final")
        tok.save_pretrained(out / "final")
        (out / "result.json").write_text(json.dumps({
            "global_step": result.global_step, "losses": result.losses, "final_loss": result.final_loss,
            "resumed_from": result.resumed_from}))
    print("DONE", file=sys.stderr, flush=True)


def train_kd(model, teacher, tok, pairs, cfg: TrainingConfig, out: Path) -> TrainResult:
    """CE + 0.5 * forward KL to ``teacher`` through :class:`KDTrainer` (the DDK/KD trainer)."""
    from transformers.trainer_callback import PrinterCallback

    from domdistill.training.data import PadCollator, PairDataset, pad_id
    from domdistill.training.kd_trainer import KDTrainer
    from domdistill.training.sft import training_arguments

    trainer = KDTrainer(model=model, args=training_arguments(cfg, out / "checkpoints", False),
                        train_dataset=PairDataset(tok, pairs, cfg.max_seq_len),
                        data_collator=PadCollator(pad_id(tok)), processing_class=tok,
                        teacher=teacher, teacher_tokenizer=tok, gamma=0.5)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    return TrainResult(global_step=trainer.state.global_step, losses=losses, final_loss=losses[-1][1],
                       wall_seconds=0.0, resumed_from=None, model=trainer.model)


if __name__ == "__main__":
    main()
