"""A YAML loader for prompt files that stops where a hostile file would stall or crash PyYAML's safe loader:
collections nested thousands deep (the composer recurses), aliases that expand into a billion values (a
"billion laughs"), aliases that hold themselves, and integers of thousands of digits. Anchors, aliases and merge
keys (`<<: *common`) of ordinary size work as in SafeLoader.
"""
from __future__ import annotations

import yaml

from .limits import MAX_DEPTH, MAX_INT_DIGITS, MAX_ITEM_VALUES, MAX_LINE_BYTES, LongNumber, bounded_int


class YAMLLimit(Exception):
    """A bound of limits.py was passed; `line` (1-based) is where."""

    def __init__(self, line: int | None, reason: str):
        self.line, self.reason = line, reason
        super().__init__(reason)


class BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        # The composer calls itself once per level: bound the levels before Python's recursion limit does.
        if self._depth >= MAX_DEPTH:
            raise YAMLLimit(self.peek_event().start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        if len(node.value) > 2 * MAX_INT_DIGITS:  # underscores and a sign may lengthen a short number a little
            return bounded_int(node.value)
        value = super().construct_yaml_int(node)
        # sexagesimal 1:2:3 and hex grow past their digits; no parameter takes an integer this long
        return LongNumber(node.value) if value.bit_length() > 100 else value

BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def check_node(node) -> None:
    """Raise YAMLLimit if `node` (one item, or `defaults:`) expands past MAX_ITEM_VALUES values or MAX_DEPTH
    levels through its aliases, holds itself, or holds a value longer than MAX_LINE_BYTES. Walks each distinct
    node once (aliases share nodes), without recursion, so the check costs what the file's text does."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values once expanded, levels)
    on_path: set[int] = set()
    stack = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if children_done:
            on_path.discard(key)
            children = _children(current)
            size = 1 + sum(measured[id(c)][0] for c in children)
            depth = 1 + max((measured[id(c)][1] for c in children), default=0)
            line = node.start_mark.line + 1  # the item's: a shared collection may lie anywhere in the file
            if size > MAX_ITEM_VALUES:
                raise YAMLLimit(line, f"more than {MAX_ITEM_VALUES:,} values once its aliases are expanded")
            if depth > MAX_DEPTH:
                raise YAMLLimit(line, f"nested more than {MAX_DEPTH} levels deep once its aliases are expanded")
            measured[key] = (size, depth)
            continue
        if key in measured:
            continue
        if key in on_path:
            raise YAMLLimit(current.start_mark.line + 1, "an alias refers to a collection that holds it")
        if isinstance(current, yaml.ScalarNode):
            if len(current.value) > MAX_LINE_BYTES:
                raise YAMLLimit(current.start_mark.line + 1, f"a value longer than {MAX_LINE_BYTES // 1024} KiB")
            measured[key] = (1, 1)
            continue
        on_path.add(key)
        stack.append((current, True))
        stack.extend((child, False) for child in _children(current) if id(child) not in measured)


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_document(path):
    """A file's one YAML document, under the same bounds: nesting as it is composed, then alias expansion and
    value length before anything is built. Raises YAMLLimit, or PyYAML's errors for text that is not YAML."""
    with open(path, encoding="utf-8-sig") as stream:
        loader = BoundedLoader(stream)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            check_node(node)  # before building it: aliases may make a small text a billion values
            return loader.construct_document(node)
        finally:
            loader.dispose()
