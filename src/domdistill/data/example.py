"""The one example type every part of domdistill passes around, and a dataset grouped by domain."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DomainExample:
    """One labelled input from one domain.

    ``answer`` is the gold answer or label; ``rationale`` an optional reference solution or
    chain of thought; ``metadata`` anything else the source carried (level, split, origin).
    """

    id: str
    domain: str
    input: str
    answer: str
    rationale: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DomainExample":
        return cls(id=str(d["id"]), domain=str(d["domain"]), input=str(d["input"]),
                   answer=str(d["answer"]), rationale=d.get("rationale"),
                   metadata=dict(d.get("metadata") or {}))


class DomainDataset:
    """An ordered collection of examples with per-domain access. Order is kept as loaded."""

    def __init__(self, examples: Iterable[DomainExample], name: str = "dataset"):
        self.name = name
        self.examples: list[DomainExample] = list(examples)
        self._by_domain: dict[str, list[DomainExample]] | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[DomainExample]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> DomainExample:
        return self.examples[i]

    @property
    def by_domain(self) -> dict[str, list[DomainExample]]:
        """Examples per domain, domains ordered by descending count then name."""
        if self._by_domain is None:
            groups: dict[str, list[DomainExample]] = {}
            for ex in self.examples:
                groups.setdefault(ex.domain, []).append(ex)
            order = sorted(groups, key=lambda d: (-len(groups[d]), d))
            self._by_domain = {d: groups[d] for d in order}
        return self._by_domain

    @property
    def domains(self) -> list[str]:
        return list(self.by_domain)

    def counts(self) -> dict[str, int]:
        """Number of examples per domain, largest first."""
        c = Counter(ex.domain for ex in self.examples)
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    def subset(self, examples: Iterable[DomainExample], name: str | None = None) -> "DomainDataset":
        return DomainDataset(examples, name or self.name)

    def __repr__(self) -> str:
        return f"DomainDataset({self.name!r}, {len(self)} examples, {len(self.by_domain)} domains)"
