"""Domain-level views of a dataset: counts and imbalance, head/tail split, long-tailed
(Zipf) resampling and per-domain stratified splits. Everything random is seeded.

Domains are always ranked by descending count, ties broken by name.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from domdistill.data.example import DomainDataset, DomainExample
from domdistill.errors import InputError


def _ranked(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True)
class DomainStats:
    """Per-domain counts of a dataset (largest first) with imbalance and a head/tail split."""

    counts: dict[str, int]
    head: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def max(self) -> int:
        return max(self.counts.values(), default=0)

    @property
    def min(self) -> int:
        return min(self.counts.values(), default=0)

    @property
    def imbalance_ratio(self) -> float:
        """Largest over smallest domain count (inf when a domain is empty)."""
        return self.max / self.min if self.min else float("inf")

    def shares(self) -> dict[str, float]:
        total = self.total or 1
        return {d: n / total for d, n in self.counts.items()}

    def to_dict(self) -> dict[str, object]:
        return {"domains": dict(self.counts), "num_domains": len(self.counts),
                "total": self.total, "max": self.max, "min": self.min,
                "imbalance_ratio": self.imbalance_ratio, "head": list(self.head),
                "tail": list(self.tail)}


HEAD_TAIL_RULE = "tail: domains smaller than the mean domain"


def report_head_tail(counts: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """The head/tail that ``data stats``, runs, ``eval`` and reports share (``HEAD_TAIL_RULE``):
    a domain is tail when it is smaller than the mean domain (random sampling gives it less
    than a balanced share). Each list keeps the order of ``counts``."""
    mean = sum(counts.values()) / max(len(counts), 1)
    head = [d for d, n in counts.items() if n >= mean]
    return head, [d for d in counts if d not in head]


def split_head_tail(counts: Mapping[str, int], quota: int | None = None,
                    share: float | None = None) -> tuple[list[str], list[str]]:
    """Split domains into head and tail, each list largest first.

    - ``quota`` (a per-domain number of examples, e.g. a per-domain teacher budget): a domain
      is head when it holds **at least** ``quota`` examples, i.e. it can fill its quota with
      real data; tail domains hold fewer and need duplication or synthesis.
    - ``share`` (0 < share <= 1): head is the smallest set of largest domains whose examples
      together make up at least ``share`` of all examples; the rest is tail.

    Give exactly one of the two.
    """
    if (quota is None) == (share is None):
        raise InputError("give exactly one of quota or share", field="quota/share")
    ranked = _ranked(counts)
    if quota is not None:
        if quota < 1:
            raise InputError(f"quota must be a positive count, got {quota}", field="quota")
        head = [d for d, n in ranked.items() if n >= quota]
    else:
        assert share is not None
        if not 0 < share <= 1:
            raise InputError(f"share must be in (0, 1], got {share}", field="share")
        total, covered, head = sum(ranked.values()), 0, []
        for d, n in ranked.items():
            if covered >= share * total:
                break
            head.append(d)
            covered += n
    return head, [d for d in ranked if d not in set(head)]


def domain_stats(data: DomainDataset | Mapping[str, int], head_share: float | None = None,
                 head_quota: int | None = None, mean_rule: bool = False) -> DomainStats:
    """Counts, imbalance and head/tail: by ``head_share`` or ``head_quota`` when given, else by
    the shared rule (:func:`report_head_tail`) when ``mean_rule``, else none."""
    counts = _ranked(data.counts() if isinstance(data, DomainDataset) else dict(data))
    if not counts:
        raise InputError("no domains: the dataset is empty")
    head: list[str] = []
    tail: list[str] = []
    if head_share is not None or head_quota is not None:
        head, tail = split_head_tail(counts, quota=head_quota, share=head_share)
    elif mean_rule:
        head, tail = report_head_tail(counts)
    return DomainStats(counts, head, tail)


def zipf_sizes(counts: Mapping[str, int], alpha: float, largest: int | None = None) -> dict[str, int]:
    """Target size per domain for a Zipf(``alpha``) long tail.

    The domain of rank r (by source size, 1 = largest) gets ``round(n_1 / r**alpha)``
    examples, at least 1 and at most what it has; ``n_1`` is ``largest`` (capped at the
    largest domain's size) or, by default, the largest domain's full size.
    """
    if alpha <= 0:
        raise InputError(f"alpha must be positive, got {alpha}", field="zipf_alpha")
    ranked = _ranked(counts)
    if not ranked:
        raise InputError("no domains to resample: the dataset is empty")
    top = next(iter(ranked.values()))
    n1 = top if largest is None else min(largest, top)
    if n1 < 1:
        raise InputError(f"largest must be a positive count, got {largest}", field="largest")
    return {d: min(n, max(1, round(n1 / r ** alpha)))
            for r, (d, n) in enumerate(ranked.items(), start=1)}


def _indices_by_domain(dataset: DomainDataset) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(dataset):
        groups.setdefault(ex.domain, []).append(i)
    return groups


def _rng(seed: int, domain: str) -> random.Random:
    return random.Random(f"{seed}:{domain}")  # str seeds are hashed stably (sha512)


def zipf_resample(dataset: DomainDataset, alpha: float, seed: int = 0,
                  largest: int | None = None) -> DomainDataset:
    """A long-tailed pool drawn from ``dataset``, the way the BalDistill authors built their
    MATH pool: domain sizes follow :func:`zipf_sizes`, examples are drawn without
    replacement within each domain (seeded per domain), and kept in their original order.

    On MATH train with alpha 1.1 this gives algebra 1744, intermediate_algebra 814,
    prealgebra 521, geometry 380, number_theory 297, counting_and_probability 243,
    precalculus 205 (4,204 in all). The authors' pool (``corpus.jsonl``) has 1744, 763, 561,
    349, 290, 231, 187 (4,125): the same ranking and ratio largest/smallest 9.3 vs our 8.5
    (= 7**1.1); single domains differ by up to about 10%, which suggests the authors drew the
    sizes at random rather than rounding the expected ones.
    """
    sizes = zipf_sizes(dataset.counts(), alpha, largest)
    keep: list[int] = []
    for domain, indices in _indices_by_domain(dataset).items():
        keep.extend(_rng(seed, domain).sample(indices, sizes[domain]))
    return dataset.subset([dataset[i] for i in sorted(keep)],
                          name=f"{dataset.name}-zipf{alpha:g}")


def stratified_split(dataset: DomainDataset, test_fraction: float, val_fraction: float = 0.0,
                     seed: int = 0, min_train: int = 1
                     ) -> tuple[DomainDataset, DomainDataset, DomainDataset]:
    """Split every domain into train / validation / test, returning ``(train, val, test)``.

    Per domain of n examples (shuffled with a per-domain seed): test gets
    ``round(n * test_fraction)`` but at least 1 when the fraction is positive, validation
    likewise, and then both shrink (validation first) until train keeps ``min_train``
    examples. So a domain with ``min_train`` examples or fewer stays entirely in train (a
    domain with 1 example is never tested), and a domain with ``min_train + 1`` examples
    gives its last one to test. Original order is kept inside each part.
    """
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 \
            or test_fraction + val_fraction >= 1:
        raise InputError(f"need 0 <= test_fraction, val_fraction and their sum < 1, got "
                         f"{test_fraction} and {val_fraction}", field="test_fraction")
    if min_train < 0:
        raise InputError(f"min_train must be >= 0, got {min_train}", field="min_train")
    part = [0] * len(dataset)  # per example: 0 train, 1 val, 2 test
    for domain, indices in _indices_by_domain(dataset).items():
        n = len(indices)
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        spare = max(0, n - min_train)
        n_val = min(n_val, max(0, spare - n_test))
        n_test = min(n_test, spare)
        for rank, i in enumerate(_rng(seed, domain).sample(indices, n)):
            part[i] = 2 if rank < n_test else 1 if rank < n_test + n_val else 0
    parts: list[list[DomainExample]] = [[], [], []]
    for i, ex in enumerate(dataset):
        parts[part[i]].append(ex)
    return tuple(dataset.subset(p, name=f"{dataset.name}-{s}")  # type: ignore[return-value]
                 for p, s in zip(parts, ("train", "val", "test")))
