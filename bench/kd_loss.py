"""Chunked KD loss vs the full-logit way, forward + backward, float32 on CPU.

Run from the repository root: ``python bench/kd_loss.py`` (``--quick`` for small shapes). The
default shapes (vocabulary x hidden): 32,000 x 512 (Llama-2-like), 49,152 x 576 (SmolLM2-135M, the
reference model) and 151,936 x 512 (Qwen2.5's vocabulary). TRL's GKD loss runs in the same run as
the peer (``pip install -e '.[bench]'``, which ``make bench`` does); without it the bench stops
unless ``--no-trl`` is given.
Peak memory of each implementation is measured in its own subprocess (VmHWM from
/proc/self/status, reset through /proc/self/clear_refs after the inputs exist). Timings are
interleaved (naive, chunked, [trl,] naive, chunked, ...) and the median of per-pair ratios is
reported, because this machine's speed drifts between and within processes. The float32 matmul
rate is measured between pairs with a square matmul, and the chunked loss's achieved FLOP rate
counts its four lm_head matmuls (student and teacher forward, dh and dW). The last line is
``SUMMARY {json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from domdistill.training.kd_losses import auto_chunk_size, chunked_kd_loss  # noqa: E402

GAMMA, TEMP = 0.2, 1.0
SHAPES = [(32000, 512), (49152, 576), (151936, 512)]
QUICK_SHAPES = [(8000, 256), (32000, 256)]


def make_inputs(n: int, hidden: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.1] = -100
    return {
        "h": (torch.randn(n, hidden, generator=g) / hidden ** 0.5).requires_grad_(),
        "w": torch.randn(vocab, hidden, generator=g).requires_grad_(),
        "th": torch.randn(n, hidden, generator=g) / hidden ** 0.5,
        "tw": torch.randn(vocab, hidden, generator=g) * 1.5,
        "labels": labels,
    }


def naive_loss(x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Full logits, then CE + gamma * forward KL, as common KD trainers do it."""
    s = x["h"] @ x["w"].t()
    with torch.no_grad():
        t = x["th"] @ x["tw"].t()
    lq = F.log_softmax(s / TEMP, dim=-1)
    lp = F.log_softmax(t / TEMP, dim=-1)
    mask = x["labels"] != -100
    kd = F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    kd = (kd * mask).sum() / mask.sum() * TEMP ** 2
    return F.cross_entropy(s, x["labels"], ignore_index=-100) + GAMMA * kd


def chunked_loss(x: dict[str, torch.Tensor], chunk_size: int | None = None) -> torch.Tensor:
    return chunked_kd_loss(x["h"], x["w"], x["th"], x["tw"], x["labels"], divergence="fkl",
                           temperature=TEMP, gamma=GAMMA, chunk_size=chunk_size)


def trl_loss(x: dict[str, torch.Tensor]) -> torch.Tensor:
    """TRL GKD's generalized JSD at beta 0 (forward KL) on full logits, plus CE."""
    from trl.experimental.gkd import GKDTrainer
    s = x["h"] @ x["w"].t()
    with torch.no_grad():
        t = x["th"] @ x["tw"].t()
    kd = GKDTrainer.generalized_jsd_loss(s, t, labels=x["labels"], beta=0.0,
                                         temperature=TEMP)
    return F.cross_entropy(s, x["labels"], ignore_index=-100) + GAMMA * kd


def trl_available() -> bool:
    try:
        import os
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDTrainer  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False


LOSSES = {"naive": naive_loss, "chunked": chunked_loss, "trl": trl_loss}


def run_once(name: str, x: dict[str, torch.Tensor], chunk_size: int | None) -> float:
    for k in ("h", "w"):
        x[k].grad = None
    t0 = time.perf_counter()
    loss = chunked_loss(x, chunk_size) if name == "chunked" else LOSSES[name](x)
    loss.backward()
    return time.perf_counter() - t0


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def mem_worker(name: str, n: int, hidden: int, vocab: int, chunk_size: int | None) -> None:
    """Print the peak RSS growth (bytes) of one forward+backward of ``name``."""
    x = make_inputs(n, hidden, vocab)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    base = _status_kib("VmHWM")
    run_once(name, x, chunk_size)
    print(json.dumps({"peak_bytes": (_status_kib("VmHWM") - base) * 1024}))


def peak_memory(name: str, args: argparse.Namespace, vocab: int, hidden: int) -> int:
    cmd = [sys.executable, __file__, "--mem-worker", name, "--tokens", str(args.tokens),
           "--hidden", str(hidden), "--vocab", str(vocab)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def matmul_rate(size: int = 2048, reps: int = 3) -> float:
    """float32 FLOP/s of a square matmul on this machine, right now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b, out=out)
    return 2 * size ** 3 * reps / (time.perf_counter() - t0)


def max_rel_err(x: dict[str, torch.Tensor], chunk_size: int | None) -> float:
    """Largest relative difference of loss, dh and dW between chunked and naive (float32)."""
    res = []
    for name in ("naive", "chunked"):
        for k in ("h", "w"):
            x[k].grad = None
        loss = chunked_loss(x, chunk_size) if name == "chunked" else naive_loss(x)
        loss.backward()
        res.append((loss.detach(), x["h"].grad.clone(), x["w"].grad.clone()))
    return max(float((a - b).norm() / b.norm()) for a, b in zip(res[1], res[0]))


def bench_shape(args: argparse.Namespace, vocab: int, hidden: int, use_trl: bool) -> dict:
    names = ["naive", "chunked"] + (["trl"] if use_trl else [])
    mem = {name: peak_memory(name, args, vocab, hidden) for name in names}
    x = make_inputs(args.tokens, hidden, vocab)
    err = max_rel_err(x, args.chunk_size)
    times: dict[str, list[float]] = {name: [] for name in names}
    rates = []
    for _ in range(args.repeats):
        rates.append(matmul_rate())
        for name in names:
            times[name].append(run_once(name, x, args.chunk_size))
    ratios = [c / n for c, n in zip(times["chunked"], times["naive"])]
    n_kept = int((x["labels"] != -100).sum())
    flops = 4 * 2 * n_kept * hidden * vocab
    eff = [flops / t / r for t, r in zip(times["chunked"], rates)]
    row = {
        "vocab": vocab, "hidden": hidden, "chunk_size": args.chunk_size or auto_chunk_size(vocab),
        "target_tokens": n_kept,
        "peak_gib": {k: round(v / 2 ** 30, 3) for k, v in mem.items()},
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "time_ratio": round(statistics.median(ratios), 3),
        "mem_ratio": round(mem["chunked"] / mem["naive"], 4),
        "matmul_gflops": round(statistics.median(rates) / 1e9, 1),
        "chunked_gflops": round(statistics.median(flops / t for t in times["chunked"]) / 1e9, 1),
        "flop_efficiency": round(statistics.median(eff), 3),
        "max_rel_err": err,
    }
    if use_trl:  # the peer, measured in the same run on the same inputs
        row["time_ratio_vs_trl"] = round(statistics.median(
            c / t for c, t in zip(times["chunked"], times["trl"])), 3)
        row["mem_ratio_vs_trl"] = round(mem["chunked"] / mem["trl"], 4)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (about a minute)")
    ap.add_argument("--tokens", type=int, default=None, help="batch*seq rows (default 2048)")
    ap.add_argument("--hidden", type=int, default=None,
                    help="one hidden size for every --vocab (default: the shapes above)")
    ap.add_argument("--vocab", type=int, nargs="+", default=None,
                    help="vocabulary sizes (default 32000 49152 151936, hidden 512 576 512)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds")
    ap.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default auto)")
    ap.add_argument("--no-trl", action="store_true", help="skip TRL even if importable")
    ap.add_argument("--mem-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    quick = args.quick
    args.tokens = args.tokens or (512 if quick else 2048)
    args.repeats = args.repeats or 3
    shapes = QUICK_SHAPES if quick else SHAPES
    if args.vocab:
        hidden = {v: h for v, h in shapes}
        shapes = [(v, args.hidden or hidden.get(v, 512)) for v in args.vocab]
    elif args.hidden:
        shapes = [(v, args.hidden) for v, _ in shapes]
    torch.manual_seed(0)
    if args.mem_worker:
        mem_worker(args.mem_worker, args.tokens, shapes[0][1], shapes[0][0], args.chunk_size)
        return
    if not args.no_trl and not trl_available():
        sys.exit("bench/kd_loss.py compares with TRL's GKD loss, which is not installed here: "
                 "pip install -e '.[bench]' (make bench does), or pass --no-trl to skip it")
    use_trl = not args.no_trl
    print(f"tokens={args.tokens} shapes(vocab x hidden)={shapes} "
          f"threads={torch.get_num_threads()} trl={use_trl}", flush=True)
    rows = [bench_shape(args, v, h, use_trl) for v, h in shapes]
    summary = {
        "mem_ratio": max(r["mem_ratio"] for r in rows),
        "time_ratio": max(r["time_ratio"] for r in rows),
        "flop_efficiency": min(r["flop_efficiency"] for r in rows),
        "max_rel_err": max(r["max_rel_err"] for r in rows),
        "per_vocab": rows,
    }
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
