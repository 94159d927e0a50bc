"""Offline teacher signal: top-k next-token log-probs per token, computed once and reused.

Layout of a cache folder::

    spec.json          what the cache holds: teacher id, tokenizer fingerprint, k, temperature,
                       shard size, number of sequences and a hash of all keys and token ids
    shard-00000.pt     ``shard_size`` sequences: keys, token-id hashes, top-k ids and log-probs
    ...
    manifest.json      written last: the shard files, once every shard is complete

Every file is written atomically (:mod:`domdistill.io`), so a killed build leaves only complete
shards; a rerun keeps the shards whose content matches and computes the others. Rows of a
sequence of n tokens: n - 1, row i holding the teacher's top-k for token i + 1 (aligned with the
shifted labels of :func:`domdistill.training.kd_trainer.kd_loss`). Log-probs are those of the
teacher's softmax at ``temperature`` over its full vocabulary.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from domdistill.errors import ConfigError
from domdistill.io import atomic_write_bytes, atomic_write_json

SPEC, MANIFEST = "spec.json", "manifest.json"
FORMAT = 1
_LOGPROB_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of how the tokenizer maps text to ids (fast tokenizers: the whole definition)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(
        sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _ids_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def _id_dtype(largest: int) -> torch.dtype:
    """The narrowest integer type for token ids up to ``largest`` (2 bytes below 65,536)."""
    return torch.int16 if largest < 2 ** 15 else torch.uint16 if largest < 2 ** 16 else torch.int32


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.pt"


@torch.no_grad()
def teacher_topk(teacher: Any, sequences: Sequence[Sequence[int]], k: int, temperature: float,
                 pad_id: int = 0, chunk_rows: int = 1024) -> list[tuple[Tensor, Tensor]]:
    """(top-k ids, top-k log-probs) of shape (n - 1, k) per sequence, on the CPU.

    The teacher's logits are formed ``chunk_rows`` rows at a time from its hidden states, so
    no (batch, length, vocab) tensor exists.
    """
    from domdistill.training.kd_trainer import hidden_and_head

    device = next(teacher.parameters()).device
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, s in enumerate(sequences):
        ids[r, :len(s)] = torch.tensor(list(s))
        mask[r, :len(s)] = 1
    h, w = hidden_and_head(teacher, ids.to(device), mask.to(device))
    out = []
    for r, s in enumerate(sequences):
        rows = h[r, :len(s) - 1]
        top_i, top_l = [], []
        for c in range(0, rows.shape[0], chunk_rows):
            logits = (rows[c:c + chunk_rows].float() @ w.float().t()) / temperature
            lp = torch.log_softmax(logits, dim=-1)
            vals, idx = lp.topk(min(k, lp.shape[-1]), dim=-1)
            top_i.append(idx.cpu())
            top_l.append(vals.cpu())
        kk = min(k, w.shape[0])
        out.append((torch.cat(top_i) if top_i else torch.zeros(0, kk, dtype=torch.long),
                    torch.cat(top_l) if top_l else torch.zeros(0, kk)))
    return out


class LogitCache:
    """Read side: ``get(key)`` -> (ids (n-1, k) long, logprobs (n-1, k) float32)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise ConfigError("no complete teacher-logit cache here (manifest.json missing); "
                              "build it first", path=self.root)
        self.spec = json.loads((self.root / SPEC).read_text(encoding="utf-8"))
        self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        self._rows: dict[str, tuple[Tensor, Tensor]] = {}
        self._hashes: dict[str, str] = {}
        for name in self.manifest["shards"]:
            shard = torch.load(self.root / name, weights_only=True)
            for key, h, i, lp in zip(shard["keys"], shard["hashes"], shard["ids"], shard["logprobs"]):
                self._rows[key] = (i, lp)
                self._hashes[key] = h

    @property
    def k(self) -> int:
        return int(self.spec["k"])

    @property
    def temperature(self) -> float:
        return float(self.spec["temperature"])

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> int:
        """Token positions held (n - 1 per sequence of n tokens)."""
        return sum(int(ids.shape[0]) for ids, _ in self._rows.values())

    @property
    def nbytes(self) -> int:
        """Size of the shard files on disk."""
        return sum((self.root / name).stat().st_size for name in self.manifest["shards"])

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def get(self, key: str, input_ids: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """Top-k rows of one sequence; ``input_ids`` (optional) must be the cached sequence."""
        if key not in self._rows:
            raise KeyError(f"sequence {key!r} is not in the teacher-logit cache {self.root}")
        if input_ids is not None and _ids_hash(input_ids) != self._hashes[key]:
            raise ConfigError(f"sequence {key!r} is tokenized differently from when the teacher "
                              "logits were cached (tokenizer or max_seq_len changed)",
                              path=self.root)
        ids, lp = self._rows[key]
        return ids.long(), lp.float()


def build_logit_cache(root: str | Path, teacher: Any, tokenizer: Any,
                      sequences: Iterable[tuple[str, Sequence[int]]], *, teacher_id: str,
                      k: int, temperature: float = 1.0, shard_size: int = 256,
                      batch_size: int = 16, logprob_dtype: str = "float16",
                      progress: bool = False, keyed: bool = False) -> LogitCache:
    """Compute (or finish computing) the cache for ``(key, token ids)`` pairs at ``root``.

    Shards already complete with the same keys and token ids are kept; the rest are computed.
    A folder holding a cache of different settings is an error (choose another folder).
    ``keyed``: ``root`` is a folder of caches shared by runs; this one is its subfolder named
    by a hash of the settings and content, so each data set, teacher and k has its own.
    """
    root = Path(root)
    items = list(sequences)
    if not items:
        raise ConfigError("no sequences to cache teacher logits for", path=root)
    if logprob_dtype not in _LOGPROB_DTYPES:
        raise ConfigError(f"logprob_dtype must be one of {sorted(_LOGPROB_DTYPES)}",
                          field="logprob_dtype")
    hashes = [_ids_hash(ids) for _, ids in items]
    content = hashlib.sha256("\n".join(f"{key}\t{h}" for (key, _), h in zip(items, hashes))
                             .encode("utf-8")).hexdigest()[:16]
    spec = {"format": FORMAT, "teacher": teacher_id, "tokenizer": tokenizer_fingerprint(tokenizer),
            "k": k, "temperature": temperature, "shard_size": shard_size, "n": len(items),
            "content": content, "logprob_dtype": logprob_dtype}
    if keyed:
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        root = root / f"logits-{digest}"
    if (root / SPEC).is_file():
        old = json.loads((root / SPEC).read_text(encoding="utf-8"))
        if old != spec:
            diff = sorted(key for key in spec if old.get(key) != spec[key])
            raise ConfigError(f"holds a teacher-logit cache with other settings ({', '.join(diff)}); "
                              "use another folder", path=root)
        if (root / MANIFEST).is_file():
            return LogitCache(root)
    else:
        atomic_write_json(root / SPEC, spec)
    from domdistill.training.data import pad_id

    pad = pad_id(tokenizer)
    dtype = _LOGPROB_DTYPES[logprob_dtype]
    names = []
    n_shards = (len(items) + shard_size - 1) // shard_size
    for s in range(n_shards):
        lo, hi = s * shard_size, min(len(items), (s + 1) * shard_size)
        name = _shard_name(s)
        names.append(name)
        if _shard_ok(root / name, [key for key, _ in items[lo:hi]], hashes[lo:hi]):
            continue
        ids_out, lp_out = [], []
        for b in range(lo, hi, batch_size):
            batch = [ids for _, ids in items[b:min(hi, b + batch_size)]]
            for i, lp in teacher_topk(teacher, batch, k, temperature, pad):
                ids_out.append(i.to(_id_dtype(int(i.max()) if i.numel() else 0)))
                lp_out.append(lp.to(dtype))
        buf = io.BytesIO()
        torch.save({"keys": [key for key, _ in items[lo:hi]], "hashes": hashes[lo:hi],
                    "ids": ids_out, "logprobs": lp_out}, buf)
        atomic_write_bytes(root / name, buf.getvalue())
        if progress:
            print(f"teacher logits: shard {s + 1}/{n_shards}", flush=True)
    atomic_write_json(root / MANIFEST, {"shards": names, "n": len(items)})
    return LogitCache(root)


def _shard_ok(path: Path, keys: list[str], hashes: list[str]) -> bool:
    """A shard file that loads and holds exactly these sequences."""
    if not path.is_file():
        return False
    try:
        shard = torch.load(path, weights_only=True)
    except Exception:  # a damaged file (e.g. copied in half) is recomputed
        return False
    return shard.get("keys") == keys and shard.get("hashes") == hashes
