"""A YAML loader that refuses, before building any value, a document too large once its aliases
are expanded or nested too deep (orchestrator/limits.py). PyYAML composes a document into nodes,
where an alias is the anchored node itself (shared, not copied): the parsed input stays small,
but everything that walks the values afterwards (validation, error messages, dumps) walks the
expanded tree. So the tree's expanded size and depth are counted on the nodes, each shared node
once, and the composer's own recursion is cut at the same depth.
"""
from __future__ import annotations

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, SequenceNode

from orchestrator.limits import MAX_YAML_DEPTH, MAX_YAML_NODES


class BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, 1, set(), {})
        return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(node: Node, depth: int, path: set[int], sizes: dict[int, int]) -> int:
    """Nodes of the tree under `node` with every alias expanded (ComposerError past the bounds)."""
    if depth > MAX_YAML_DEPTH:
        raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels once its aliases are expanded",
                            node.start_mark)
    key = id(node)
    if key in path:
        raise ComposerError(None, None, "an alias refers to a node that contains it (an infinite value)", node.start_mark)
    if key not in sizes:
        path.add(key)
        total = 1
        for child in _children(node):
            total += _expanded_size(child, depth + 1, path, sizes)
            if total > MAX_YAML_NODES:
                raise ComposerError(
                    None, None, f"more than {MAX_YAML_NODES:,} values once its aliases are expanded (refused: a "
                    "config is a few hundred)", node.start_mark)
        path.discard(key)
        sizes[key] = total
    return sizes[key]
