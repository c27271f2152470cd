"""A task's node groups (dstack 0.22): `groups`, or the one group `0` that `nodes`, `commands`, `ports` and
`resources` make; and `${{ groups[i].nodes[j].IP_ADDRESS }}` in their commands, the internal address of node j of
group i, checked at submit and filled in when the nodes' addresses are known.

Ranks run through the groups in order: group 0's nodes first (rank 0, the master, is `groups[0].nodes[0]`), then
group 1's, and so on, as dstack numbers its jobs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from configuration.errors import ConfigurationError

_INNER = r"groups\[(\d+)\]\.(\w+)\[(\d+)\]\.IP_ADDRESS"
_ANY_REF = re.compile(r"(?<!\$)\$\{\{\s*([^}]+?)\s*\}\}")
_IP_REF = re.compile(r"(?<!\$)\$\{\{\s*" + _INNER + r"\s*\}\}")
_ESCAPED = re.compile(r"\$(\$\{\{\s*groups\b)")
_NAMESPACE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class NodeGroupView:
    """One group as the run sees it: its name, node count, resources, commands and ports."""
    name: str
    nodes: int
    resources: object
    commands: Tuple[str, ...]
    ports: tuple


def node_groups(configuration) -> List[NodeGroupView]:
    """The task's groups in order; a task without `groups` is the one group `0` (its `nodes`, `commands`,
    `ports`, `resources`), as dstack sees it."""
    groups = getattr(configuration, "groups", None)
    if groups:
        return [NodeGroupView(g.name, g.nodes, g.resources, tuple(g.commands), tuple(g.ports)) for g in groups]
    return [NodeGroupView("0", getattr(configuration, "nodes", 1) or 1, configuration.resources,
                          tuple(getattr(configuration, "commands", ()) or ()), tuple(getattr(configuration, "ports", ())
                                                                                    or ()))]


def group_of_rank(groups: Sequence[NodeGroupView], rank: int) -> Tuple[int, int]:
    """(group index, index of the node within its group) of `rank`."""
    for index, group in enumerate(groups):
        if rank < group.nodes:
            return index, rank
        rank -= group.nodes
    raise ValueError("rank beyond the groups' nodes")


def _refs(text: str) -> List[Tuple[int, str, int]]:
    return [(int(m.group(1)), m.group(2), int(m.group(3))) for m in _IP_REF.finditer(text)]


def check_node_refs(configuration, source: str) -> None:
    """Every `${{ groups... }}` of a task names an existing node (`groups[i].nodes[j].IP_ADDRESS`) and is in
    commands only, as dstack checks them at submit."""
    for name, value in (getattr(configuration, "env", None) or {}).items():
        if isinstance(value, str) and any(_is_groups(m.group(1)) for m in _ANY_REF.finditer(value)):
            raise ConfigurationError(f"{source}: env.{name}: `${{{{ groups... }}}}` references are only supported "
                                     "in commands, not in `env`")
    groups = node_groups(configuration)
    for index, group in enumerate(groups):
        where = f"groups[{index}].commands" if getattr(configuration, "groups", None) else "commands"
        for i, command in enumerate(group.commands):
            for match in _ANY_REF.finditer(command):
                name = match.group(1).strip()
                if _is_groups(name) and not re.fullmatch(_INNER, name):
                    raise ConfigurationError(f"{source}: {where}[{i}]: illegal reference {name} (expected "
                                             "`groups[I].nodes[J].IP_ADDRESS`)")
            for group_index, member, node in _refs(command):
                ref = f"groups[{group_index}].{member}[{node}].IP_ADDRESS"
                if member != "nodes":
                    raise ConfigurationError(f"{source}: {where}[{i}]: illegal reference {ref} (a task's groups "
                                             "have `nodes`)")
                if group_index >= len(groups) or node >= groups[group_index].nodes:
                    raise ConfigurationError(f"{source}: {where}[{i}]: invalid reference {ref}: out of range (the "
                                             f"task has {_sizes(groups)})")


def _is_groups(name: str) -> bool:
    match = _NAMESPACE.match(name)
    return match is not None and match.group(1) == "groups"


def _sizes(groups: Sequence[NodeGroupView]) -> str:
    return ", ".join(f"group {i} ({g.name}) {g.nodes} node{'' if g.nodes == 1 else 's'}" for i, g in enumerate(groups))


def fill_node_refs(command: str, addresses: Sequence[Sequence[str]]) -> str:
    """`command` with each `${{ groups[i].nodes[j].IP_ADDRESS }}` replaced by `addresses[i][j]` (checked at submit
    by check_node_refs); an escaped `$${{ groups... }}` becomes the literal `${{ groups... }}`."""
    filled = _IP_REF.sub(lambda m: addresses[int(m.group(1))][int(m.group(3))], command)
    return _ESCAPED.sub(r"\1", filled)
