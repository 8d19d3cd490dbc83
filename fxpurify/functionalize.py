"""Rewrite: one forward walk that replaces every mutation by values.

This is the rewrite stage. It takes an ATen-level graph with fake-tensor metadata and builds a
*new* graph in which no op writes memory; the graph given is only read.

The model
---------
Every tensor of the original program is a ``Ref``: a storage ``Root`` plus a *path* of view
steps (``views.ViewStep``). A ``Root`` is what owns memory: a placeholder, a ``get_attr``
buffer, or the result of an op that allocates. For each root the walk keeps

* ``value`` — the node of the new graph holding the root's current contents;
* ``pending`` — at most one not-yet-applied write ``(path, value)`` to a view of the root.

Walking the original graph in program order:

1. A **view** op creates a new ``Ref`` (same root, path + step) and emits nothing. Views are
   emitted lazily when read, replayed from the root's current value and cached per
   ``(base node, step)``: no dead or duplicate views, and a view read after a write sees it.
2. An **in-place / out= / hidden** write ``op(x, ...)`` emits the pure variant
   ``v = op_functional(read(x), ...)`` (cast back to ``x``'s dtype where the pure op promotes)
   and records ``v`` as the new value of ``x``'s path. If the same view path already has a
   pending write, the new value simply replaces it; so several in-place ops on one view cost
   one scatter.
3. **Reading** a ``Ref`` whose root has a pending write to a *prefix* of its path replays the
   rest of the path from the pending value; any other read first *flushes* the pending write:
   the root's new value is computed by running the path backwards through the view inverses
   (``views.inverse``). Aliasing is thereby exact: every alias of a root reads the root's
   current value, so a write through one view is seen by the base and every other view.
4. ``copy_(dst, src)`` writes ``read(src)`` (converted to ``dst``'s dtype/shape with
   differentiable ops) and disappears entirely when ``src`` *is* ``dst`` (``y[i] += 1``).
5. **Metadata mutations** (``transpose_``, ``unsqueeze_``, ...) extend the tensor's path with
   the equivalent view step; tensors are tracked by identity, so every later use sees it.
6. At the end (``emit.py``) every mutated input root gets one write-back, outputs that
   aliased an input are replayed from the input after it, and dead nodes are removed.

Autograd is part of what must match, so the walk also mirrors eager's autograd bookkeeping:
pending writes are flushed before the grad mode changes (a scatter keeps the mode its write
had); each root counts eager's *version* so a view read after its memory was written uses
the storage-relative path eager's regenerated ``grad_fn`` uses (``Ref.autograd_path``); a
``detach()``ed alias written with grad on carries its own history (``Root.detached_history``);
and random draws get eager's memory layout, since values are drawn in memory order.

Why it is sound: by induction over the walk, after each original node ``read(r)`` evaluates to
exactly the contents the eager program's tensor ``r`` has at that point. Views preserve it
(replay on the current value); writes preserve it for every alias of the root because the
root's value is updated by exact inverses (see ``views.py``) and every read goes through the
root. Pure ops read only current values, so they compute what eager computed.
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.fx
from torch._ops import HigherOrderOperator, OpOverload
from torch.multiprocessing.reductions import StorageWeakRef

from . import views
from .errors import InvalidGraphError, UnsupportedError
from .ops import (HIDDEN_MUTATIONS, REFUSED, bind_args, call_args, functional_variant, op_info,
                  returns_list, view_variant)
from .report import Report

log = logging.getLogger(__name__)
aten = torch.ops.aten

# Ops that return ``self`` itself (not a new view) when they have nothing to do.
RETURN_SELF_WHEN_NOOP = {"aten::contiguous", "aten::flatten"}
# ... and these too, where the traced dtypes can be trusted: in a graph with autocast regions
# (Dynamo's, lowered) a value's traced dtype may not be its dtype at run time.
RETURN_SELF_WHEN_NOOP_UNLESS_AUTOCAST = {"aten::to", "aten::type_as"}
# In-place ops whose pure variant returns another dtype than ``self`` (its value must be cast back).
DTYPE_CHANGING = {"lt", "le", "gt", "ge", "eq", "ne", "logical_and", "logical_or", "logical_xor", "logical_not",
                  "__iand__", "__ior__", "__ixor__"}
# Pure random fills whose values, for a non-contiguous ``self``, come out in another order than
# their in-place forms' (measured on torch 2.13 CPU): bernoulli always; normal for gapped self.
DRAW_ORDER_SENSITIVE = {aten.bernoulli.p}
# Metadata queries that define a graph's size symbols.
ENTRY_METADATA_QUERIES = {aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default,
                          aten.sym_storage_offset.default}
# Views whose aliasing or elements depend on the base's strides.
LAYOUT_DEPENDENT_VIEWS = {"aten::reshape", "aten::reshape_as", "aten::flatten", "aten::contiguous",
                          "aten::_reshape_alias", "aten::as_strided"}
# In-place random fills whose result does not depend on self's values (only on its layout).
FILLS_IGNORING_SELF = {"aten::normal", "aten::uniform", "aten::bernoulli", "aten::random", "aten::exponential",
                       "aten::cauchy", "aten::log_normal", "aten::geometric"}
# Pure variants of random fills that have no autograd formula (eager's in-place op has one).
NO_DERIVATIVE_FILLS = {aten.normal_functional.default, aten.bernoulli.p}
# Ops whose results never require grad: in-place random fills on them need no gradient link.
FACTORIES = {"empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full",
             "full_like", "new_empty", "new_zeros", "new_ones", "new_full", "rand", "randn", "rand_like",
             "randn_like", "scalar_tensor", "arange", "empty_permuted", "new_empty_strided"}
# Higher-order ops that only switch a mode around their body: inlined.
INLINED_HOPS = ("wrap_with_set_grad_enabled",)
# Higher-order ops that are pure by construction.
PURE_HOPS = ("auto_functionalized", "auto_functionalized_v2", "with_effects")


class Root:
    """A piece of memory of the original program and its current contents in the new graph."""

    __slots__ = ("value", "pending_path", "pending_value", "input_node", "orig", "mutated", "aliased_inputs",
                 "visible_write", "no_grad_write", "needs_snapshot", "write_modes", "autograd_base",
                 "last_writer", "version", "detached_history", "layout_unknown", "initial")

    def __init__(self, value, orig, input_node=None):
        self.value = value
        self.initial = value   # the new graph's own copy of the allocating node (or the input)
        self.version = 0   # eager's version counter: bumped by every write and metadata mutation
        # A detach()ed alias written with grad on has an autograd history of its own (eager gives
        # it the write's grad_fn; the base's history is untouched): its path up to the detach
        # -> a value carrying that history.
        self.detached_history: Optional[dict] = None
        self.layout_unknown = False   # strides set by an out= resize the fake kernels do not model
        self.pending_path: Optional[tuple] = None
        self.pending_value = None
        self.input_node = input_node   # placeholder / get_attr of the new graph, when caller-visible
        self.orig = orig               # the original node that created the memory
        self.mutated = False
        self.visible_write = False     # written by an op autograd sees (not only hidden BN writes)
        self.no_grad_write = False     # written while the graph had grad mode off
        self.write_modes: set = set()  # grad modes (True/False/None = caller's) of its writes
        self.last_writer = None        # original node of the last write (for the report)
        self.autograd_base = None      # value whose autograd history a no_grad write keeps
        self.needs_snapshot = False    # an input the graph writes: reads of its old value go
                                       # through runtime.old_value (see Functionalizer.base_of)
        self.aliased_inputs: tuple = ()  # other inputs traced as sharing this storage


class Ref:
    """A tensor of the original program (identity: in-place ops return the same Ref)."""

    __slots__ = ("root", "path", "val", "version")

    def __init__(self, root: Root, path: tuple, val):
        self.root, self.path, self.val = root, path, val
        self.version = root.version   # the root's version when this tensor was made

    def autograd_path(self) -> tuple:
        """The view path autograd sees. A view whose memory was written after it was made gets,
        in eager, a regenerated ``grad_fn``: one ``as_strided`` of its base with its own sizes
        and strides. That differs from the chain only where an ``as_strided`` of a view reaches
        memory outside that view (the chain's gradient stops at the view's elements): there the
        path up to the last ``as_strided`` becomes that single storage-relative step."""
        return self.path if self.version == self.root.version else views.from_storage(self.path)


@dataclass
class Multi:
    """Result of an original node returning several values (tuple or list)."""

    items: list
    is_list: bool = False


@dataclass
class MultiView:
    """``split``/``unbind``/... of a Ref: ``getitem`` turns it into a Ref with one more step."""

    ref: Ref
    op: Any
    args: tuple
    kwargs: tuple
    node: torch.fx.Node
    base_val: Any = None


@dataclass
class Poisoned:
    """A result that must not be read (e.g. cudnn's reserve buffer after a rewrite)."""

    node: torch.fx.Node
    why: str


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _is_tensor(v) -> bool:
    return isinstance(v, torch.Tensor)


def _storage(t):
    return StorageWeakRef(t.untyped_storage())


class Functionalizer:
    """Walks ``gm`` once and builds the pure graph (see module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule, fake_mode, report: Report):
        self.gm = gm
        self.graph = torch.fx.Graph(owning_module=None, tracer_cls=gm.graph._tracer_cls)
        self.graph._codegen = gm.graph._codegen
        self.fake_mode = fake_mode
        self.report = report
        self.env: dict[torch.fx.Node, Any] = {}
        self.view_cache: dict = {}
        self.roots: list[Root] = []
        self.pending_roots: dict[Root, None] = {}   # roots with a pending write, in write order
        self.written_early: set = set()   # inputs written back before the end (see _early_write_back)
        self.storage_roots: dict = {}   # StorageWeakRef of an input's fake value -> Root
        self.placeholders: list[torch.fx.Node] = []
        self.input_refs: dict[Root, Ref] = {}
        self.grad_enabled: Optional[bool] = None   # as set by the graph's own grad-mode nodes
        self.true_node = None
        self.val_cache: dict = {}   # fake values by the metadata of their inputs (see _metadata_key)
        self.autograd_active = None
        self._has_autocast: Optional[bool] = None   # scanned on first need (see _traced_dtypes_trusted)
        self._top_graph = gm.graph   # self.gm is switched to a body while inlining a HOP

    # ------------------------------------------------------------------ emission
    def call(self, target, args, kwargs=None, origin: Optional[torch.fx.Node] = None, note: Optional[str] = None,
             val=None, fallback_val=None):
        node = self.graph.call_function(target, tuple(args), dict(kwargs or {}))
        if origin is not None:
            for key in ("stack_trace", "nn_module_stack", "source_fn_stack", "seq_nr", "original_aten"):
                if key in origin.meta:
                    node.meta[key] = origin.meta[key]
        if val is None and target in views.SCATTERS:
            val = views.scatter_value(args[0].meta["val"])
        if val is None:
            try:
                val = self._fake_run(node)
            except Exception:
                # Some meta kernels fail on symbolic inputs where the in-place op traced fine
                # (e.g. addcmul with a 0-dim operand): the in-place result describes it.
                if fallback_val is None:
                    raise
                val = fallback_val
        node.meta["val"] = val
        if note:
            node.meta["fxpurify"] = note
        return node

    def _fake_run(self, node):
        if node.target is operator.getitem:
            parent = _val(node.args[0])
            return parent[node.args[1]] if parent is not None else None
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), _val)
        if self.fake_mode is None:
            return None
        key = _metadata_key((node.target, args, tuple(sorted(kwargs.items()))))
        if key is not None:
            hit = self.val_cache.get(key)
            if hit is not None:
                return hit
        # Only metadata is wanted: no autograd (fake values are snapshots made under no_grad,
        # whose storages the propagation wrote; a view of one under grad mode would be refused).
        with self.fake_mode, torch.no_grad():
            val = node.target(*args, **kwargs)
        if key is not None and not node.target in NEVER_SHARE_VALUES:
            self.val_cache[key] = val
        return val

    def view_or_reshape(self, value, sizes, origin=None):
        """``view`` when the value's layout allows it, else ``reshape`` (same values; a pure
        value may be laid out differently from the tensor it replaces)."""
        try:
            return self.call(aten.view.default, (value, sizes), origin=origin)
        except Exception:
            self.graph.erase_node(next(reversed(self.graph.nodes)))
            return self.call(aten.reshape.default, (value, sizes), origin=origin)

    # ------------------------------------------------------------------ alias model
    def new_root(self, value_node, orig, input_node=None) -> Ref:
        root = Root(value_node, orig, input_node)
        self.roots.append(root)
        return Ref(root, (), _val(orig) if orig is not None else _val(value_node))

    def apply_step(self, base: torch.fx.Node, step: views.ViewStep) -> torch.fx.Node:
        key = (base, step, self.grad_enabled)   # a view made under no_grad differs for autograd
        hit = self.view_cache.get(key)
        if hit is not None:
            return hit
        if step.op is aten.as_strided.default:
            base = self._in_storage_layout(base, step)
        if step.op in (aten.as_strided.default,) and not views.layout_matches(base.meta["val"], step.base_val):
            raise UnsupportedError(
                "as_strided reads memory by storage coordinates, but after an earlier mutation its "
                "base no longer has the layout it was traced with (a stride-sensitive read after a "
                "mutation changed strides)", step.source, pattern="stride-sensitive-read",
                hint="use slicing/view ops instead of as_strided, or make the tensor contiguous first")
        unchanged = views.same_metadata(base.meta.get("val"), step.base_val)
        if step.index is None:
            if step.op is aten.view.default or step.op is aten._unsafe_view.default:
                node = self.view_or_reshape(base, list(step.args[0]), origin=step.source) if not unchanged else \
                    self.call(step.op, (base,) + step.args, dict(step.kwargs), origin=step.source,
                              val=step.val)
            else:
                node = self.call(step.op, (base,) + step.args, dict(step.kwargs), origin=step.source,
                                 val=step.val if unchanged else None)
        else:
            parent_key = (base, step.op, step.args, step.kwargs, self.grad_enabled)
            parent = self.view_cache.get(parent_key)
            if parent is None:
                parent = self.call(step.op, (base,) + step.args, dict(step.kwargs), origin=step.source)
                self.view_cache[parent_key] = parent
            node = self.call(operator.getitem, (parent, step.index), origin=step.source)
        self.view_cache[key] = node
        return node

    def replay(self, base, path) -> torch.fx.Node:
        for step in path:
            base = self.apply_step(base, step)
        return base

    def scatter(self, base, path, value) -> torch.fx.Node:
        if not path:
            return value
        if path[0].op is aten.as_strided.default:
            base = self._in_storage_layout(base, path[0])
        bases = [base]
        for step in path[:-1]:
            bases.append(self.apply_step(bases[-1], step))
        for step, b in zip(reversed(path), reversed(bases)):
            value = views.inverse(self, step, b, value)
            self.report.add("view-inverse", step.source, f"{value.target}", "write through a view reaches its base")
        return value

    def _in_storage_layout(self, base, step):
        """``as_strided`` addresses storage: if a write left ``base`` laid out otherwise than the
        tensor the view was taken from, and that tensor filled its storage densely (static
        sizes), a copy in that layout makes the storage coordinates right again."""
        want = step.base_val
        if views.layout_matches(base.meta["val"], want) or want is None or not views.is_static(want) \
                or not views.owns_storage_densely(want):
            return base
        key = ("storage-layout", base)
        if key not in self.view_cache:
            self.view_cache[key] = self._in_layout(base, want, step.source)
        return self.view_cache[key]

    def base_of(self, root: Root) -> torch.fx.Node:
        """The root's current value. For an input the graph will write back, its *old* value is
        read through ``runtime.old_value``, which clones it when autograd may save it for
        backward (grad mode on and some input requires grad): the write-back would otherwise
        change a saved tensor, and backward would fail the version check where eager (which
        saves ``original_self`` for in-place ops) succeeds."""
        if root.needs_snapshot and self.grad_enabled is not False:   # no autograd under no_grad
            from . import runtime
            root.needs_snapshot = False
            if self.autograd_active is None:
                tensors = [p for p in self.placeholders if _is_tensor(_val(p))]
                self.autograd_active = self.call(runtime.autograd_active, tuple(tensors), val=True)
            root.value = self.call(runtime.old_value, (root.value, self.autograd_active), origin=root.orig,
                                   val=_val(root.value),
                                   note=f"old value of {root.input_node.name} (cloned only if autograd is recording)")
        return root.value

    def flush(self, root: Root):
        if root.pending_path is not None:
            path, value = root.pending_path, root.pending_value
            root.pending_path = root.pending_value = None
            self.pending_roots.pop(root, None)
            root.value = self.scatter(self.base_of(root), path, value)

    def flush_pending(self):
        """Apply every pending write now. Called before the grad mode changes: a scatter emitted
        later would run under the other mode, and a write made with grad on would lose its
        autograd history (or one made under no_grad would gain one)."""
        for root in list(self.pending_roots):
            self.flush(root)

    def read(self, ref: Ref, written: bool = False) -> torch.fx.Node:
        """``ref``'s current value. ``written``: it is about to be written in place; eager's
        ``CopySlices`` then sends its gradient through the base, as storage-relative views do."""
        root = ref.root
        if self.grad_enabled is not False:
            if root.autograd_base is not None:
                self._restore_history(root)
            if root.no_grad_write:
                self._early_write_back(root)
        path = views.from_storage(ref.path) if written else ref.autograd_path()
        if root.pending_path is not None and path[:len(root.pending_path)] == root.pending_path:
            value = self.replay(root.pending_value, path[len(root.pending_path):])
        else:
            self.flush(root)
            value = self.replay(self.base_of(root), path)
        return self.with_detached_history(ref, value)

    def detached_history(self, ref: Ref):
        """The history-carrying value of ``ref`` if it is (a view of) a detach()ed alias that was
        written with grad on, else None."""
        if not ref.root.detached_history or self.grad_enabled is False:
            return None
        k = _last_detach(ref.path)
        hist = ref.root.detached_history.get(ref.path[:k + 1]) if k is not None else None
        return self.replay(hist, ref.path[k + 1:]) if hist is not None else None

    def with_detached_history(self, ref: Ref, value, as_view: bool = False):
        from . import runtime
        hist = self.detached_history(ref)
        if hist is None:
            return value
        return self.call(runtime.keep_autograd_history, (value, hist) + ((True,) if as_view else ()), val=_val(value),
                         note="a detach()ed alias written with grad on: its own autograd history")

    def _early_write_back(self, root: Root):
        """An input written under ``no_grad`` and then read with grad on: in eager the read sees
        the *input tensor itself* (a leaf parameter after ``with no_grad(): w.mul_(0.9)``), so
        gradients flow to it. A value computed under ``no_grad`` has no such link, so the new
        contents are written back now and later reads read the input."""
        from . import runtime
        self.flush(root)
        root.no_grad_write = False
        ph = root.input_node
        # Written only under no_grad: write back under no_grad, the input keeps its history.
        # Otherwise its value carries the history to rebase onto (see _restore_history).
        only_no_grad = root.write_modes == {False}
        token = self.call(runtime.begin_write_back, (() if only_no_grad else (ph,), ()), val=True)
        if only_no_grad:
            self.call(torch._C._set_grad_enabled, (False,), val=True)
        self.call(aten.copy_.default, (ph, root.value), origin=root.orig, val=_val(ph),
                  note=f"write-back of {ph.name}, written under no_grad and read after")
        self.call(runtime.end_write_back, (token,), val=True)
        self.written_early.add(ph)
        root.write_modes = set()
        self.report.add("write-back", root.orig, f"aten.copy_({ph.name}, ...)",
                        "written under no_grad, read with grad on: later reads read the input itself")
        root.value, root.mutated = ph, False
        # Later reads see the input itself; if it is written again, autograd must not have
        # saved it: read it through old_value again (dropped in clean-up where not needed).
        root.needs_snapshot = True

    def _restore_history(self, root: Root):
        """A tensor that requires grad, written under ``no_grad`` and read after with grad on:
        eager's in-place write left its autograd history untouched, so gradients of later uses
        flow to what it was before. The new value gets that history back
        (``runtime.keep_autograd_history``: new values, the old value's gradient path)."""
        from . import runtime
        self.flush(root)
        root.value = self.call(runtime.keep_autograd_history, (root.value, root.autograd_base), origin=root.orig,
                               val=_val(root.value), note="written under no_grad: keeps the old autograd history")
        root.autograd_base = None

    def write(self, ref: Ref, value: torch.fx.Node, origin: torch.fx.Node, hidden: bool = False):
        root = ref.root
        if root.aliased_inputs:
            raise UnsupportedError(
                f"this graph writes input '{root.input_node}', which was traced sharing memory with "
                f"input(s) {', '.join(str(n) for n in root.aliased_inputs)}", origin, pattern="aliased-inputs",
                hint="pass inputs that do not share storage (e.g. .clone() one of them), or retrace")
        self._refuse_overlapping_write(ref, origin)
        if root.input_node is not None and not root.mutated and _is_tensor(_val(root.input_node)) \
                and views.may_overlap(_val(root.input_node)):
            raise UnsupportedError(
                f"write into input '{root.input_node.name}', whose elements overlap in memory "
                "(e.g. an expanded tensor): its new value cannot be written back",
                origin, pattern="overlapping-write", hint="pass a contiguous input (e.g. .clone() it)")
        value = self._match_dtype(value, ref.val, origin)
        detach_at = _last_detach(ref.path)
        if detach_at is not None and self.grad_enabled is not False:
            # Eager: the detached alias gets this write's history; its base keeps its own.
            alias = ref.path[:detach_at + 1]
            current = self.read(Ref(root, alias, alias[-1].val))
            hist = self.scatter(current, ref.path[detach_at + 1:], value)
            root.detached_history = {**(root.detached_history or {}), alias: hist}
            value = self.call(aten.detach.default, (value,), origin=origin, val=_val(value))   # the base's data
        path = views.from_storage(ref.path)   # as_strided writes storage, whatever view it is of
        root.mutated = True
        root.version += 1
        root.last_writer = origin
        root.visible_write |= not hidden
        grad_mode = False if detach_at is not None else self.grad_enabled
        if grad_mode is False:
            is_input = root.input_node is not None
            root.no_grad_write = is_input and root.input_node.op == "placeholder"
            # The history to keep: an intermediate's own, or an input's after earlier writes
            # autograd saw (an input's history before any write is its own: nothing to keep).
            keeps = not is_input or any(m is not False for m in root.write_modes)
            if keeps and root.autograd_base is None and self._may_require_grad_root(root):
                self.flush(root)
                root.autograd_base = self.base_of(root)
        root.write_modes.add(grad_mode)
        if root.pending_path is not None:
            k = len(root.pending_path)
            if path[:k] == root.pending_path:
                root.pending_value = self.scatter(root.pending_value, path[k:], value)
                return
            self.flush(root)
        if path:
            root.pending_path, root.pending_value = path, value
            self.pending_roots[root] = None
        else:
            root.value = value

    def _refuse_overlapping_write(self, ref: Ref, origin):
        if any(step.val is not None and views.may_overlap(step.val) for step in ref.path):
            raise UnsupportedError(
                "write into a view whose elements overlap in memory (expand, overlapping "
                "unfold or as_strided): one element would receive several values",
                origin, pattern="overlapping-write",
                hint="clone the view before writing to it, or write into the base tensor")

    def _match_dtype(self, value, like, origin):
        have = _val(value)
        if like is not None and have is not None and _is_tensor(have) and have.dtype != like.dtype:
            return self.call(aten._to_copy.default, (value,), {"dtype": like.dtype}, origin=origin,
                             note=f"dtype of {origin.target}'s result cast back to {like.dtype}")
        return value

    # ------------------------------------------------------------------ arguments
    def read_arg(self, arg):
        return torch.fx.node.map_aggregate(arg, self._read_one)

    def _read_one(self, a):
        if not isinstance(a, torch.fx.Node):
            return a
        v = self.env[a]
        if isinstance(v, Ref):
            return self.read(v)
        if isinstance(v, Multi):
            return [self._read_value(i) for i in v.items] if v.is_list else tuple(self._read_value(i) for i in v.items)
        if isinstance(v, Poisoned):
            raise UnsupportedError(v.why, v.node, pattern="poisoned-result")
        if isinstance(v, MultiView):
            return self.call(v.op, (self.read(v.ref),) + v.args, dict(v.kwargs), origin=v.node)
        return v

    def _read_value(self, item):
        if isinstance(item, Ref):
            return self.read(item)
        if isinstance(item, Poisoned):
            raise UnsupportedError(item.why, item.node, pattern="poisoned-result")
        return item

    def ref_of(self, arg, node) -> Ref:
        v = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(v, Ref):
            raise UnsupportedError(f"expected a tensor argument, got {arg!r}", node, pattern="bad-argument")
        return v

    # ------------------------------------------------------------------ the walk
    def run(self):
        self.written_storages = _written_storages(self.gm)
        for node in self.gm.graph.nodes:
            handler = getattr(self, f"_on_{node.op}")
            handler(node)
        return self

    def _on_placeholder(self, node):
        new = self.graph.placeholder(node.target, type_expr=node.type)
        new.meta = dict(node.meta)
        if node.args:
            new.args = node.args
        self.placeholders.append(new)
        self._bind_input(node, new)

    def _on_get_attr(self, node):
        new = self.graph.get_attr(node.target, type_expr=node.type)
        new.meta = dict(node.meta)
        attr = _fetch_attr(self.gm, node.target)
        if isinstance(attr, torch.Tensor):
            if "val" not in new.meta and self.fake_mode is not None:
                new.meta["val"] = self.fake_mode.from_tensor(attr, static_shapes=True)
            self._bind_input(node, new)
        else:
            self.env[node] = new

    def _bind_input(self, node, new):
        val = _val(node)
        if not _is_tensor(val):
            self.env[node] = new
            return
        ref = self.new_root(new, node, input_node=new)
        key = _storage(val)
        ref.root.needs_snapshot = node.op == "placeholder" and key in self.written_storages
        other = self.storage_roots.get(key)
        if other is not None:
            ref.root.aliased_inputs = (other.input_node,)
            other.aliased_inputs = other.aliased_inputs + (new,)
        else:
            self.storage_roots[key] = ref.root
        self.input_refs[ref.root] = ref
        self.env[node] = ref

    def _on_output(self, node):
        self.output_node = node

    def _on_call_module(self, node):
        raise InvalidGraphError(
            "the graph calls a submodule (torch-level graph, e.g. from symbolic_trace or Dynamo)", node,
            hint="capture an ATen-level graph first: fxpurify.trace(fn, *inputs), or "
                 "fxpurify.capture.lower_dynamo_graph(gm, example_inputs)")

    def _on_call_method(self, node):
        raise InvalidGraphError(
            f"the graph calls the tensor method '{node.target}' (torch-level graph)", node,
            hint="capture an ATen-level graph first: fxpurify.trace(fn, *inputs), or "
                 "fxpurify.capture.lower_dynamo_graph(gm, example_inputs)")

    def _on_call_function(self, node):
        target = node.target
        if target is operator.getitem:
            return self._getitem(node)
        if isinstance(target, OpOverload):
            return self._op(node, target)
        if isinstance(target, HigherOrderOperator):
            return self._hop(node, target)
        if isinstance(target, torch._ops.OpOverloadPacket):
            raise InvalidGraphError(f"call to the op packet {target} without an overload", node,
                                    hint="capture with make_fx / fxpurify.trace, which records overloads")
        if target is torch._C._set_grad_enabled:
            self.flush_pending()
            self.grad_enabled = node.args[0] if isinstance(node.args[0], bool) else None
        if getattr(target, "__module__", "").startswith("torch") and target.__name__.endswith("_") \
                and not target.__name__.startswith("_"):
            raise InvalidGraphError(f"torch-level in-place call {target.__name__}", node,
                                    hint="capture an ATen-level graph first with fxpurify.trace")
        self._copy(node)

    def _copy(self, node, fresh=True):
        """Emit ``node`` unchanged except that its arguments read current values."""
        new = self.graph.node_copy(node, self._read_one)
        if isinstance(node.target, OpOverload) and returns_list(node.target):
            self.env[node] = _FreshList(new)
            return new
        val = _val(node)
        if _is_tensor(val) and fresh:
            self.env[node] = self.new_root(new, node)
        elif isinstance(val, (tuple, list)) and any(_is_tensor(v) for v in val):
            self.env[node] = _FreshList(new)
        else:
            self.env[node] = new
        return new

    def _getitem(self, node):
        base, index = node.args
        v = self.env[base]
        if isinstance(v, Multi):
            self.env[node] = v.items[index]
        elif isinstance(v, MultiView):
            step = self._single_output_step(v, index, node)
            self.env[node] = Ref(v.ref.root, v.ref.path + (step,), _val(node))
        elif isinstance(v, _FreshList):
            new = self.call(operator.getitem, (v.node, index), origin=node, val=_val(node))
            self.env[node] = self.new_root(new, node) if _is_tensor(_val(node)) else new
        else:
            self._copy(node, fresh=False)

    # ------------------------------------------------------------------ ATen ops
    def _op(self, node, op):
        name = op._schema.name.split("::")[-1]
        if name in REFUSED:
            raise UnsupportedError(f"{op} cannot be expressed without mutation: {REFUSED[name]}", node,
                                   pattern=name, hint=REFUSED[name])
        hidden = HIDDEN_MUTATIONS.get(op)
        if hidden is not None:
            bound = bind_args(op, node.args, node.kwargs)
            if bound.get(hidden.when) is True and all(bound.get(w) is not None for w in hidden.written):
                return self._hidden_write(node, op, hidden, bound)
        info = op_info(op)
        if op in ENTRY_METADATA_QUERIES and isinstance(node.args[0], torch.fx.Node) \
                and node.args[0].op == "placeholder":
            # A symbol's defining query (sym_size(x, 2)) reads the input as it entered, even
            # after a metadata mutation of it (squeeze_): the runtime input has exactly that.
            ref = self.env.get(node.args[0])
            if isinstance(ref, Ref) and ref.root.input_node is not None:
                self.env[node] = self.graph.node_copy(
                    node, lambda a: ref.root.input_node if a is node.args[0] else self._read_one(a))
                return
        if op is aten.copy_.default:
            return self._copy_(node)
        if op is aten.fill_diagonal_.default:
            return self._fill_diagonal_(node)
        if op is aten.resize_.default:
            return self._resize_(node)
        if info.metadata_only:
            return self._metadata_mutation(node, op)
        if info.mutates:
            return self._mutation(node, op, info)
        if info.is_view or info.is_multi_view:
            return self._view(node, op, info)
        if info.is_random and op._schema.name.endswith("_like") and self._draw_like_eager(node):
            return
        self._copy(node)

    def _view(self, node, op, info):
        base = node.args[0]
        ref = self.env.get(base)
        if not isinstance(ref, Ref):
            return self._copy(node)
        val = _val(node)
        if ref.root.layout_unknown and op._schema.name in LAYOUT_DEPENDENT_VIEWS:
            raise UnsupportedError(
                f"{op} of a tensor that an out= op resized to a layout fxpurify cannot see: whether it "
                "is a view or a copy depends on that layout", node, pattern="view-of-unknown-layout",
                hint="allocate the out= tensor with its final size, or use the functional op")
        if _is_tensor(val) and _is_tensor(ref.val) and _storage(val) != _storage(ref.val):
            # Some "views" alias only sometimes (reshape of a non-viewable tensor, `to` another
            # dtype, contiguous of a strided one): the fake values' storages decide.
            return self._copy(node)
        if (op._schema.name in RETURN_SELF_WHEN_NOOP or op._schema.name in RETURN_SELF_WHEN_NOOP_UNLESS_AUTOCAST
                and self._traced_dtypes_trusted()) and views.same_metadata(val, ref.val):
            # Eager returns the very same tensor object here (`x.float()` of a float x), so
            # later in-place and metadata mutations through the result are mutations of x.
            self.env[node] = ref
            return
        args = views.freeze(tuple(self.read_arg(a) for a in node.args[1:]))
        kwargs = tuple(sorted((k, views.freeze(self.read_arg(v))) for k, v in node.kwargs.items()))
        if info.is_multi_view:
            self.env[node] = MultiView(ref, op, args, kwargs, node, base_val=ref.val)
            return
        step = views.ViewStep(op, args, kwargs, None, source=node, base_val=ref.val)
        self.env[node] = Ref(ref.root, ref.path + (step,), val)

    def _traced_dtypes_trusted(self) -> bool:
        """False in a graph with autocast regions (Dynamo's, lowered): there a value's traced
        dtype may not be its dtype at run time."""
        if self._has_autocast is None:
            self._has_autocast = any("autocast" in str(n.target) for n in self._top_graph.nodes
                                     if n.op == "call_function")
        return not self._has_autocast

    def _mutation(self, node, op, info):
        if op._schema.name.startswith("aten::_foreach_") and info.written == ("self",) and not info.is_out:
            if self._foreach_per_element(node, op):
                return
        variant = functional_variant(op)
        if variant is None:
            raise UnsupportedError(
                f"{op} mutates {', '.join(info.written)} and has no functional variant fxpurify knows",
                node, pattern="unknown-mutable-op",
                hint="use the out-of-place op, or register a custom op with torch.library.custom_op "
                     "declaring mutates_args so it can be auto-functionalized")
        bound = bind_args(op, node.args, node.kwargs)
        written = [w for w in info.written if bound.get(w) is not None]
        self._refuse_aliased_written(op, bound, written, node)
        if info.is_out:
            out_vals = [_val(bound[w]) for w in written]
        fbound = {name: self.read(self.env[bound[src]], written=True)
                  if src in written and isinstance(self.env.get(bound[src]), Ref) else self.read_arg(bound[src])
                  for name, src in zip(variant.arg_names, variant.sources)}
        written_vals = [_val(bound[w]) for w in info.written if isinstance(bound.get(w), torch.fx.Node)]
        if written_vals and all(_is_tensor(v) and not (v.dtype.is_floating_point or v.dtype.is_complex)
                                for v in written_vals):
            # An integer result cannot require grad: its float operands' history is irrelevant
            # (eager writes the converted values), and autograd refuses integer outputs.
            fbound = {k: self.call(aten.detach.default, (v,), origin=node, val=_val(v))
                      if isinstance(v, torch.fx.Node) and _is_tensor(_val(v)) and _val(v).dtype.is_floating_point
                      else v for k, v in fbound.items()}
        self_name = variant.arg_names[0] if variant.arg_names else None
        fill = variant.target in NO_DERIVATIVE_FILLS or (info.written == ("self",)
                                                        and op._schema.name.rstrip("_") in FILLS_IGNORING_SELF)
        grad_link = fill and self._may_require_grad(bound["self"])
        if grad_link:   # the fill's values do not depend on self: give it a detached self
            old_self = fbound[self_name]
            fbound[self_name] = self.call(aten.detach.default, (old_self,), origin=node, val=_val(old_self))
        if variant.auto:
            # auto_functionalized hands the kernel clones that keep strides: a written argument
            # whose value is a broadcast (a copy_ of a smaller src) must be real memory first.
            fbound = {k: self.call(aten.clone.default, (v,), {"memory_format": torch.contiguous_format},
                                   origin=node)
                      if k in written and isinstance(v, torch.fx.Node) and _is_tensor(_val(v))
                      and views.may_overlap(_val(v)) else v for k, v in fbound.items()}
            args, kwargs = (op,), fbound
        else:
            args, kwargs = call_args(variant.target, fbound)
            if variant.extra_from_out and written:
                like = out_vals[0]
                for k in variant.extra_from_out:
                    if k in ("dtype", "device", "layout") and like is not None:
                        kwargs[k] = getattr(like, k)
        self_val = _val(args[0]) if args else None
        eager_val = self.env[bound["self"]].val if info.is_random and isinstance(self.env.get(bound.get("self")), Ref) \
            else None
        if _is_tensor(eager_val) and self.env[bound["self"]].root.layout_unknown:
            raise _random_of_unknown_layout(node)
        if variant.target is aten.normal_functional.default and _is_tensor(eager_val) \
                and not views.is_dense(eager_val):
            raise _normal_with_gaps(node)
        if _is_tensor(self_val) and _is_tensor(eager_val) and "self" in info.written \
                and not self._holds_eagers_layout(self.env[bound["self"]]):
            args = (self._in_eager_layout(op, args[0], eager_val, node),) + tuple(args[1:])
            self_val = _val(args[0])
        if _is_tensor(self_val) and not self_val.is_contiguous() and variant.target in DRAW_ORDER_SENSITIVE:
            new = self._random_in_memory_order(variant.target, args, kwargs, node)
        else:
            new = self.call(variant.target, args, kwargs, origin=node, note=f"was {op}",
                            val=self._same_as_self(node, op, info, bound),
                            fallback_val=_val(node) if info.written == ("self",) and not info.fresh_returns else None)
        if grad_link:
            new = self._keep_grad_link(new, old_self, node)
        elif info.written == ("self",) and op._schema.name.split("::")[-1].rstrip("_") in DTYPE_CHANGING \
                and _is_tensor(eager_self := _val(bound["self"])) and eager_self.dtype.is_floating_point \
                and self.grad_enabled is not False and self._may_require_grad(bound["self"]):
            # x.ge_(0) of an x that requires grad still requires grad (zero gradient); the pure
            # comparison returns bool, which cannot.
            new = self._keep_grad_link(self._match_dtype(new, eager_self, node), fbound[self_name], node)
        if info.written == ("self",) and not info.fresh_returns and not info.is_out and not variant.auto \
                and not info.is_random and torch.Tag.pointwise not in op.tags \
                and isinstance(self.env.get(bound["self"]), Ref):
            eager_self = self.env[bound["self"]].val
            if _is_tensor(eager_self) and views.is_dense(eager_self) and not eager_self.is_contiguous():
                # An in-place op keeps self's layout; its pure form (scatter_add, index_put, triu,
                # ...) returns a contiguous tensor. Later reductions would add in another order
                # and storage-relative views would select other elements: lay it out as eager's.
                new = self._dense_like(new, eager_self, node)
        nvals = info.fresh_returns + len(info.written)
        results = self._split_results(new, nvals, variant.auto, len(info.written))
        self.report.add("functionalized", node, str(variant.target) if not variant.auto else f"auto_functionalized({op})",
                        "in-place/out= op replaced by its pure variant")
        for i, name in enumerate(info.written):
            target = bound.get(name)
            if target is None:
                continue
            value = results[info.fresh_returns + i]
            if isinstance(target, (list, tuple)):
                self._refuse_aliased_list(target, node, op, sequential=False)
                for k, t in enumerate(target):
                    item = self.call(operator.getitem, (value, k), origin=node)
                    self.write(self.ref_of(t, node), item, node)
            else:
                self._write_result(self.ref_of(target, node), value, node, info.is_out)
        outs = []
        for j, alias in enumerate(info.aliased_returns):
            if alias is not None:
                t = bound[alias]
                outs.append(Multi([self.env[x] for x in t], is_list=True) if isinstance(t, (list, tuple)) else self.env[t])
            else:
                outs.append(self._fresh(results[j], node, j, len(info.aliased_returns)))
        self._bind_results(node, outs)

    def _same_as_self(self, node, op, info, bound):
        """The pure result's fake value without running the op, where it is certain: a plain
        pointwise in-place op (``foo_``) on a ``self`` that fills its storage densely, whose tensor
        arguments share ``self``'s dtype and layout (or are 0-dim), returns a tensor laid out
        exactly like ``self`` after the op, which is the node's recorded value. (Only its storage
        differs; the pass decides aliasing structurally, never from new nodes' storages.)
        ``None`` means "run the op on fake tensors" (comparisons return bool, promotion, out=)."""
        if info.is_out or info.fresh_returns or info.written != ("self",):
            return None
        if op._schema.name.split("::")[-1].rstrip("_") in DTYPE_CHANGING:
            return None
        if torch.Tag.pointwise not in op.tags and op._schema.name.rstrip("_") not in ("aten::fill", "aten::zero"):
            return None   # triu_, cumsum_, ...: their pure forms return contiguous results
        this = _val(node)
        if not _is_tensor(this) or not views.owns_storage_densely(this):
            return None
        for value in bound.values():
            if isinstance(value, torch.fx.Node):
                v = _val(value)
                if not _is_tensor(v) or v.dtype != this.dtype:
                    return None
                if v.dim() and not views.same_metadata(v, this, offset=False):
                    return None
            elif isinstance(value, (list, tuple)) and any(isinstance(x, torch.fx.Node) for x in value):
                return None
        return this

    def _refuse_aliased_written(self, op, bound, written, node):
        """One op writing two arguments that share memory: eager's kernel reads what it already
        wrote through the other, which no pure variant (reading old values) reproduces."""
        roots = [self.env[bound[w]].root for w in written
                 if isinstance(bound[w], torch.fx.Node) and isinstance(self.env.get(bound[w]), Ref)]
        if len({id(r) for r in roots}) != len(roots):
            raise UnsupportedError(
                f"{op} writes several arguments that share memory ({', '.join(written)})", node,
                pattern="aliased-arguments", hint="pass distinct tensors (e.g. clone() the extra ones)")

    def _refuse_aliased_list(self, tensors, node, op, sequential: bool):
        """A list-writing op (``_foreach_*_``) whose tensors share memory. ``sequential``: the
        rewrite reads and writes one element at a time, as eager's per-tensor loop does; then
        only autograd is a problem."""
        roots = [self.ref_of(t, node).root for t in tensors]
        if len({id(r) for r in roots}) != len(roots) and not (
                sequential and (self.grad_enabled is False or not any(self._may_require_grad_root(r) for r in roots))):
            # Without autograd (no_grad, as in optimizer steps) eager's per-tensor loop is
            # exactly the per-element rewrite; with it, eager's foreach autograd node over
            # aliased tensors gives gradients no per-element form reproduces.
            raise UnsupportedError(
                f"{op} writes a list whose tensors share memory; eager writes them one after the "
                "other, which no list-wise pure op reproduces", node, pattern="aliased-foreach",
                hint="pass distinct tensors, or loop over the in-place op")

    def _foreach_per_element(self, node, op) -> bool:
        """``_foreach_add_(xs, ...)`` as one pure op per element (``add(xs[i], ...)``).

        The list-wise pure op makes every output require grad when any input does; eager's
        in-place foreach leaves each tensor's ``requires_grad`` as it was. Per element it is exact.
        Returns False (use the list-wise op) when no per-element overload matches."""
        base = op._schema.name.split("::")[-1][len("_foreach_"):-1]
        packet = getattr(aten, base, None)
        if packet is None:
            return False
        bound = bind_args(op, node.args, node.kwargs)
        selfs = bound["self"]
        self._refuse_aliased_list(selfs, node, op, sequential=True)
        keyword = {"alpha": "alpha", "value": "value"}
        if base.startswith("addc") or base == "lerp":
            keyword.update({"scalar": "value" if base.startswith("addc") else "weight",
                            "scalars": "value" if base.startswith("addc") else "weight"})
        plan = []
        for i, target in enumerate(selfs):
            # Read, compute and write one element at a time, as eager's per-tensor loop does:
            # elements that alias each other see the earlier elements' writes.
            args, kwargs = [self.read(self.ref_of(target, node), written=True)], {}
            for a in op._schema.arguments[1:]:
                value = bound[a.name]
                if isinstance(value, (list, tuple)):
                    value = value[i]
                value = self.read_arg(value)
                if a.name in keyword:
                    kwargs[keyword[a.name]] = value
                else:
                    args.append(value)
            try:
                fake_args, fake_kwargs = torch.fx.node.map_arg((args, kwargs), _val)
                overload = torch._C._jit_resolve_packet(f"aten::{base}", *fake_args, **fake_kwargs)
            except Exception:
                if i == 0:
                    return False
                raise UnsupportedError(f"no per-element form of {op} for element {i}", node,
                                       pattern="foreach", hint="use a loop of in-place ops")
            elem_op = getattr(packet, overload)
            plan.append(elem_op)
            value = self.call(elem_op, args, kwargs, origin=node, note=f"was {op} (element {i})")
            self.write(self.ref_of(target, node), value, node)
        self.report.add("functionalized", node, f"{plan[0]} per element" if plan else "-",
                        "in-place foreach op replaced by one pure op per element")
        self.env[node] = None
        return True

    def _holds_eagers_layout(self, ref: Ref) -> bool:
        """Whether ``ref`` is, at run time, laid out exactly as eager's tensor: only when it is
        a whole root not written yet (the allocating op or input itself). Fake strides of
        computed values are not trusted: e.g. ``masked_fill`` of a transposed tensor is
        contiguous on CPU, its fake value transposed."""
        root = ref.root
        return not ref.path and root.value is root.initial and root.pending_path is None

    def _in_eager_layout(self, op, current, eager_val, node):
        """``current`` laid out in memory as eager's tensor was: random values are drawn in memory
        order. The current value may be laid out otherwise (contiguous after an earlier write to
        a gapped input; and fake strides of computed values are not always the real ones, so
        they are never trusted here). A fill visits a gapped tensor in the order of its dense
        counterpart (same dimension order), so a dense tensor in eager's order will do."""
        if op._schema.name.rstrip("_") in FILLS_IGNORING_SELF:   # self's values do not matter
            return self._dense_template(eager_val, lambda: current, node)
        # Values matter (dropout_): eager draws its mask with empty_like(self), which is dense
        # with self's dimension order (gaps or not). Same here.
        return self._dense_like(current, eager_val, node)

    def _memory_order(self, val, node) -> list:
        """Dimensions of ``empty_like(val)`` from outermost to innermost in memory: ``val``'s own
        order when it is dense; for gapped or expanded tensors whatever torch infers (asked of a
        meta tensor with the same sizes and strides)."""
        sizes, strides = [views._hint(d) for d in val.shape], [views._hint(st) for st in val.stride()]
        if None in sizes or None in strides:
            raise UnsupportedError(f"{node.target} on a tensor with data-dependent strides: the order "
                                   "random values are drawn in is unknown", node, pattern="random-non-dense",
                                   hint="draw into a fresh contiguous tensor")
        like = torch.empty_strided(sizes, strides, dtype=val.dtype, device="meta")
        dense = torch.empty_like(like).stride()
        return sorted(range(val.dim()), key=lambda d: (-dense[d], d))

    def _dense_template(self, like, shaped, node):
        """An empty tensor with ``like``'s sizes, dense in ``like``'s dimension order: what
        ``empty_like(like)`` gives in eager. ``shaped()`` gives a graph node with those sizes,
        needed only when they are symbolic."""
        sizes = list(like.shape) if all(isinstance(d, int) for d in like.shape) else views.sizes_of(self, shaped())
        return self.call(aten.empty_permuted.default, (sizes, self._memory_order(like, node)),
                         {"dtype": like.dtype, "device": like.device}, origin=node)

    def _draw_like_eager(self, node) -> bool:
        """``randn_like(t)`` draws in ``t``'s memory order, dense in its dimension order. A pure
        value may be laid out differently from eager's tensor (and fake strides are not always
        the real ones), so the draw gets an empty template laid out as eager's ``empty_like(t)``:
        same values, bit for bit."""
        like = _val(node.args[0])
        ref = self.env.get(node.args[0])
        if not _is_tensor(like) or not isinstance(ref, Ref):
            return False
        if ref.root.layout_unknown:
            raise _random_of_unknown_layout(node)
        template = self._dense_template(like, lambda: self.read(ref), node)
        new = self.graph.node_copy(node, lambda a: template if a is node.args[0] else self._read_one(a))
        self.env[node] = self.new_root(new, node)
        return True

    def _single_output_step(self, v, index, node):
        """The ``index``-th output of a multi-output view as a single-output view step. With a
        symbolic ``split`` size the bounds become graph nodes, so it is a plain ``slice`` too
        (a multi-output view breaks autograd once its base is written back)."""
        b = bind_args(v.op, (None,) + v.args, dict(v.kwargs))
        symbolic_chunk = v.op is aten.chunk.default and not isinstance(_val(node).shape[b["dim"]], int)
        if v.op is aten.split.Tensor and isinstance(v.args[0], torch.fx.Node) or symbolic_chunk:
            if symbolic_chunk:   # chunk's pieces are ceil(n / chunks) long
                n = self.call(aten.sym_size.int, (self.read(v.ref), b["dim"]))
                size = self.call(operator.floordiv, (self.call(operator.add, (n, b["chunks"] - 1)), b["chunks"]))
            else:
                size = b["split_size"]
            start = self.call(operator.mul, (size, index))
            end = self.call(operator.mul, (size, index + 1))
            return views.ViewStep(aten.slice.Tensor, (b["dim"], start, end), (), None, node, v.base_val)
        return views.single_output_step(v.op, v.args, v.kwargs, index, node, v.base_val)

    def _may_require_grad(self, arg) -> bool:
        ref = self.env.get(arg)
        return self._may_require_grad_root(ref.root) if isinstance(ref, Ref) else True

    def _may_require_grad_root(self, root) -> bool:
        if any(mode is not False for mode in root.write_modes):
            return True   # written with grad on: it may have gained a history
        orig = root.orig
        if orig is not None and orig.op == "get_attr":
            attr = _fetch_attr(self.gm, orig.target)
            return not isinstance(attr, torch.Tensor) or attr.requires_grad
        return not (orig is not None and orig.op == "call_function" and isinstance(orig.target, OpOverload)
                    and orig.target._schema.name.split("::")[-1] in FACTORIES)

    def _random_in_memory_order(self, target, args, kwargs, node):
        """Random values are drawn in memory order. ``bernoulli_`` fills ``self`` visiting its
        dims by decreasing stride; ``bernoulli.p`` fills a fresh contiguous tensor. Drawing into
        the permutation of ``self`` whose strides decrease, then permuting back, visits the
        elements in the same order (checked against eager for transposed and gapped tensors)."""
        val = _val(args[0])
        perm = self._memory_order(val, node)
        dense = self.call(aten.permute.default, (args[0], perm), origin=node)
        drawn = self.call(target, (dense,) + tuple(args[1:]), kwargs, origin=node, note=f"was {node.target}")
        return self.call(aten.permute.default, (drawn, views._inverse_permutation(perm)), origin=node)

    def _true(self, node):
        if self.true_node is None:
            self.true_node = self.call(aten.scalar_tensor.default, (True,), {"dtype": torch.bool}, origin=node)
        return self.true_node

    def _keep_grad_link(self, new, old_self, node):
        """``normal_``/``bernoulli_`` of a tensor that requires grad give a result that requires
        grad with zero gradient; their pure variants have no derivative at all. ``where(True,
        new, self)`` has exactly ``new``'s values and a zero gradient for ``self``."""
        return self.call(aten.where.self, (self._true(node), new, old_self), origin=node, val=_val(new),
                         note=f"keeps {node.target}'s (zero) gradient link to self")

    def _split_results(self, new, nvals, auto, nwritten):
        """The pure call's results as nodes: fresh returns, then one new value per written arg.
        ``auto_functionalized`` puts the written values last, after the op's own outputs."""
        if auto:
            offset = len(new.meta["val"]) - nwritten
            indices = list(range(nvals - nwritten)) + [offset + i for i in range(nwritten)]
        elif nvals == 1:
            return [new]
        else:
            indices = range(nvals)
        return [self.call(operator.getitem, (new, i)) for i in indices]

    def _write_result(self, ref, value, node, is_out):
        have, want = _val(value), ref.val
        if is_out and _is_tensor(have) and _is_tensor(want) and not views.same_shape(have.shape, want.shape):
            # out= resized its argument. Rebind when it is a whole fresh tensor (typical:
            # torch.empty(0) passed as out); a caller-visible or partial resize has no value form.
            if ref.path or ref.root.input_node is not None:
                raise UnsupportedError("out= resizes a graph input or a view", node, pattern="resize-input",
                                       hint="pass an out tensor of the right size, or use the functional op")
        if is_out and _is_tensor(have) and _is_tensor(want) and not views.same_shape(have.shape, want.shape):
            value = self._match_dtype(value, want, node)
            self.pending_roots.pop(ref.root, None)
            ref.root.value, ref.root.pending_path, ref.root.pending_value = value, None, None
            ref.root.mutated = True
            ref.val = _val(node) if _is_tensor(_val(node)) else have
            # A pointwise out= resize takes its strides from non-contiguous inputs (sin(x.mT,
            # out=empty) is laid out like x.mT); the fake kernels say contiguous.
            ref.root.layout_unknown = torch.Tag.pointwise in node.target.tags and any(
                _is_tensor(_val(a)) and not _val(a).is_contiguous() for a in node.args)
            return
        self.write(ref, value, node)

    def _fresh(self, value_node, node, j, n):
        val = _val(value_node)
        if _is_tensor(val):
            orig_val = _val(node)[j] if n > 1 and isinstance(_val(node), (tuple, list)) else _val(node)
            ref = self.new_root(value_node, None)
            ref.val = orig_val if _is_tensor(orig_val) else val
            return ref
        return value_node

    def _bind_results(self, node, outs):
        if len(outs) == 0:
            self.env[node] = None
        elif len(outs) == 1 and not isinstance(_val(node), tuple):
            self.env[node] = outs[0]
        else:
            self.env[node] = Multi(outs)

    def _hidden_write(self, node, op, hidden, bound):
        fargs = [bound[name] for name in hidden.functional_args]
        fargs = [self.read_arg(a) for a in fargs]
        new = self.call(hidden.functional, fargs, origin=node, note=f"was {op} (hidden running-stat write)")
        results = [self.call(operator.getitem, (new, i)) for i in range(5)]
        self.report.add("hidden-write", node, str(hidden.functional),
                        "train-mode batch norm writes running stats without declaring it (#73050)")
        for name, value in zip(hidden.written, results[3:]):
            self.write(self.ref_of(bound[name], node), value, node, hidden=True)
        nret = len(op._schema.returns)
        outs = [self._fresh(results[i], node, i, nret) for i in range(min(3, nret))]
        if nret > 3:
            outs.append(Poisoned(node, f"{op}'s reserve buffer has no functional counterpart"))
        self._bind_results(node, outs)

    def _copy_(self, node):
        bound = bind_args(aten.copy_.default, node.args, node.kwargs)
        dst = self.ref_of(bound["self"], node)
        src = self.env.get(bound["src"])
        if isinstance(src, Ref) and src.root is dst.root and src.path == dst.path:
            self._refuse_overlapping_write(dst, node)   # eager's autograd through it is not a no-op
            self.report.add("copy-removed", node, "-", "copy of a tensor onto itself")
            dst.root.version += 1   # eager still bumps the version (regenerating views' grad_fn)
            self.env[node] = dst
            return
        if isinstance(src, Ref) and src.root is dst.root and not views.same_shape(src.val.shape, dst.val.shape) \
                and views.may_share_elements(src.val, dst.val):
            # Eager refuses a partially overlapping copy_, except with a broadcast source: then
            # the result depends on the order the kernel visits memory.
            raise UnsupportedError("copy_ from a broadcast view that shares memory with its destination: "
                                   "eager's result depends on the order memory is visited", node,
                                   pattern="overlapping-copy", hint="clone() the source first")
        value = self.read_arg(bound["src"])
        have, want = _val(value), dst.val
        if self.grad_enabled is False or not (want.dtype.is_floating_point or want.dtype.is_complex):
            # Under no_grad (or into a dtype autograd cannot track) the copy carries no history.
            value = self.call(aten.detach.default, (value,), origin=node, val=have)
        if have.dtype != want.dtype or have.device != want.device:
            value = self.call(aten._to_copy.default, (value,), {"dtype": want.dtype, "device": want.device},
                              origin=node, note="was copy_ (dtype/device conversion)")
        if self.grad_enabled is not False and (want.dtype.is_floating_point or want.dtype.is_complex) \
                and self._may_require_grad_root(dst.root):
            # dst may require grad: after copy_ it still does (gradient zero w.r.t. its old
            # value), however src was made. where(True, src, old) is exactly that, and
            # broadcasts src as copy_ does.
            value = self.call(aten.where.self, (self._true(node), value, self.read(dst, written=True)), origin=node,
                              note="was copy_ (keeps dst's autograd link)")
        elif not views.same_shape(have.shape, want.shape):
            value = self.call(aten.expand.default, (value, views.sizes_of(self, self.read(dst))), origin=node,
                              note="was copy_ (broadcast)")
        if not dst.path and dst.root.input_node is None and views.is_static(want) \
                and (not want.is_contiguous() or value.target is aten.expand.default):
            # A whole fresh tensor keeps its own layout through copy_ (empty_strided(...).copy_(x)
            # is laid out as allocated, and a broadcast src fills real memory): so does its value.
            value = self._in_layout(value, want, node)
        self.report.add("copy-forwarded", node, str(value.target) if value.op == "call_function" else value.name,
                        "copy_ becomes the copied value")
        self.write(dst, value, node)
        self.env[node] = dst

    def _dense_like(self, value, like, node):
        """``value`` in a dense tensor with ``like``'s dimension order (its strides, if dense)."""
        perm = self._memory_order(like, node)
        dense = self.call(aten.permute.default, (value, perm), origin=node)
        dense = self.call(aten.clone.default, (dense,), {"memory_format": torch.contiguous_format}, origin=node)
        return self.call(aten.permute.default, (dense, views._inverse_permutation(perm)), origin=node)

    def _in_layout(self, value, like, node):
        """``value``'s elements laid out in memory exactly as ``like`` (static) is."""
        if views.is_dense(like) and like.storage_offset() == 0:
            return self._dense_like(value, like, node)
        from . import runtime
        template = self.call(aten.empty_strided.default, (list(like.shape), list(like.stride())),
                             {"dtype": like.dtype, "device": like.device}, origin=node)
        return self.call(runtime.copy_into, (template, value), origin=node, val=like,
                         note="the copy keeps the destination's (gapped) layout")

    def _fill_diagonal_(self, node):
        """``fill_diagonal_`` has no functional ATen form. Its elements are ``(i, i, ..., i)``, and
        with ``wrap`` on a tall matrix every ``(width + 1)``-th element of its (contiguous)
        memory: an ``index_put`` of the fill value at those indices."""
        bound = bind_args(aten.fill_diagonal_.default, node.args, node.kwargs)
        ref = self.ref_of(bound["self"], node)
        val = ref.val
        if not views.is_static(val):
            raise UnsupportedError("fill_diagonal_ with symbolic sizes", node, pattern="unknown-mutable-op",
                                   hint="trace with static shapes, or use torch.diagonal(...).fill_")
        height, width = val.shape[0], val.shape[1]
        device = val.device
        if bound["wrap"] and val.dim() == 2 and height > width + 1:
            if not val.is_contiguous():
                raise UnsupportedError("fill_diagonal_(wrap=True) of a non-contiguous tall matrix: eager wraps "
                                       "by memory position", node, pattern="stride-sensitive-write",
                                       hint="make the tensor contiguous first")
            flat = self.call(aten.arange.start_step, (0, val.numel(), width + 1), {"dtype": torch.long, "device": device},
                             origin=node)
            indices = [self.call(aten.div.Tensor_mode, (flat, width), {"rounding_mode": "floor"}, origin=node),
                       self.call(aten.remainder.Scalar, (flat, width), origin=node)]
        else:
            diag = self.call(aten.arange.default, (min(height, width),), {"dtype": torch.long, "device": device},
                             origin=node)
            indices = [diag] * val.dim()
        fill = self.call(aten.scalar_tensor.default, (bound["fill_value"],), {"dtype": val.dtype, "device": device},
                         origin=node)
        value = self.call(aten.index_put.default, (self.read(ref, written=True), indices, fill), origin=node,
                          note="was fill_diagonal_")
        self.report.add("functionalized", node, "aten.index_put", "fill_diagonal_ as index_put at the diagonal")
        self.write(ref, value, node)
        self.env[node] = ref

    def _resize_(self, node):
        bound = bind_args(aten.resize_.default, node.args, node.kwargs)
        ref = self.ref_of(bound["self"], node)
        want = _val(node)
        if views.same_shape(want.shape, ref.val.shape):
            self.env[node] = ref
            return
        if ref.path or ref.root.input_node is not None:
            raise UnsupportedError("resize_ changes the size of a graph input or a view", node,
                                   pattern="resize-input", hint="allocate a new tensor of the wanted size instead")
        size = self.read_arg(bound["size"])
        new = self.call(aten.new_empty.default, (self.read(ref), size), origin=node, note="was resize_")
        old = ref.val
        if not (isinstance(old.numel(), int) and old.numel() == 0):
            # resize_ keeps the storage: the new (contiguous) tensor holds the old elements in
            # memory order, then uninitialized memory if it grew.
            if not (views.is_static(old) and views.is_static(want) and old.storage_offset() == 0
                    and views.is_dense(old)):
                raise UnsupportedError("resize_ of a tensor with data, whose memory layout (gaps, offset or "
                                       "symbolic sizes) decides which elements the result keeps", node,
                                       pattern="resize-layout", hint="use reshape / narrow / torch.cat instead")
            perm = self._memory_order(old, node)
            flat = self.call(aten.permute.default, (self.read(ref), perm), origin=node)
            flat = self.call(aten.reshape.default, (flat, [-1]), origin=node)
            n, have = want.numel(), old.numel()
            if n <= have:
                flat = self.call(aten.slice.Tensor, (flat, 0, 0, n), origin=node)
            else:
                tail = self.call(aten.new_empty.default, (flat, [n - have]), origin=node)
                flat = self.call(aten.cat.default, ([flat, tail],), origin=node)
            new = self.call(aten.view.default, (flat, list(want.shape)), origin=node, note="was resize_")
        self.pending_roots.pop(ref.root, None)
        ref.root.value, ref.root.pending_path, ref.root.pending_value = new, None, None
        ref.val = want
        self.env[node] = ref

    def _metadata_mutation(self, node, op):
        view_op = view_variant(op)
        if view_op is None:
            raise UnsupportedError(f"metadata mutation {op} has no view equivalent", node,
                                   pattern="metadata-mutation", hint="use the out-of-place view op")
        ref = self.ref_of(node.args[0], node)
        if views.same_metadata(_val(node), ref.val):   # e.g. as_strided_ to the same layout
            self.env[node] = ref
            return
        args = views.freeze(tuple(self.read_arg(a) for a in node.args[1:]))
        kwargs = tuple(sorted((k, views.freeze(self.read_arg(v))) for k, v in node.kwargs.items()))
        step = views.ViewStep(view_op, args, kwargs, None, source=node, base_val=ref.val)
        ref.path = ref.path + (step,)
        ref.root.version += 1
        ref.version = ref.root.version
        ref.val = _val(node)
        self.report.add("metadata-view", node, str(view_op), "metadata mutation becomes a view")
        self.env[node] = ref

    # ------------------------------------------------------------------ higher-order ops
    def _hop(self, node, hop):
        name = hop.name() if callable(getattr(hop, "name", None)) else str(hop)
        if name in INLINED_HOPS:
            return self._inline_grad_mode(node)
        if name in PURE_HOPS or not _has_impure_subgraph(self.gm, node):
            return self._copy(node)
        raise UnsupportedError(f"higher-order op {name} with mutations inside its subgraph", node,
                               pattern="unknown-hop",
                               hint="purify the body first, or trace without this construct")

    def _inline_grad_mode(self, node):
        enable, body_name, *args = node.args
        body = _fetch_attr(self.gm, body_name.target) if isinstance(body_name, torch.fx.Node) else body_name
        prev = self.call(torch.is_grad_enabled, (), val=True)
        prev.meta.pop("val", None)
        self.flush_pending()
        self.call(torch._C._set_grad_enabled, (enable,), origin=node, val=True).meta.pop("val", None)
        outer_grad, self.grad_enabled = self.grad_enabled, enable if isinstance(enable, bool) else None
        sub_env = self.env
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        for p, a in zip(placeholders, args):
            sub_env[p] = self.env[a] if isinstance(a, torch.fx.Node) else a
        outputs = None
        saved_gm, self.gm = self.gm, body
        try:
            for n in body.graph.nodes:
                if n.op == "placeholder":
                    continue
                if n.op == "output":
                    outputs = n.args[0]
                    continue
                getattr(self, f"_on_{n.op}")(n)
        finally:
            self.gm = saved_gm
        self.flush_pending()
        self.grad_enabled = outer_grad
        self.call(torch._C._set_grad_enabled, (prev,), origin=node, val=True).meta.pop("val", None)
        items = [self.env[o] if isinstance(o, torch.fx.Node) else o for o in outputs]
        self.env[node] = Multi(items)


# Results whose value object must not be shared between nodes (random draws are fine: only
# metadata is recorded); kept empty on purpose, a hook for ops with data-dependent shapes.
NEVER_SHARE_VALUES: set = set()


_NO_KEY = object()


def _random_of_unknown_layout(node) -> UnsupportedError:
    return UnsupportedError(
        f"{node.target} on a tensor that an out= op resized to a layout fxpurify cannot see: random "
        "values are drawn in memory order", node, pattern="random-unknown-layout",
        hint="allocate the out= tensor with its final size, or draw into a fresh tensor")


def _normal_with_gaps(node) -> UnsupportedError:
    return UnsupportedError(
        "normal_ on a tensor with gaps in memory draws its values in an order no pure op reproduces",
        node, pattern="random-non-dense",
        hint="call normal_ on a contiguous tensor (e.g. fill a fresh tensor, then copy it in)")


def _last_detach(path: tuple) -> Optional[int]:
    return max((i for i, step in enumerate(path) if step.op is aten.detach.default), default=None)


def _metadata_key(obj):
    """A hashable key for an op call that depends only on its inputs' metadata (static sizes,
    strides, offset, storage size, dtype, device) and constants, or None when some input is
    symbolic or unhashable. Values of new nodes only describe metadata (aliasing is decided
    structurally), so equal keys give interchangeable fake values: one fake dispatch per
    distinct call instead of one per node."""
    key = _key(obj)
    return None if key is _NO_KEY else key


def _key(obj):
    if isinstance(obj, torch.Tensor):
        nbytes = obj.untyped_storage().nbytes()
        if not views.is_static(obj) or not isinstance(nbytes, int):
            return _NO_KEY
        return ("T", tuple(obj.shape), obj.stride(), obj.storage_offset(), nbytes, obj.dtype, obj.device,
                obj.requires_grad)
    if isinstance(obj, (tuple, list)):
        parts = tuple(_key(o) for o in obj)
        return _NO_KEY if any(p is _NO_KEY for p in parts) else (type(obj), parts)
    if obj is None or isinstance(obj, (int, float, bool, str, torch.dtype, torch.device, torch.layout,
                                       torch.memory_format)):
        return (type(obj), obj)
    if callable(obj) and not isinstance(obj, torch.Tensor):
        return obj
    return _NO_KEY


@dataclass
class _FreshList:
    """A pure op returning a list/tuple of fresh tensors; ``getitem`` makes each a root."""

    node: torch.fx.Node


def _written_storages(gm) -> set:
    """Storages (of fake values) that some node of ``gm`` writes visibly to autograd: a quick
    scan before the walk, so inputs that will be written back are known when first read."""
    written = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, OpOverload):
            continue
        info = op_info(node.target)
        # Metadata mutations count: the epilogue's as_strided_ bumps the version counter that
        # tensors saved for backward from the input share.
        names = info.written
        if not names:   # hidden writes (batch norm) keep versions instead: no snapshot needed
            continue
        bound = bind_args(node.target, node.args, node.kwargs)
        for name in names:
            for arg in torch.fx.node.map_aggregate(bound.get(name), lambda a: a) if isinstance(bound.get(name), (list, tuple)) else [bound.get(name)]:
                val = _val(arg)
                if _is_tensor(val):
                    written.add(_storage(val))
    return written


def _fetch_attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _has_impure_subgraph(gm, node) -> bool:
    from .check import impure_nodes
    for arg in node.args:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            sub = _fetch_attr(gm, arg.target)
            if isinstance(sub, torch.fx.GraphModule) and impure_nodes(sub, allow_input_writes=False):
                return True
    return False
