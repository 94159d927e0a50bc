"""Batched vs one-at-a-time greedy generation for evaluation, side by side on a tiny student.

    python bench/eval_throughput.py [--prompts 256] [--batch-size 64] [--max-new-tokens 32]

The last line is ``SUMMARY {json}`` with ``speedup`` (one-at-a-time seconds / batched seconds),
``prompts``, both timings, and ``agreement`` (share of prompts whose two outputs are identical).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from domdistill.data.builtin import builtin_dataset
from domdistill.data.templates import StudentTemplate
from domdistill.evaluation.generate import generate
from domdistill.models.tiny import build_tiny_model, train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256, help="number of prompts")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size of the batched run")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--preset", default="micro", help="tiny-model preset (nano, micro, tiny, ...)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default); 1 keeps timings stable on a busy machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    template = StudentTemplate.for_task("builtin")
    data = builtin_dataset(max(args.prompts, 200), seed=0)
    texts = [p + c for p, c in (template.pair(ex) for ex in data)]
    tok = train_tokenizer(texts, vocab_size=400)
    model = build_tiny_model(args.preset, tok, seed=0)
    # a model that never emits eos runs every prompt to max_new_tokens in both modes (a fair race)
    model.generation_config.eos_token_id = tok.eos_token_id
    prompts = [template.prompt(ex.input) for ex in data.examples[:args.prompts]]
    generate(model, tok, prompts[:4], max_new_tokens=4, batch_size=4, progress=False)  # warm-up

    t0 = time.perf_counter()
    batched = generate(model, tok, prompts, args.max_new_tokens, args.batch_size, progress=False)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [generate(model, tok, [p], args.max_new_tokens, 1, progress=False)[0] for p in prompts]
    t_single = time.perf_counter() - t0

    agreement = sum(a == b for a, b in zip(batched, single)) / len(prompts)
    summary = {"speedup": round(t_single / t_batched, 2), "prompts": len(prompts),
               "batched_seconds": round(t_batched, 3), "one_at_a_time_seconds": round(t_single, 3),
               "batched_prompts_per_s": round(len(prompts) / t_batched, 1),
               "one_at_a_time_prompts_per_s": round(len(prompts) / t_single, 1),
               "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
               "preset": args.preset, "agreement": round(agreement, 3),
               "threads": torch.get_num_threads()}
    print(f"batched      : {t_batched:8.2f} s  ({summary['batched_prompts_per_s']} prompts/s)")
    print(f"one-at-a-time: {t_single:8.2f} s  ({summary['one_at_a_time_prompts_per_s']} prompts/s)")
    print(f"speedup {summary['speedup']}x, identical outputs for {agreement:.1%} of prompts")
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
