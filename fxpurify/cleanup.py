"""Clean up: remove dead nodes from the *pure* graph.

Only safe after purification (pytorch/pytorch#104463: on a mutating graph an unused in-place
result still has an effect). Random ops, grad-mode switches, write-backs and guards are kept
even when nothing reads them (``ops.has_side_effect``)."""
from __future__ import annotations

import operator

import torch
import torch.fx

from . import runtime
from .ops import has_side_effect, op_info

aten = torch.ops.aten

# Ops whose backward never reads the value of their tensor inputs (only shapes, indices, masks):
# an input's old value read only through them needs no protective clone.
_VALUE_FREE_BACKWARD = {
    aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.neg.default,
    aten.index_copy.default, aten.index_put.default, aten.index_fill.int_Scalar, aten.index_fill.int_Tensor,
    aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.fill.Scalar, aten.fill.Tensor, aten.zero.default,
    aten.slice_scatter.default, aten.select_scatter.default, aten.diagonal_scatter.default,
    aten.as_strided_scatter.default, aten.scatter.src, aten.scatter.value, aten.where.self,
    aten.clone.default, aten._to_copy.default, aten.sum.default, aten.sum.dim_IntList, aten.copy_.default,
}


def eliminate_dead_code(graph: torch.fx.Graph) -> int:
    before = len(graph.nodes)
    graph.eliminate_dead_code(is_impure_node=has_side_effect)
    return before - len(graph.nodes)


def drop_needless_snapshots(graph: torch.fx.Graph) -> int:
    """Replace ``runtime.old_value(x, ...)`` by ``x`` where no reader can save the old value for
    backward: every use (through views) is an op whose backward reads no input values (adding
    to an input, scattering into it, writing a KV-cache slot). Fewer nodes, never a clone."""
    dropped = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is runtime.old_value and _value_free(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            dropped += 1
    return dropped


def _value_free(node: torch.fx.Node) -> bool:
    for user in node.users:
        target = user.target
        if target is operator.getitem or (isinstance(target, torch._ops.OpOverload) and op_info(target).is_view
                                          and user.args[0] is node) or target is runtime.keep_autograd_history:
            if not _value_free(user):
                return False
        elif target not in _VALUE_FREE_BACKWARD:
            return False
    return True
