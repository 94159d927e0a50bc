"""BalDistill Table 3 (R52 column) at tiny scale: real R52 documents, the authors' recorded teacher.

Replays the paper's R52 ablation offline. The training pool is the R52 training documents for which
the recorded GPT teacher has a rationale (5,042 of 6,532); the test set is ``r52-test.txt``
(2,568 documents, all of them by default). Every method gets the same budget (``--per-class`` x 52
teacher calls; setting 1 = 50 = 2,600 calls), the student is a tiny Llama built from config, and
teacher calls go through the ledger like any run (``runs/<method>-s<seed>/ledger.sqlite``).

Choices that make it fit in an hour on 2 CPU cores (all flags, see ``--help``):

- documents (pool, synthetic, test) are cut to their first ``--doc-words`` words (>= 30, so the
  recorded teacher's 30-word match key is unchanged); synthetic tail documents are normalised like
  the R52 documents (lower case, letters only, words of 3+ letters);
- the teacher's rationales are cut to their first ``--rationale-words`` words (0: whole); the
  final line ``The answer is: <topic>`` that the student learns to write is always kept;
- the student's instruction omits the 52-topic list (a tiny model learns the topics from the data);
- a tail domain asks for synthetic documents beyond those recorded: the teacher refuses (no
  invented outputs), the call is not charged, and the shortfall is reported per domain.

Studies: ``--stages 3 5 8`` (Figure 4), ``--per-class 100`` (setting 2, as far as the recordings
go), ``--student small`` (Table 4). The last line printed is ``SUMMARY {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
METHODS = ("random_ft_cot", "duplicate_ft_cot", "balance_ft_cot", "active_ft_cot",
           "baldistill_n", "baldistill_a")
STAGED = ("active_ft_cot", "baldistill_n", "baldistill_a")
NAMES = {"random_ft_cot": "Random FT CoT", "duplicate_ft_cot": "Duplicate FT CoT",
         "balance_ft_cot": "Balance FT CoT", "active_ft_cot": "Active FT CoT",
         "baldistill_n": "BalDistill N", "baldistill_a": "BalDistill A"}
# methods.md 1.9: Llama-3-8B student (Tables 2 and 3), Llama2-7B (Table 4); (macro-F1, micro-F1)
PAPER: dict[int, dict[str, dict[str, tuple[float | None, float | None]]]] = {
    50: {"llama3-8b": {"random_ft_cot": (59.70, 89.46), "duplicate_ft_cot": (46.56, 71.79),
                       "balance_ft_cot": (51.47, None), "active_ft_cot": (59.49, None),
                       "baldistill_n": (59.62, 82.49), "baldistill_a": (58.93, 87.47)},
         "llama2-7b": {"random_ft_cot": (49.83, None), "active_ft_cot": (46.88, None),
                       "baldistill_a": (58.33, None)}},
    100: {"llama3-8b": {"random_ft_cot": (64.88, None), "balance_ft_cot": (60.55, None),
                        "active_ft_cot": (64.54, None), "baldistill_n": (59.35, None),
                        "baldistill_a": (65.84, None)},
          "llama2-7b": {"random_ft_cot": (56.45, None), "active_ft_cot": (53.16, None),
                        "baldistill_a": (58.17, None)}},
}
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(seeds=[0, 1], per_class=50, epochs=3.0, test_per_domain=None, score_candidates=20),
    "quick": dict(seeds=[0], per_class=10, epochs=3.0, test_per_domain=10, score_candidates=10),
}
INSTRUCTION = "Assign a topic to the text."


# ---- data ------------------------------------------------------------------------------------
def cut_words(text: str, n: int) -> str:
    """The first ``n`` words of ``text`` (all of it when ``n`` is 0)."""
    words = text.split()
    return " ".join(words[:n] if n else words)


def prepare_data(folder: Path, shared: Path, doc_words: int, rationale_words: int) -> dict[str, Any]:
    """Write the replay's pool, test set and recorded-teacher file into ``folder``.

    The pool is the R52 training documents that the recorded teacher has a rationale for (its own
    index); the teacher file holds their rationales and the recorded synthetic tail documents,
    in the recorded teacher's order, shortened as the module docstring says.
    """
    from domdistill.data.loaders import load_dataset
    from domdistill.data.recorded import normalize_r52_text
    from domdistill.io import atomic_write_bytes
    from domdistill.teachers import RecordedTeacher
    import gzip

    if doc_words and doc_words < 30:
        raise SystemExit("--doc-words must be 0 or at least 30 (the recorded teacher's match key)")
    train = load_dataset(shared / "reuters-r52" / "r52-train.txt")
    test = load_dataset(shared / "reuters-r52" / "r52-test.txt")
    paths = sorted((shared / "baldistill-teacher" / "r52").glob("r52_chatgpt_cot_*.jsonl.gz"))
    teacher = RecordedTeacher.from_paths(paths, match="r52", real=train, name="recorded-gpt-r52")
    pool, records = [], []
    for ex in train:
        found = teacher.rationale_by_key.get(teacher.match_key(ex.input))
        if found is None:
            continue
        text = cut_words(ex.input, doc_words)
        pool.append({"id": ex.id, "domain": ex.domain, "input": text, "answer": ex.answer})
        records.append({"label": ex.answer, "text": text, "prediction": found[1] or "",
                        "rationale": cut_words(found[0], rationale_words)})
    for domain, exs in teacher.synthetic.items():
        for ex in exs:
            records.append({"gt_choice": ex.answer, "source": domain,
                            "text": cut_words(normalize_r52_text(ex.input), doc_words),
                            "prediction": ex.metadata.get("prediction") or "",
                            "rationale": cut_words(ex.rationale or "", rationale_words)})
    tests = [{"id": ex.id, "domain": ex.domain, "input": cut_words(ex.input, doc_words),
              "answer": ex.answer} for ex in test]

    def lines(rows: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "pool.jsonl", lines(pool))
    atomic_write_bytes(folder / "test.jsonl", lines(tests))
    atomic_write_bytes(folder / "teacher.jsonl.gz", gzip.compress(lines(records), mtime=0))
    synthetic = {d: len(v) for d, v in teacher.synthetic.items()}
    return {"train": len(train), "pool": len(pool), "test": len(tests),
            "synthetic": sum(synthetic.values()), "synthetic_domains": len(synthetic),
            "synthetic_by_domain": synthetic}


def data_folder(args: argparse.Namespace) -> Path:
    """Where the replay's files for these document/rationale lengths live under ``--out``."""
    return Path(args.out) / f"data-d{args.doc_words}-r{args.rationale_words}"


def load_replay_task(folder: Path, test_per_domain: int | None = None):
    """The :class:`Task` of the replay: pool and test set from ``folder``, the short instruction."""
    from domdistill.config import FieldMap
    from domdistill.data.formats import load_jsonl
    from domdistill.data.templates import StudentTemplate
    from domdistill.methods.task import Task, drop_duplicate_inputs

    fields = FieldMap(id="id")
    pool, dropped = drop_duplicate_inputs(load_jsonl(folder / "pool.jsonl", fields))
    test = load_jsonl(folder / "test.jsonl", fields)
    if test_per_domain:
        test = test.subset([ex for exs in test.by_domain.values() for ex in exs[:test_per_domain]])
    labels = sorted(set(pool.domains) | set(test.domains))
    return Task(pool, test, "classification", labels, StudentTemplate(instruction=INSTRUCTION), dropped)


# ---- runs ------------------------------------------------------------------------------------
def make_config(args: argparse.Namespace, method: str, seed: int, stages: int, labels: int,
                out: Path) -> Any:
    """The run config of one (method, K, seed)."""
    from domdistill.config import config_from_dict

    data = data_folder(args)
    return config_from_dict({
        "data": {"path": str(data / "pool.jsonl"), "format": "jsonl", "fields": {"id": "id"},
                 "test_path": str(data / "test.jsonl"), "test_format": "jsonl",
                 "task": "classification", "seed": seed},
        "teacher": {"kind": "recorded", "model": "recorded-gpt-r52", "recorded_match": "r52",
                    "recorded_paths": [str(data / "teacher.jsonl.gz")]},
        "student": {"model": args.student, "vocab_size": args.vocab_size, "init_seed": seed},
        "method": {"name": method, "budget": args.per_class * labels,
                   "stages": stages if method in STAGED else 1,
                   "score_candidates": args.score_candidates,
                   "score_max_new_tokens": args.max_new_tokens},
        "training": {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size,
                     "max_seq_len": args.max_seq_len, "cpu_threads": 1, "seed": seed,
                     "logging_steps": 10, "save_total_limit": 1},
        "evaluation": {"max_new_tokens": args.max_new_tokens, "batch_size": 64,
                       "bootstrap": args.bootstrap, "seed": seed,
                       "max_per_domain": args.stage_eval_per_domain},
        "output": {"dir": str(out)},
    })


def synthesis_shortfall(run_dir: Path) -> dict[str, int]:
    """Per domain, the synthetic documents asked for that the recorded teacher does not have."""
    from domdistill.teachers.spend import ledger_report

    if not (run_dir / "ledger.sqlite").is_file():
        return {}
    by_domain = ledger_report(run_dir)["by_domain"]
    return {d: int(v["failed"]) for d, v in by_domain.items() if v.get("failed")}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one (method, K, seed) into its folder (reusing a finished one) and return its row."""
    import torch
    from transformers.utils import logging as hf_logging

    from domdistill.config import save_config
    from domdistill.methods.baldistill import BalDistillRun
    from domdistill.runs import prepare_run_dir

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    start, cpu = time.time(), time.process_time()
    args = argparse.Namespace(**job["args"])
    out = Path(args.out) / "runs" / job["name"]
    task = load_replay_task(data_folder(args), args.test_per_domain)
    cfg = make_config(args, job["method"], job["seed"], job["stages"], len(task.labels), out)
    final_path = out / "final_metrics.json"
    same = (out / "config.yaml").is_file() and (out / "config.yaml").read_text() == _yaml(cfg)
    if not (same and (out / "results.json").is_file()):
        run_dir = prepare_run_dir(out, overwrite=not same, resume=same)
        save_config(cfg, run_dir.config)
        BalDistillRun(cfg, run_dir, task, progress=False).run()
    m = json.loads(final_path.read_text()) if same and final_path.is_file() else {}
    if m.get("test") != len(task.test):  # scored on another test subset (or not yet)
        m = final_evaluation(cfg, task, out, final_path)
    results = json.loads((out / "results.json").read_text())
    return {**{k: job[k] for k in ("key", "method", "seed", "stages")},
            "macro_f1": 100 * m["macro"]["f1"], "micro_f1": 100 * m["micro"]["f1"],
            "test": m["n"], "calls": (results.get("budget") or {}).get("spent", 0),
            "train_size": results["history"][-1]["train_size"] if results["history"] else 0,
            "shortfall": synthesis_shortfall(out), "minutes": (time.time() - start) / 60,
            "cpu_minutes": (time.process_time() - cpu) / 60}


def final_evaluation(cfg: Any, task: Any, out: Path, path: Path) -> dict[str, Any]:
    """Score the run's last student on the whole test set (the run itself scores every stage on
    ``--stage-eval-per-domain`` documents per topic) into ``final_metrics.json``."""
    from domdistill.io import atomic_write_json
    from domdistill.data.domains import report_head_tail
    from domdistill.methods.students import evaluate_student

    last = max((p for p in (out / "students").glob("stage-*")), key=lambda p: int(p.name[6:]))
    full = cfg.evaluation.model_copy(update={"max_per_domain": None})
    metrics = evaluate_student(cfg.model_copy(update={"evaluation": full}), task, last,
                               report_head_tail(task.pool.counts()), progress=False)
    metrics = {"student": str(last.relative_to(out)), "test": len(task.test), **metrics}
    atomic_write_json(path, metrics)
    return metrics


def _yaml(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(cfg.redacted(), sort_keys=False)


def plan_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One job per method, K (staged methods only) and seed; staged ones first (longest)."""
    jobs = []
    for method in args.methods:
        for k in (args.stages if method in STAGED else [1]):
            key = f"{method}@K{k}" if method in STAGED and len(args.stages) > 1 else method
            for seed in args.seeds:
                name = f"{method}-K{k}-s{seed}" if method in STAGED else f"{method}-s{seed}"
                jobs.append({"key": key, "method": method, "seed": seed, "stages": k, "name": name,
                             "args": vars(args)})
    return sorted(jobs, key=lambda j: (j["method"] not in STAGED, -j["stages"]))


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Means (and spread) over seeds per method key, in the order rows were planned."""
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(r["key"] for r in rows):
        rs = [r for r in rows if r["key"] == key]
        mean = {f: round(statistics.fmean(r[f] for r in rs), 2) for f in ("macro_f1", "micro_f1", "calls")}
        sd = {f"{f}_sd": round(statistics.stdev(r[f] for r in rs), 2) if len(rs) > 1 else 0.0
              for f in ("macro_f1", "micro_f1")}
        short: dict[str, float] = {}
        for r in rs:
            for d, n in r["shortfall"].items():
                short[d] = short.get(d, 0) + n / len(rs)
        out[key] = {**mean, **sd, "seeds": len(rs), "train_size": round(statistics.fmean(
            r["train_size"] for r in rs), 1), "shortfall": {d: round(n, 1) for d, n in short.items()}}
    return out


def print_table(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    setting = 100 if args.per_class >= 100 else 50
    paper = PAPER[setting]
    t = Table(title=f"R52 replay: {args.per_class}/class (budget {52 * args.per_class} calls), "
                    f"student {args.student}, seeds {args.seeds} (F1 x100, mean ± sd over seeds)")
    for col in ("method", "macro-F1", "micro-F1", "calls", "train ex.", f"paper L3 macro@{setting}",
                f"paper L3 micro@{setting}", f"paper L2 macro@{setting}", "synth. shortfall"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for key, s in summary.items():
        method = key.split("@")[0]
        p3 = paper.get("llama3-8b", {}).get(method, (None, None))
        p2 = paper.get("llama2-7b", {}).get(method, (None, None))
        short = sum(s["shortfall"].values())
        t.add_row(NAMES[method] + (f" {key.split('@')[1]}" if "@" in key else ""),
                  f"{s['macro_f1']:.2f} ± {s['macro_f1_sd']:.2f}",
                  f"{s['micro_f1']:.2f} ± {s['micro_f1_sd']:.2f}", f"{s['calls']:.0f}",
                  f"{s['train_size']:.0f}", *(f"{v:.2f}" if v is not None else "-"
                                              for v in (p3[0], p3[1], p2[0])),
                  f"{short:.0f} in {len(s['shortfall'])} domains" if short else "0")
    con = Console(width=160)
    con.print(t)
    for key, s in summary.items():
        if s["shortfall"]:
            doms = ", ".join(f"{d} {n:g}" for d, n in sorted(s["shortfall"].items(), key=lambda x: -x[1]))
            con.print(f"shortfall {key} (synthetic documents asked for, none recorded): {doms}")


# ---- command line ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few-minute preset: 10 per class, 1 seed, "
                   "3 epochs, 10 test documents per topic, 10 scored candidates per domain")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default 0 1; --quick: 0)")
    p.add_argument("--per-class", type=int, help="budget per topic: 50 = setting 1 (default; "
                   "--quick: 10), 100 = setting 2; the budget is per-class x 52 calls")
    p.add_argument("--stages", nargs="+", type=int, default=[5], help="K for the staged methods "
                   "(default 5); several values run each (Figure 4: 3 5 8)")
    p.add_argument("--student", choices=("tiny", "small"), default="tiny", help="student preset (Table 4)")
    p.add_argument("--epochs", type=float, help="fine-tuning epochs per stage (default 3)")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="default %(default)s")
    p.add_argument("--max-seq-len", type=int, default=256, help="default %(default)s")
    p.add_argument("--vocab-size", type=int, default=2048, help="student tokenizer vocabulary "
                   "(default %(default)s)")
    p.add_argument("--doc-words", type=int, default=64, help="words kept per document (default "
                   "%(default)s; 0: all)")
    p.add_argument("--rationale-words", type=int, default=12, help="words kept per teacher "
                   "rationale before its answer line (default %(default)s; 0: all)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="student generation, evaluation "
                   "and IFD scoring (default %(default)s)")
    p.add_argument("--score-candidates", type=int, help="IFD-scored candidates per head domain "
                   "(default 20; --quick: 10)")
    p.add_argument("--test-per-domain", type=int, help="evaluate at most N test documents per "
                   "topic (default: all 2,568; --quick: 10)")
    p.add_argument("--stage-eval-per-domain", type=int, default=5, help="test documents per topic "
                   "scored after each stage for the run's history (default %(default)s); the "
                   "table scores the last student on the whole test set")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the "
                   "macro-F1 intervals in each results.json (default %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one CPU thread each "
                   "(default %(default)s; 1: in this process)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-r52"), help="work folder "
                   "(default %(default)s); finished runs with the same config are reused")
    p.add_argument("--shared", default=str(SHARED), help="folder holding reuters-r52/ and "
                   "baldistill-teacher/ (default %(default)s)")
    args = p.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    args.seeds = args.seeds or preset["seeds"]
    args.per_class = args.per_class or preset["per_class"]
    args.epochs = args.epochs or preset["epochs"]
    args.score_candidates = args.score_candidates or preset["score_candidates"]
    if args.test_per_domain is None:
        args.test_per_domain = preset["test_per_domain"]
    if args.per_class <= 0 or any(k <= 0 for k in args.stages):
        p.error("--per-class and --stages must be positive")
    return args


def run_all(jobs: list[dict[str, Any]], workers: int):
    """Rows of finished jobs as they finish: in worker processes, or here when ``workers`` <= 1."""
    if workers <= 1:
        yield from map(run_job, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(run_job, job) for job in jobs]):
            yield fut.result()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    info = prepare_data(data_folder(args), Path(args.shared), args.doc_words, args.rationale_words)
    print(f"pool {info['pool']} of {info['train']} training documents have recorded rationales; "
          f"{info['synthetic']} recorded synthetic documents for {info['synthetic_domains']} tail "
          f"topics; test {info['test']} documents", flush=True)
    jobs = plan_jobs(args)
    rows: list[dict[str, Any]] = []
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for row in run_all(jobs, args.jobs):
        rows.append(row)
        print(f"[{(time.time() - start) / 60:5.1f} min] {row['key']} seed {row['seed']}: "
              f"macro-F1 {row['macro_f1']:.2f} micro-F1 {row['micro_f1']:.2f} on {row['test']} "
              f"test docs, calls {row['calls']} ({row['minutes']:.1f} min, "
              f"{row['cpu_minutes']:.1f} CPU min)", flush=True)
    order = {j["key"]: i for i, j in enumerate(sorted(jobs, key=lambda j: (
        METHODS.index(j["method"]), j["stages"])))}
    summary = summarize(sorted(rows, key=lambda r: (order[r["key"]], r["seed"])))
    print_table(summary, args)
    minutes = (time.time() - start) / 60
    cpu = sum(r["cpu_minutes"] for r in rows)
    print(f"total {minutes:.1f} min with {args.jobs} parallel runs; {cpu:.1f} CPU minutes in runs",
          flush=True)
    print("SUMMARY " + json.dumps({"methods": summary, "per_class": args.per_class,
                                   "stages": args.stages, "student": args.student,
                                   "seeds": args.seeds, "minutes": round(minutes, 2),
                                   "cpu_minutes": round(cpu, 2), "test": rows[0]["test"] if rows else 0,
                                   "data": {k: v for k, v in info.items() if k != "synthetic_by_domain"}}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
