"""The YAML reader of configs and reference files: bounded, 1e-4 read as a float, duplicate keys refused.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from orchestrator import limits as L
from orchestrator.bounded_yaml import BoundedLoader


class _Loader(BoundedLoader):
    """SafeLoader, bounded in size and depth (bounded_yaml.py), that also reads `1e-4` as a float
    (YAML 1.1 wants `1.0e-4`) and refuses a key given twice in one mapping (PyYAML keeps the last
    silently: a sweep run with the wrong value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding a merged key is how YAML anchors are used
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (list, dict)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {L.echo(key)} (first given on line {seen[key] + 1})", key_node.start_mark
                )
            if not isinstance(key, (list, dict)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)
