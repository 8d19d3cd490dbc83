"""Analysis: make sure every node carries a fake value from ONE fake mode.

The alias analysis compares storages of ``node.meta["val"]``, so the values must come from a
single ``FakeTensorMode`` in which views share their base's storage. ``make_fx(...,
tracing_mode="fake"/"symbolic")``, AOT and export graphs satisfy that; ``make_fx`` in real mode
does not (each node gets a fake value of its own mode, so aliasing is invisible) and
``symbolic_trace`` graphs carry none. For those we re-run the graph on fake inputs, snapshotting
each node's value the way ``make_fx`` does (``detach()``: a new tensor object sharing storage),
so that a later metadata mutation (``t_``) does not rewrite the value recorded for an earlier
node. The given graph is never modified: the values go onto a copy.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from .errors import MissingMetadataError


def _fake_modes(gm) -> set:
    """Fake modes of the placeholders' and the first few ops' values: enough to tell a
    real-mode make_fx graph (every node its own mode) from a consistent one, in O(inputs)."""
    modes, ops_seen = set(), 0
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            if node.op != "call_function" or ops_seen >= 4:
                continue
            ops_seen += 1
        val = node.meta.get("val")
        for v in (val if isinstance(val, (tuple, list)) else (val,)):
            if isinstance(v, FakeTensor):
                modes.add(v.fake_mode)
    return modes


def _produces_value(node) -> bool:
    if node.op == "placeholder":
        return True
    target = node.target
    # Grad-mode switches, asserts, ops returning () carry no value: their missing "val" is fine.
    return node.op == "call_function" and isinstance(target, torch._ops.OpOverload) \
        and len(target._schema.returns) > 0


def needs_metadata(gm: torch.fx.GraphModule) -> bool:
    return any("val" not in n.meta for n in gm.graph.nodes if _produces_value(n)) or len(_fake_modes(gm)) > 1


class _SnapshotProp(torch.fx.Interpreter):
    """Runs the graph on fake tensors, recording a metadata snapshot of every value."""

    def __init__(self, gm, mode):
        super().__init__(gm)
        self.mode = mode
        self.constants: dict = {}

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
            # Real buffers and constants: one fake per tensor, so aliasing among them survives.
            if id(value) not in self.constants:
                self.constants[id(value)] = self.mode.from_tensor(value, static_shapes=True)
            value = self.constants[id(value)]
        return value

    def call_function(self, target, args, kwargs):
        if target is torch._C._set_grad_enabled:
            return None   # stay under no_grad: only metadata is computed here
        return super().call_function(target, args, kwargs)

    def run_node(self, n):
        result = super().run_node(n)
        if n.op != "output":
            n.meta["val"] = pytree.tree_map_only(torch.Tensor, torch.ops.aten.alias.default, result)
        return result


def propagate(gm: torch.fx.GraphModule, mode: FakeTensorMode, fake_inputs) -> None:
    """Record on ``gm``'s own nodes a snapshot of each value, running it on ``fake_inputs``
    (already in ``mode``). Under no_grad: only metadata is wanted, and autograd would reject
    in-place ops on fake leaves (an optimizer step's parameters) that eager ran under no_grad."""
    with mode, torch.no_grad():
        _SnapshotProp(gm, mode).run(*fake_inputs)


def with_fake_metadata(gm: torch.fx.GraphModule, example_inputs: Optional[Sequence] = None) -> torch.fx.GraphModule:
    """``gm`` itself when its metadata is usable, else a copy with fresh, consistent fake values."""
    if not needs_metadata(gm):
        return gm
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if example_inputs is None:
        vals = [p.meta.get("val") for p in placeholders]
        if any(v is None for v in vals):
            missing = next(p for p in placeholders if "val" not in p.meta)
            raise MissingMetadataError(
                "the graph has no fake-tensor metadata (node.meta['val']) and no example inputs were given",
                missing, hint="pass example_inputs to fxpurify.purify(gm, example_inputs), or capture the "
                              "graph with fxpurify.trace / make_fx(tracing_mode='fake'), which record it")
        example_inputs = vals
    mode = detect_fake_mode([x for x in example_inputs if isinstance(x, FakeTensor)]) \
        if len({x.fake_mode for x in example_inputs if isinstance(x, FakeTensor)}) == 1 else None
    mode = mode or FakeTensorMode(allow_non_fake_inputs=True)
    fake_inputs = [_to_mode(mode, x) for x in example_inputs]
    copy = torch.fx.GraphModule(gm, gm.graph.__deepcopy__())
    copy.meta.update(getattr(gm, "meta", {}))
    # no_grad: only metadata is wanted, and autograd would reject in-place ops on fake leaves
    # (an optimizer step's parameters) that eager ran under no_grad.
    prop = _SnapshotProp(copy, mode)
    try:
        with mode, torch.no_grad():
            prop.run(*fake_inputs)
    except Exception as e:  # a typed refusal, never a crash deep inside fake tensors
        from .errors import UnsupportedError
        node = next((n for n in copy.graph.nodes if n.op != "output" and "val" not in n.meta), None)
        raise UnsupportedError(
            f"could not compute fake-tensor metadata for this graph ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]})", node, pattern="metadata-propagation",
            hint="trace with tracing_mode='fake' or 'symbolic' (fxpurify.trace / make_fx), which "
                 "records metadata, instead of real mode") from e
    return copy


def _to_mode(mode: FakeTensorMode, x):
    if not isinstance(x, torch.Tensor):
        return x
    if isinstance(x, FakeTensor):
        # Always a new tensor: running the graph must not mutate the caller's fake values.
        # Same storage size and offset as x, so storage-relative views (as_strided) stay in bounds.
        numel = x.untyped_storage().nbytes() // x.element_size()
        with mode:
            storage = torch.empty(numel, dtype=x.dtype, device=x.device)
            out = storage.as_strided(x.shape, x.stride(), x.storage_offset())
        return out
    # Values carry no autograd state (like make_fx's): only metadata and aliasing matter here.
    return mode.from_tensor(x.detach())
