"""Purity check: the guarantee ``purify`` gives, verified by looking at the graph.

The same contract AOTAutograd states as ``_is_functional_graph``: nothing writes memory except
a write-back into a graph input (``copy_`` into a placeholder or an owned
``get_attr`` buffer, and one ``as_strided_`` restoring an input's changed metadata). Hidden
writers (train-mode batch norm with running stats) count as writes. Subgraphs of higher-order
ops are checked too.
"""
from __future__ import annotations

import torch
import torch.fx
from torch._ops import OpOverload

from .errors import ImpureGraphError, describe
from .ops import HIDDEN_MUTATIONS, bind_args

aten = torch.ops.aten
_INPUT_WRITES = {aten.copy_.default, aten.as_strided_.default}


def _is_input(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op in ("placeholder", "get_attr")


def _writes(node: torch.fx.Node) -> bool:
    target = node.target
    if node.op == "call_method":
        return isinstance(target, str) and target.endswith("_") and not target.startswith("_")
    if node.op != "call_function":
        return False
    if isinstance(target, OpOverload):
        if target._schema.is_mutable:
            return True
        hidden = HIDDEN_MUTATIONS.get(target)
        if hidden is not None:
            bound = bind_args(target, node.args, node.kwargs)
            return bound.get(hidden.when) is True and all(bound.get(w) is not None for w in hidden.written)
    return False


def impure_nodes(gm: torch.fx.GraphModule, allow_input_writes: bool = True) -> list:
    """Every node of ``gm`` (and of its subgraphs) that writes memory, except allowed write-backs."""
    bad = []
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            sub = getattr(gm, node.target, None) if "." not in node.target else None
            if isinstance(sub, torch.fx.GraphModule):
                bad.extend(impure_nodes(sub, allow_input_writes=False))
            continue
        if not _writes(node):
            continue
        if allow_input_writes and node.target in _INPUT_WRITES and _is_input(node.args[0]):
            continue
        bad.append(node)
    return bad


def check_pure(gm: torch.fx.GraphModule) -> None:
    """Raise ``ImpureGraphError`` listing every node that still writes memory."""
    bad = impure_nodes(gm)
    if bad:
        lines = "\n".join(f"  - {describe(n)}" for n in bad)
        raise ImpureGraphError(
            f"{len(bad)} node(s) still mutate memory:\n{lines}",
            hint="run fxpurify.purify(gm) on this graph")
