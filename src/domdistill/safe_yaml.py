"""YAML that a hostile file cannot turn into a hang: aliases, nesting and duplicate keys checked.

PyYAML shares the object behind an alias, so a "billion laughs" file loads fast but explodes in
every walk over it (validation, environment expansion, an error message). :func:`load_yaml`
measures the document as if every alias were written out and refuses it above
``MAX_NODES``; it also refuses nesting deeper than ``MAX_DEPTH`` and a key written twice in one
mapping (PyYAML keeps the last one in silence).
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_NODES = 100_000
MAX_DEPTH = 64


class YamlLimitError(ValueError):
    """A YAML document over the limits; ``line`` is 1-based where known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def _line(node: yaml.Node) -> int | None:
    return node.start_mark.line + 1 if node.start_mark is not None else None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_keys(node: yaml.MappingNode) -> None:
    seen: dict[str, int | None] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
            continue
        if key.value in seen:
            raise YamlLimitError(f"key {key.value[:60]!r} appears twice in one mapping (first at "
                                 f"line {seen[key.value]}); keep one", line=_line(key))
        seen[key.value] = _line(key)


def check_node(root: yaml.Node) -> None:
    """Raise :class:`YamlLimitError` if ``root`` is too big once aliases are expanded, too deep,
    or has a duplicate key. Linear in the number of distinct nodes."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise YamlLimitError(f"the document expands to more than {MAX_NODES:,} values "
                                     "(aliases written out); refusing it", line=_line(node))
            if depth[key] > MAX_DEPTH:
                raise YamlLimitError(f"nested more than {MAX_DEPTH} levels deep", line=_line(node))
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlLimitError("an alias refers to a node that contains it", line=_line(node))
        if isinstance(node, yaml.MappingNode):
            _check_keys(node)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the limits above. Raises ``yaml.YAMLError`` for bad syntax and
    :class:`YamlLimitError` for a document over the limits."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlLimitError(f"nested more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None
        check_node(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
