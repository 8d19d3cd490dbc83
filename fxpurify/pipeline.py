"""The pipeline: capture → analyze → rewrite → clean up → emit → report, in one function.

Start reading here. ``purify`` never edits the graph it is given; it builds a new one.
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import torch
import torch.fx
from torch._guards import detect_fake_mode

from . import cleanup, emit
from .errors import InvalidGraphError
from .functionalize import Functionalizer
from .metadata import with_fake_metadata
from .report import REPORT_KEY, Report

log = logging.getLogger(__name__)


def purify(gm: torch.fx.GraphModule, example_inputs: Optional[Sequence] = None) -> torch.fx.GraphModule:
    """Return an equivalent ``GraphModule`` with no in-place ops (see ``docs/CONTRACT.md``).

    ``gm`` is an ATen-level graph (``make_fx``, ``fxpurify.trace``, AOT or export graphs) with
    ``node.meta["val"]`` fake tensors; without them, ``example_inputs`` are used to propagate
    them. The report of every rewrite is ``fxpurify.report_of(result)``."""
    start = time.perf_counter()
    _refuse_torch_level(gm)
    gm = with_fake_metadata(gm, example_inputs)            # analyze: one fake mode, aliasing visible
    report = Report(nodes_in=len(gm.graph.nodes))
    fake_mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"])
    walk = Functionalizer(gm, fake_mode, report).run()        # analyze + rewrite
    graph = emit.finish(walk)                                 # write-backs, outputs, guard
    cleanup.drop_needless_snapshots(graph)                    # clean up
    cleanup.eliminate_dead_code(graph)
    graph.lint()
    out = torch.fx.GraphModule(gm, graph, class_name=type(gm).__name__ if type(gm) is not torch.fx.GraphModule
                               else "PurifiedGraphModule")
    report.nodes_out = len(graph.nodes)
    report.seconds = time.perf_counter() - start
    out.meta[REPORT_KEY] = report
    log.debug("%s", report.summary())
    return out


def _refuse_torch_level(gm: torch.fx.GraphModule) -> None:
    from .capture import torch_level_nodes
    nodes = torch_level_nodes(gm)
    if nodes:
        node = nodes[0]
        names = ", ".join(n.name for n in nodes[:5]) + (", ..." if len(nodes) > 5 else "")
        raise InvalidGraphError(
            f"this is a torch-level graph ({node.op} '{getattr(node.target, '__name__', node.target)}'; "
            f"torch-level nodes: {names}), not an ATen graph", node,
            hint="capture it with fxpurify.trace(fn, *inputs) (or lower a Dynamo graph with "
                 "fxpurify.capture.lower_dynamo_graph) and purify that")
