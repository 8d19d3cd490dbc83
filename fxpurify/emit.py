"""Emit: finish the pure graph — write-backs, outputs, call-time guard.

Takes the ``Functionalizer`` after its walk and completes its graph:

1. every pending write is flushed; outputs that do not alias an input are read;
2. a value about to be written back that still *is* (a view of) an input being written back is
   cloned first, as is an output that the original returned in fresh memory but whose pure value
   ended up sharing an input's or another output's memory (``copy_`` forwarding can do that);
3. one ``aten.copy_`` write-back per mutated input, after everything else, with the bytes it
   copies in the report, between ``runtime.begin_write_back`` (grad mode for the writes, decided
   at run time; version counters of inputs only written by hidden writes) and
   ``runtime.end_write_back`` (restores both);
4. outputs that aliased an input are replayed from the input after its write-back, so the caller
   sees the same aliasing as before; then ``as_strided_`` restores an input's changed metadata;
5. a guard at the top refuses calls whose inputs share memory the trace assumed separate.
"""
from __future__ import annotations

import operator

import torch
import torch.fx

from . import runtime, views
from .functionalize import Functionalizer, Multi, Poisoned, Ref, _FreshList, _val
from .ops import op_info
from .errors import UnsupportedError

aten = torch.ops.aten


def _nbytes(val):
    numel = val.numel()
    return numel * val.element_size() if isinstance(numel, int) else None   # None: symbolic size


def finish(fz: Functionalizer) -> torch.fx.Graph:
    graph = fz.graph
    for root in fz.roots:
        fz.flush(root)
    written = [r for r in fz.roots if r.input_node is not None and r.mutated]
    written_inputs = {r.input_node for r in written}

    # (1, 2) outputs in fresh memory, read before any write-back.
    seen_storages: dict = {}

    def early(leaf):
        if not isinstance(leaf, torch.fx.Node):
            return leaf
        v = fz.env[leaf]
        if isinstance(v, Ref):
            if v.root.input_node is not None:
                return _Deferred(v)
            node = fz.read(v)
            if isinstance(_val(node), torch.Tensor):
                base = memory_of(node)
                owner = seen_storages.setdefault(base, v.root)
                if base.op in ("placeholder", "get_attr") or owner is not v.root:
                    node = fz.call(aten.clone.default, (node,), origin=leaf,
                                   note="clone: output must not share memory with an input")
                    fz.report.add("clone", leaf, "aten.clone", "pure value of a fresh output aliased an input")
            return node
        if isinstance(v, (Multi, _FreshList, Poisoned)):
            return fz._read_one(leaf)
        return v

    outputs = torch.fx.node.map_aggregate(fz.output_node.args[0], early)

    # (2, 3) write-backs
    finals = {}
    for root in written:
        if root.autograd_base is not None:   # last writes under no_grad: keep the history before
            fz._restore_history(root)
            root.write_modes.add(None)
        value = root.value
        if value is not root.input_node and memory_of(value) in written_inputs:
            value = fz.call(aten.clone.default, (value,), origin=root.orig,
                            note="clone: new value reads an input that is written back")
        finals[root] = value
    pending = [(root, value) for root, value in finals.items() if value is not root.input_node]
    # Inputs the graph wrote only under its own no_grad regions go last, under no_grad; for the
    # others the grad mode is decided at run time by begin_write_back.
    pending.sort(key=lambda item: item[0].write_modes == {False})
    placeholders = [root.input_node for root, _ in pending
                    if root.input_node.op == "placeholder" and root.write_modes != {False}]
    hidden = [root.input_node for root, _ in pending if not root.visible_write]
    token = fz.call(runtime.begin_write_back, (tuple(placeholders), tuple(hidden)), val=True) \
        if pending else None
    no_grad_started = False
    for root, value in pending:
        ph = root.input_node
        if root.write_modes == {False} and not no_grad_started:
            fz.call(torch._C._set_grad_enabled, (False,), val=True)
            no_grad_started = True
        writer = root.last_writer or root.orig
        fz.call(aten.copy_.default, (ph, value), origin=writer, val=_val(ph),
                note=f"write-back of mutated input {ph.name}")
        fz.report.add("write-back", writer, f"aten.copy_({ph.name}, ...)",
                      f"input {ph.name} was written: the caller sees its final contents", _nbytes(_val(ph)))
    if token is not None:
        fz.call(runtime.end_write_back, (token,), val=True)

    # (4) outputs aliasing inputs, then metadata epilogues
    def late(leaf):
        if isinstance(leaf, _Deferred):
            ref = leaf.ref
            if fz.input_refs.get(ref.root) is ref:
                return ref.root.input_node
            return fz.with_detached_history(ref, fz.replay(ref.root.input_node, ref.autograd_path()), as_view=True)
        return leaf

    outputs = torch.fx.node.map_aggregate(outputs, late)
    for root, ref in fz.input_refs.items():
        if not ref.path:
            continue
        if root.input_node.op != "placeholder":
            raise UnsupportedError("metadata mutation of a module buffer", ref.path[-1].source,
                                   pattern="metadata-mutation-buffer", hint="use an out-of-place view")
        shaped = fz.replay(root.input_node, ref.path)
        val = _val(shaped)
        if views.same_metadata(val, _val(root.input_node)):
            continue   # metadata changed and changed back: nothing for the caller to see
        # Symbolic sizes/strides come from graph nodes of the replayed view, never baked SymInts.
        size = views.sizes_of(fz, shaped)
        stride = [s if isinstance(s, int) else fz.call(aten.sym_stride.int, (shaped, d))
                  for d, s in enumerate(val.stride())]
        offset = val.storage_offset()
        if not isinstance(offset, int):
            offset = fz.call(aten.sym_storage_offset.default, (shaped,))
        # Data is unchanged, so the version counter is too: a bump would flag tensors autograd
        # holds from the input (outputs that are views of it) as modified. Nothing saved for
        # backward is the input itself: reads of a metadata-mutated input go through old_value.
        version = fz.call(runtime.version_of, (root.input_node,), val=0)
        fz.call(aten.as_strided_.default, (root.input_node, size, stride, offset), origin=ref.path[-1].source,
                val=val, note=f"metadata of input {root.input_node.name} changed by {ref.path[-1].source.target}")
        fz.call(runtime.restore_version, (root.input_node, version), val=True)
        fz.report.add("metadata-epilogue", ref.path[-1].source, "aten.as_strided_",
                      "the caller sees the input's new sizes/strides")
    graph.output(outputs)

    # (5) call-time guard
    tensor_inputs = [p for p in fz.placeholders if isinstance(_val(p), torch.Tensor)]
    mutated = tuple(i for i, p in enumerate(tensor_inputs)
                    if p in written_inputs or p in fz.written_early
                    or fz.input_refs.get(_root_of(fz, p)) is not None and fz.input_refs[_root_of(fz, p)].path)
    if mutated and len(tensor_inputs) > 1:
        with graph.inserting_after(fz.placeholders[-1]):
            guard = graph.call_function(runtime.check_inputs_not_aliased,
                                        (tuple(p.name for p in tensor_inputs), mutated, *tensor_inputs))
            guard.meta["fxpurify"] = "call-time guard: mutated inputs must not share memory"
    return graph


def memory_of(node: torch.fx.Node) -> torch.fx.Node:
    """The node whose memory ``node`` shares in the pure graph: follow views to their base.

    Decided structurally: in the pure graph only view ops (and ``getitem`` of a multi-output
    view) alias, so this is exact without consulting fake storages."""
    while node.op == "call_function":
        target = node.target
        if target is operator.getitem:
            parent = node.args[0]
            if isinstance(parent.target, torch._ops.OpOverload) and op_info(parent.target).is_multi_view:
                node = parent.args[0]
                continue
            return node
        if (isinstance(target, torch._ops.OpOverload) and op_info(target).is_view) or target in (runtime.old_value, runtime.keep_autograd_history):
            node = node.args[0]
            continue
        return node
    return node


def _root_of(fz, placeholder):
    for root in fz.input_refs:
        if root.input_node is placeholder:
            return root
    return None


class _Deferred:
    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref
