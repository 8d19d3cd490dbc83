"""Clean up: remove dead nodes from the *pure* graph.

Only safe after purification (pytorch/pytorch#104463: on a mutating graph an unused in-place
result still has an effect). Random ops, grad-mode switches, write-backs and guards are kept
even when nothing reads them (``ops.has_side_effect``)."""
from __future__ import annotations

import torch.fx

from .ops import has_side_effect


def eliminate_dead_code(graph: torch.fx.Graph) -> int:
    before = len(graph.nodes)
    graph.eliminate_dead_code(is_impure_node=has_side_effect)
    return before - len(graph.nodes)
