"""Paying less for purity: memory-recovery transforms of the *emitted* pure program.

This module sits after the pipeline (``purify`` → **recover** → run). The pure graph that
``fxpurify.purify`` returns stays the IR a user inspects; what this module changes is how that
graph is *run*. It takes a pure ``GraphModule`` and returns a new one that computes exactly the
same outputs and leaves every input in exactly the same state, while allocating less.

Where the price of purity comes from (measured in ``benchmarks/``):

* **pile-up**: the pure form writes every mutated input back in an epilogue, after everything
  else, so each input's new value stays alive until the end of the graph. In an optimizer step
  over 100 parameters that is 100 new parameters + 200 new moment buffers alive at once, where
  the in-place step held one temporary at a time.
* **rebuild**: an in-place write of a small slice of a big input (a KV-cache update) becomes a
  functional scatter that rebuilds the whole input, then a ``copy_`` of the whole input back.

Two transforms answer them, each proven below, and :func:`extra_bytes` reports the price per
graph.

Alias model used by both proofs
-------------------------------
Every node gets a set of *alias roots*: a placeholder, ``get_attr`` or fresh op result owns its
storage (roots = {itself}); a view (schema: first return carries a non-write ``alias_info``, as
in ``torch/fx/passes/reinplace.py``) and ``getitem`` of a view inherit the roots of their base;
anything we cannot classify (a non-ATen ``call_function``, a higher-order op) conservatively
inherits the roots of *all* its tensor arguments plus itself. ``closure(p)`` is every node whose
roots contain ``p``. A node *reads p* if one of its arguments is in ``closure(p)``.
The emitted graph's call-time guard (``check_inputs_not_aliased``) guarantees that distinct
placeholders do not share storage, which is what lets roots stand for storages.

A. Early write-back
-------------------
Before::

    new = f(p, ...)            # last read of p's old value
    ... 1000 more nodes ...    # none reads p; `new` stays alive
    copy_(p, new)              # epilogue

After::

    new = f(p, ...)
    copy_(p, new)              # `new` dies here (FX frees values after their last use)
    ... 1000 more nodes ...

Rule: for an epilogue ``c = aten.copy_.default(p, v)`` with ``p`` a placeholder (or owned
``get_attr``), move ``c`` to just after ``P = max(pos(v), last node before c that reads p)``.

Why it is sound. Let the nodes strictly between ``P`` and ``c``'s old position be ``M``.
(1) No node of ``M`` reads ``p`` (nor any alias of it): ``P`` is after the last such reader, so
each of them sees the same value of ``p`` as before — the old one. (2) Nodes after ``c``'s old
position that read ``p`` wanted the new value, and still come after ``c``. (3) ``c`` itself
reads ``v``; moving it earlier changes what it reads only if ``v``'s storage is written inside
``M``. The only writes in a pure graph are epilogue copies, so we require that ``v`` does not
alias any written input (``roots(v)`` contains no written placeholder). (4) ``c`` must be the
only write to ``p`` (a metadata epilogue ``as_strided_`` or a second write disables the move).
(5) Autograd: ``c`` still bumps ``p``'s version before any backward can run, and every node
that may have saved ``p`` for backward runs before ``c`` in both orders — so the set of saved
tensors that see the bump is the same. Leaf inputs that require grad are written by
``fxpurify.runtime.write_back_input``; those writes are moved by the same rule.

B. In-place final scatter
-------------------------
Before::

    s = index_copy(p, 2, pos, k)     # functional rebuild of the whole cache
    out = sdpa(q, s, ...)            # readers of the new value
    copy_(p, s)                      # and a full copy back

After::

    index_copy_(p, 2, pos, k)        # write only the slice, in place
    out = sdpa(q, p, ...)            # p now *is* s

Rule: for an epilogue ``c = aten.copy_.default(p, s)`` where ``s = op(p, *rest)`` and ``op`` is a
functional scatter whose in-place sibling exists (``index_put``/``index_copy``/``index_fill``/
``index_add``/``scatter*``/``masked_fill``/``masked_scatter``, found by schema), or a view scatter
(``slice_scatter``/``select_scatter``/``diagonal_scatter`` → ``view(p, ...).copy_(src)``, nested
view scatters collapsing into one chain of views): emit the in-place form after
``P = max(pos(rest args), last node other than s and c that reads p)``, replace every use of
``s`` by ``p``, drop ``s`` and ``c``.

Why it is sound. After the in-place op, ``p`` holds exactly ``s`` (same op, same arguments,
``p``'s old value as base), so (1) every former user of ``s`` reads the same values — we require
all of them to come after ``P``, and require ``s`` to have ``p``'s shape, dtype and strides (so
stride-sensitive readers such as ``view`` see the same layout; DESIGN pitfall 6); (2) no node
between ``P`` and ``c`` reads ``p``'s old value (definition of ``P``), and nodes after ``c`` wanted
the new one; (3) the in-place op reads its other operands while it writes ``p``: we require none
of them to alias ``p`` (DESIGN pitfall 13: ``torch.fx.passes.reinplace`` rewrote ``a[1:] - a[:-1]``
into an overlapping in-place op) nor any other written input; (4) ``s`` must not be a graph
output, or the caller would receive an alias of its input where it used to get a fresh tensor;
(5) autograd: only a plain ``aten.copy_`` is replaced — the core emits it only where a plain
in-place write to ``p`` is legal (inputs requiring grad go through ``write_back_input``), the
version bump happens after every reader of the old value exactly as with the epilogue copy,
and none of these scatters' backward formulas needs the old ``self``.

B'. In-place final write (elementwise chains)
--------------------------------------------
The same rule, for any chain ``s = op_k(...op_1(p, ...)..., ...)`` whose links all have an
in-place sibling (by schema; random ops excluded) and keep ``p``'s layout, when each link is
read only by the next and ``s`` only by its copy into ``p`` (``p.mul_(0.9).add_(g)``, Adam's
``param.addcdiv_``): emit ``op_1_(p, ...); ...; op_k_(p, ...)`` at ``P``. Soundness is that of B
(no reader of the new value other than the copy, so nothing else changes), plus grad mode:
every link must have run under the mode the write runs under (statically known), so the
in-place chain records the same autograd history the out-of-place chain plus copy did.
Reported as ``inplace_write``; enabled with ``inplace_scatter``.

D. In-place temporaries (no_grad regions)
----------------------------------------
Inside a statically ``no_grad`` region (optimizer steps traced with ``pre_dispatch=True``), a
temporary ``x`` whose last reader is ``y = op(x, ...)`` is reused: ``op_(x, ...)``. This is the
classic re-inplacing Inductor does, restricted to what can be proven locally: ``x`` owns its
storage and has no view, ``op`` is its last reader and reads it only as ``self``, layouts match,
and autograd is off where ``x`` is made and where it is overwritten. See
``_inplace_temporaries``. Reported as ``inplace_temp``; enabled with ``inplace_scatter``.

C. The epilogue's bracket
-------------------------
The core emits its write-backs inside ``b = begin_write_back(...) ... end_write_back(b)``:
``begin_write_back`` turns grad off when a written input is a leaf that requires grad (an
optimizer step), and the pair keeps the version counters of inputs written only by hidden
writes (batch-norm running statistics, which autograd saved for backward). A write moved out of
the epilogue (A or B) gets its own clone of the bracket — same functions, same arguments — so
(1) it runs under the grad mode it had: the decision reads only ``is_leaf``/``requires_grad``,
which no write-back changes (a copy into a leaf that requires grad is only legal under
``no_grad``, which keeps it a leaf; a copy into a non-leaf cannot make it a leaf), so taking it
earlier gives the same answer; (2) its version treatment is the same: the clone records the
versions just before the one write and restores them just after, and no other write happens in
between, so every other input gets back the version it already had. ``begin_write_back`` reads
only metadata, so it is not a reader of the inputs' values; a bracket left empty is removed.

``as_strided_scatter`` is not rewritten: ``as_strided`` on ``p`` and on ``p.clone()`` address
different elements when ``p`` has an offset or odd strides, and its views may overlap
(DESIGN pitfall 5).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import operator
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

log = logging.getLogger(__name__)

aten = torch.ops.aten

__all__ = ["recover_memory", "extra_bytes", "allocated_bytes", "RecoveryRecord",
           "records_of"]


@dataclasses.dataclass(frozen=True)
class RecoveryRecord:
    """One rewrite done by :func:`recover_memory`, kept in ``gm.meta["fxpurify_recover"]``."""

    kind: str        # "early_writeback" | "inplace_scatter"
    input: str       # the placeholder / get_attr written
    node: str        # the copy (early write-back) or scatter (in-place) node of the pure graph
    detail: str      # what happened, e.g. "moved 812 nodes earlier" / "index_copy -> index_copy_"
    bytes: int       # bytes no longer held (early write-back) / no longer allocated (scatter)


@dataclasses.dataclass(frozen=True)
class _ViewScatter:
    """A view scatter and the view it inverts: ``scatter(base, src, *a)`` ==
    ``base.clone()`` with ``view(clone, *a).copy_(src)``."""

    view: Any
    # view_copy ops a functionalized graph uses in place of the view when it regenerates the
    # base of a nested scatter (``make_fx(functionalize(remove="mutations_and_views"))``).
    view_copy: Any


# The one table of hand-written knowledge: which view each view-scatter inverts. Index-style
# scatters need no table: their in-place sibling is found by schema (``_inplace_sibling``).
_VIEW_SCATTERS = {
    aten.slice_scatter.default: _ViewScatter(aten.slice.Tensor, aten.slice_copy.Tensor),
    aten.select_scatter.default: _ViewScatter(aten.select.int, aten.select_copy.int),
    aten.diagonal_scatter.default: _ViewScatter(aten.diagonal.default,
                                                aten.diagonal_copy.default),
}

# Functional index/scatter ops whose in-place sibling writes only the addressed elements.
_INDEX_SCATTER_NAMES = frozenset({
    "index_put", "index_copy", "index_fill", "index_add", "scatter", "scatter_add",
    "scatter_reduce", "masked_fill", "masked_scatter",
})

_COPY = aten.copy_.default


# ----------------------------------------------------------------------------- op knowledge

_sibling_cache: dict[tuple, Any] = {}


def _inplace_sibling(op: Any, any_op: bool = False) -> Any | None:
    """``aten.foo.ov`` -> ``aten.foo_.ov`` when both exist with the same argument types.

    Found by name, then confirmed by schema (the habit of ``torch/fx/passes/reinplace.py``):
    the in-place overload must take the same arguments and write only ``self``. By default only
    the index/scatter family (``_INDEX_SCATTER_NAMES``); ``any_op=True`` accepts any op except
    random ones (their in-place forms may draw differently: DESIGN pitfall 10) and views.
    """
    key = (op, any_op)
    if key in _sibling_cache:
        return _sibling_cache[key]
    found = None
    if isinstance(op, torch._ops.OpOverload):
        name = op._schema.name.split("::")[-1]
        family = name in _INDEX_SCATTER_NAMES
        plain = (any_op and torch.Tag.nondeterministic_seeded not in op.tags
                 and len(op._schema.returns) == 1 and op._schema.returns[0].alias_info is None
                 and not op._schema.is_mutable)
        packet = getattr(aten, name + "_", None) if (family or plain) else None
        cand = getattr(packet, op._overloadname, None) if packet is not None else None
        if cand is not None and torch.Tag.inplace_view not in cand.tags:
            a, b = op._schema.arguments, cand._schema.arguments
            same = len(a) == len(b) and all(str(x.type) == str(y.type) and x.name == y.name
                                            for x, y in zip(a, b))
            writes_self_only = (
                b[0].alias_info is not None and b[0].alias_info.is_write
                and all(x.alias_info is None for x in b[1:])
            )
            if same and writes_self_only:
                found = cand
    _sibling_cache[key] = found
    return found


def _is_view(node: fx.Node) -> bool:
    """True when the node's result may share storage with its first tensor argument."""
    t = node.target
    if node.op != "call_function":
        return False
    if t is operator.getitem:
        return True  # decided by the base's roots: a fresh tuple gives fresh items
    if isinstance(t, torch._ops.OpOverload):
        rets = t._schema.returns
        return bool(rets) and rets[0].alias_info is not None
    return False


def _node_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in tree_leaves((node.args, node.kwargs)) if isinstance(a, fx.Node)]


# fxpurify.runtime helpers that look only at their inputs' metadata (is_leaf, requires_grad,
# _version, storage pointers) and return flags or tokens, never tensors: not readers of values.
_METADATA_ONLY_RUNTIME = frozenset({"begin_write_back", "autograd_active",
                                    "check_inputs_not_aliased"})


def _metadata_only(node: fx.Node) -> bool:
    t = node.target
    return (node.op == "call_function" and "fxpurify" in getattr(t, "__module__", "")
            and getattr(t, "__name__", "") in _METADATA_ONLY_RUNTIME)


def _alias_roots(graph: fx.Graph) -> dict[fx.Node, frozenset]:
    """Alias roots of every node (see the module docstring)."""
    roots: dict[fx.Node, frozenset] = {}
    for n in graph.nodes:
        args = _node_args(n)
        if n.op in ("placeholder", "get_attr", "output"):
            roots[n] = frozenset({n})
        elif n.op == "call_function" and n.target is operator.getitem:
            base = args[0]
            roots[n] = roots[base] if roots[base] != frozenset({base}) else frozenset({n})
        elif n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
            if _is_view(n) and args:
                roots[n] = roots[args[0]]
            else:
                roots[n] = frozenset({n})
        elif _metadata_only(n):
            roots[n] = frozenset({n})  # a flag, not a tensor: aliases nothing
        else:  # unknown callable, call_module, higher-order op: may alias any tensor argument
            r = {n}
            for a in args:
                r |= roots.get(a, frozenset())
            roots[n] = frozenset(r)
    return roots


def _is_write_back(node: fx.Node) -> bool:
    t = node.target
    return (node.op == "call_function" and getattr(t, "__name__", "") == "write_back_input"
            and "fxpurify" in getattr(t, "__module__", ""))


def _writes(node: fx.Node) -> list[fx.Node]:
    """Argument nodes this node writes (schema alias annotations; runtime write-backs)."""
    if node.op != "call_function":
        return []
    if _is_write_back(node):
        return [node.args[0]]
    t = node.target
    if isinstance(t, torch._ops.OpOverload) and t._schema.is_mutable:
        out = []
        for i, a in enumerate(t._schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                v = node.args[i] if i < len(node.args) else node.kwargs.get(a.name)
                out.extend(x for x in tree_leaves(v) if isinstance(x, fx.Node))
        return out
    return []


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _nbytes(val: Any) -> int:
    total = 0
    for t in tree_leaves(val):
        if isinstance(t, torch.Tensor):
            try:
                total += int(t.numel()) * t.element_size()
            except Exception:  # unbacked / symbolic size without a hint: not counted
                pass
    return total


# ----------------------------------------------------------------------------- analysis

@dataclasses.dataclass
class _Analysis:
    pos: dict[fx.Node, int]
    roots: dict[fx.Node, frozenset]
    written: dict[fx.Node, list[fx.Node]]   # written target -> nodes writing it (any alias)
    has_call_module: bool
    # write -> the (begin, end) grad-mode bracket of the epilogue it sits in, if any
    bracket: dict[fx.Node, tuple[fx.Node, fx.Node]]
    # static grad mode in force right after each node: True / False / CALLER / UNKNOWN
    mode_after: dict[fx.Node, Any]
    # node -> (mode before its bracket's begin, or before the node when not in a bracket;
    #          the last constant grad-mode switch inside the bracket before the node, or None)
    write_mode: dict[fx.Node, tuple]

    def known(self, c: fx.Node) -> bool:
        base, explicit = self.write_mode[c]
        return base is not UNKNOWN and explicit is not UNKNOWN


def _is_bracket_begin(node: fx.Node) -> bool:
    """``fxpurify.runtime.begin_write_back``: opens the epilogue (grad mode, version counters).

    It reads the written inputs' *metadata* (``is_leaf``, ``requires_grad``, ``_version``),
    never their data, so it is not a reader of their values for the proofs above.
    """
    t = node.target
    return (node.op == "call_function" and getattr(t, "__name__", "") == "begin_write_back"
            and "fxpurify" in getattr(t, "__module__", ""))


def _bracket_end(begin: fx.Node) -> fx.Node | None:
    """The node that closes ``begin``'s bracket: its only user, after it (``end_write_back`` or
    ``torch._C._set_grad_enabled`` — whichever the core emits, we only ever clone it)."""
    if len(begin.users) != 1:
        return None
    (end,) = begin.users
    return end if end.op == "call_function" else None


def _brackets(graph: fx.Graph) -> dict[fx.Node, tuple[fx.Node, fx.Node]]:
    """Map each node inside ``b = begin_write_back(...) ... end(b)`` to ``(b, end)``."""
    out: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}
    open_b, open_e, inside = None, None, []
    for n in graph.nodes:
        if _is_bracket_begin(n):
            open_b, open_e, inside = n, _bracket_end(n), []
        elif open_b is not None and n is open_e:
            for m in inside:
                out[m] = (open_b, n)
            open_b, open_e, inside = None, None, []
        elif open_b is not None:
            inside.append(n)
    return out


class _Mode(str):
    pass


CALLER = _Mode("caller")     # whatever grad mode the graph was called under
UNKNOWN = _Mode("unknown")   # set from a runtime value we cannot follow


def _grad_modes(graph: fx.Graph, brackets: dict) -> tuple[dict, dict]:
    """Grad modes followed statically through ``_set_grad_enabled`` nodes (pre-dispatch graphs
    record ``no_grad`` regions as constant switches).

    Returns ``mode_after`` (the mode after each node) and ``write_mode`` (for each node, the
    mode its bracket starts from and the last constant switch inside the bracket before it).
    ``begin_write_back`` may switch the mode at run time (UNKNOWN after it); its end restores
    the mode the begin found."""
    mode_after: dict[fx.Node, Any] = {}
    write_mode: dict[fx.Node, tuple] = {}
    mode: Any = CALLER
    ends = {e: b for b, e in brackets.values()}
    base: Any = None          # mode before the open bracket's begin
    explicit: Any = None      # last switch inside the open bracket
    for n in graph.nodes:
        write_mode[n] = (base, explicit) if base is not None else (mode, None)
        if _is_bracket_begin(n) and n in {b for b, _ in brackets.values()}:
            base, explicit, mode = mode, None, UNKNOWN
        elif n in ends:
            mode, base, explicit = base, None, None
        elif n.op == "call_function" and n.target is torch._C._set_grad_enabled:
            arg = n.args[0] if n.args else None
            mode = arg if isinstance(arg, bool) else UNKNOWN
            if base is not None:
                explicit = mode
        mode_after[n] = mode
    return mode_after, write_mode


def _analyse(graph: fx.Graph) -> _Analysis:
    pos = {n: i for i, n in enumerate(graph.nodes)}
    roots = _alias_roots(graph)
    written: dict[fx.Node, list[fx.Node]] = {}
    for n in graph.nodes:
        for w in _writes(n):
            for r in roots.get(w, frozenset({w})):
                written.setdefault(r, []).append(n)
    has_cm = any(n.op == "call_module" for n in graph.nodes)
    brackets = _brackets(graph)
    return _Analysis(pos, roots, written, has_cm, brackets, *_grad_modes(graph, brackets))


def _last_reads(graph: fx.Graph, an: _Analysis, targets: set[fx.Node]) -> dict:
    """For each target: positions of nodes reading its value (one pass over the graph)."""
    reads: dict[fx.Node, list[int]] = {t: [] for t in targets}
    for n in graph.nodes:
        if _metadata_only(n):
            continue  # flags from metadata (see _METADATA_ONLY_RUNTIME)
        hit = set()
        for a in _node_args(n):
            hit |= an.roots.get(a, frozenset()) & targets
        for t in hit:
            reads[t].append(an.pos[n])
    return reads


def _caller_mode(graph: fx.Graph) -> fx.Node:
    """A node holding the caller's grad mode, read once at the top of the graph."""
    for n in graph.nodes:
        if n.op == "call_function" and n.target is torch.is_grad_enabled and not n.args:
            return n
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        return graph.call_function(torch.is_grad_enabled, ())


def _insert_write(graph: fx.Graph, after: fx.Node, make, bracket, mode_from: Any,
                  write_mode: tuple) -> fx.Node:
    """Insert the write built by ``make(at)`` after ``after`` so that it runs exactly as it did
    in the epilogue.

    ``write_mode`` is ``(base, explicit)`` from :func:`_grad_modes`. Emitted::

        _set_grad_enabled(base)       # only if the mode here differs from the epilogue's
        b = begin_write_back(...)     # clone: same decision, same version bookkeeping
        _set_grad_enabled(explicit)   # only if the epilogue switched before this write
        <the write>
        end_write_back(b)             # restores `base`
        _set_grad_enabled(mode_from)  # only if we switched above

    (without a bracket, just the switches around the write). Returns the last node inserted."""
    at = after
    base, explicit = write_mode

    def emit(target, args):
        nonlocal at
        with graph.inserting_after(at):
            at = graph.call_function(target, args)
        return at

    def as_arg(mode):
        return _caller_mode(graph) if mode is CALLER else mode

    switch = mode_from != base
    if switch:
        emit(torch._C._set_grad_enabled, (as_arg(base),))
    if bracket is not None:
        begin, end = bracket
        b = emit(begin.target, begin.args)
        b.meta = copy.copy(begin.meta)
    if explicit is not None:
        emit(torch._C._set_grad_enabled, (as_arg(explicit),))
    at = make(at)
    if bracket is not None:
        e = emit(end.target, fx.map_arg(end.args, lambda a: b if a is begin else a))
        e.meta = copy.copy(end.meta)
    elif explicit is not None:
        emit(torch._C._set_grad_enabled, (as_arg(base),))
    if switch:
        emit(torch._C._set_grad_enabled, (as_arg(mode_from),))
    return at


def _drop_empty_brackets(graph: fx.Graph) -> None:
    """A bracket left with nothing inside is a no-op (mode set, then restored; versions
    recorded, then restored unchanged): remove it."""
    for n in list(graph.nodes):
        if _is_bracket_begin(n):
            end = _bracket_end(n)
            if end is not None and n.next is end and not end.users:
                graph.erase_node(end)
                graph.erase_node(n)


def _copy_candidates(graph: fx.Graph, an: _Analysis, *, plain_only: bool):
    """Epilogue writes ``c`` with their target, where ``c`` is the only write to that target."""
    for c in graph.nodes:
        if c.op != "call_function":
            continue
        is_copy = c.target is _COPY
        if not (is_copy or (not plain_only and _is_write_back(c))):
            continue
        p = c.args[0]
        if not isinstance(p, fx.Node) or p.op not in ("placeholder", "get_attr"):
            continue
        if p.op == "get_attr" and an.has_call_module:
            continue  # a submodule may read the buffer without an edge in this graph
        if an.written.get(p) != [c]:
            continue  # several writes (e.g. a metadata epilogue): keep the emitted order
        if len(c.args) > 2 or c.kwargs:  # copy_(dst, src, non_blocking) is fine only default
            if not (len(c.args) == 3 and c.args[2] is False):
                continue
        yield c, p, c.args[1]


# ----------------------------------------------------------------------------- transforms

def _last_old_read(reads: list[int], limit: int, skip: set[int]) -> int:
    last = -1
    for i in reads:
        if i < limit and i not in skip:
            last = max(last, i)
    return last


def _movable_to(an: _Analysis, after: fx.Node, c: fx.Node) -> bool:
    """A write may land after ``after`` if both grad modes involved are statically known and
    ``after`` is not inside an epilogue bracket (writes there already run as emitted)."""
    if an.mode_after.get(after) is UNKNOWN or not an.known(c):
        return False
    return after not in an.bracket and not _is_bracket_begin(after)


def _early_writeback(gm: fx.GraphModule, records: list[RecoveryRecord]) -> None:
    graph = gm.graph
    an = _analyse(graph)
    cands = list(_copy_candidates(graph, an, plain_only=False))
    if not cands:
        return
    reads = _last_reads(graph, an, {p for _, p, _ in cands})
    nodes = list(graph.nodes)
    written_targets = set(an.written)
    moves = []
    for c, p, v in cands:
        if not isinstance(v, fx.Node):
            continue
        if an.roots.get(v, frozenset()) & written_targets:
            continue  # v aliases a written input: moving c would change what it reads
        pc = an.pos[c]
        anchor = max(an.pos[v], _last_old_read(reads[p], pc, {pc}), an.pos[p])
        if anchor + 1 >= pc or not _movable_to(an, nodes[anchor], c):
            continue
        moves.append((c, p, v, nodes[anchor], pc - anchor - 1))
    # Writes that land after the same node share one bracket, in their original order.
    groups: dict[tuple, list] = {}
    for mv in moves:
        c = mv[0]
        groups.setdefault((mv[3], an.bracket.get(c), an.write_mode[c]), []).append(mv)
    for (after, bracket, write_mode), group in groups.items():

        def make(at, group=group):
            for c, *_ in group:
                at.append(c)
                at = c
            return at

        _insert_write(graph, after, make, bracket, an.mode_after[after], write_mode)
        for c, p, v, _, distance in group:
            records.append(RecoveryRecord(
                "early_writeback", p.name, c.name,
                f"moved {distance} nodes earlier, after {after.name}", _nbytes(_val(v))))
    _drop_empty_brackets(graph)


def _same_layout(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    try:
        return (a.dtype == b.dtype and a.device == b.device and tuple(a.shape) == tuple(b.shape)
                and tuple(a.stride()) == tuple(b.stride()))
    except Exception:
        return False


def _matches_view(node: Any, spec: _ViewScatter, base: fx.Node, view_args: tuple) -> bool:
    """``node`` is ``view(base, *view_args)`` (or its view_copy twin), with defaults filled."""
    if not isinstance(node, fx.Node) or node.target not in (spec.view, spec.view_copy):
        return False
    if node.kwargs or not node.args or node.args[0] is not base:
        return False
    return _norm_args(node.target, node.args[1:]) == _norm_args(spec.view, view_args)


def _norm_args(op: Any, args: tuple) -> tuple:
    """Positional args with schema defaults filled, so slice(x, 0) == slice(x, 0, None, None, 1)."""
    schema_args = op._schema.arguments[1:]
    out = list(args)
    for a in schema_args[len(out):]:
        out.append(a.default_value if a.has_default_value() else object())
    return tuple(out)


def _plan_scatter(s: fx.Node, base: fx.Node, chain: list, leaves: list, dead: list) -> bool:
    """Describe how to run ``s`` (a scatter into ``base``) in place.

    Appends to ``chain`` the view steps from the input to the written region and ends it with the
    final write; ``leaves`` collects the operands the write reads; ``dead`` the nodes that vanish.
    """
    t = s.target
    if t in _VIEW_SCATTERS:
        spec = _VIEW_SCATTERS[t]
        if s.kwargs or len(s.args) < 2:
            return False
        src, view_args = s.args[1], tuple(s.args[2:])
        chain.append(("view", spec.view, view_args, {}))
        # Nested: src = scatter'(view(base, *view_args), src', ...) used only here.
        if (isinstance(src, fx.Node) and len(src.users) == 1
                and (src.target in _VIEW_SCATTERS or _inplace_sibling(src.target) is not None)
                and _matches_view(src.args[0], spec, base, view_args)):
            inner_base = src.args[0]
            dead.append(src)
            if len(inner_base.users) == 1:
                dead.append(inner_base)
            return _plan_scatter(src, inner_base, chain, leaves, dead)
        chain.append(("copy", _COPY, (src,), {}))
        leaves.append(src)
        return True
    sib = _inplace_sibling(t)
    if sib is None or s.kwargs:
        return False
    chain.append(("inplace", sib, tuple(s.args[1:]), {}))
    leaves.extend(a for a in tree_leaves(s.args[1:]) if isinstance(a, fx.Node))
    return True


def _is_old_value_of(node: Any, p: fx.Node) -> bool:
    """``node`` is ``p``'s value on entry: ``p`` itself, or ``fxpurify.runtime.old_value(p, ...)``
    (which is ``p``, or a clone of it when autograd records, so that a tensor saved for backward
    is not changed by the write-back). Either way, a write that produces ``s = op(node, ...)``
    and leaves ``s`` in ``p`` can run as ``op_(p, ...)``: the clone, if one is made, keeps
    serving the other readers of the old value."""
    if node is p:
        return True
    return (isinstance(node, fx.Node) and node.op == "call_function" and bool(node.args)
            and node.args[0] is p and getattr(node.target, "__name__", "") == "old_value"
            and "fxpurify" in getattr(node.target, "__module__", ""))


def _effective_mode(an: _Analysis, c: fx.Node) -> Any:
    """The grad mode the epilogue write ``c`` runs under, when static (else UNKNOWN)."""
    base, explicit = an.write_mode[c]
    if explicit is not None:
        return explicit
    if c not in an.bracket or base is False:  # begin_write_back only ever turns grad off
        return base
    return UNKNOWN


def _plan_chain(s: fx.Node, p: fx.Node, c: fx.Node, an: _Analysis, chain: list, leaves: list,
                dead: list) -> bool:
    """Plan ``op1_(p, ...); op2_(p, ...); ...`` for ``s = op2(op1(old_value(p), ...), ...)``.

    Every link must have an in-place sibling (by schema), be read only by the next link (``s``
    only by its copy into ``p``), keep ``p``'s layout, and have run under the grad mode the
    write runs under — so running the whole chain in place, under that mode, gives ``p`` the
    same values and the same autograd history as computing it out of place and copying it in.
    """
    links = []
    cur = s
    mode = _effective_mode(an, c)
    if mode is UNKNOWN or set(s.users) != {c}:
        return False
    while True:
        if cur.op != "call_function" or not cur.args:
            return False
        sib = _inplace_sibling(cur.target, any_op=True)
        if sib is None or not _same_layout(_val(cur), _val(p)):
            return False
        if an.mode_after.get(cur.prev) != mode:
            return False
        links.append((cur, sib))
        base = cur.args[0]
        if _is_old_value_of(base, p):
            if base is not p and len(base.users) == 1:
                dead.append(base)
            break
        if not (isinstance(base, fx.Node) and base.op == "call_function"
                and set(base.users) == {cur}):
            return False
        cur = base
    for node, sib in reversed(links):
        chain.append(("inplace", sib, tuple(node.args[1:]), dict(node.kwargs)))
        leaves.extend(a for a in tree_leaves((node.args[1:], node.kwargs))
                      if isinstance(a, fx.Node))
        if node is not s:
            dead.append(node)
    return True


def _inplace_scatter(gm: fx.GraphModule, records: list[RecoveryRecord]) -> None:
    graph = gm.graph
    an = _analyse(graph)
    cands = [(c, p, s) for c, p, s in _copy_candidates(graph, an, plain_only=True)
             if isinstance(s, fx.Node) and s.op == "call_function" and s.args]
    if not cands:
        return
    reads = _last_reads(graph, an, {p for _, p, _ in cands})
    nodes = list(graph.nodes)
    written_targets = set(an.written)
    plans = []
    for c, p, s in cands:
        chain: list = []
        leaves: list = []
        dead: list = [s]
        scatter = (s.target in _VIEW_SCATTERS or _inplace_sibling(s.target) is not None)
        if scatter and _is_old_value_of(s.args[0], p):
            if s.args[0] is not p and len(s.args[0].users) == 1:
                dead.append(s.args[0])  # old_value(p) read only by s: gone with it
            if not _plan_scatter(s, s.args[0], chain, leaves, dead):
                continue
        elif not _plan_chain(s, p, c, an, chain, leaves, dead):
            continue
        if not _same_layout(_val(s), _val(p)):
            continue  # shape/dtype/strides differ: readers of s would see another layout
        if any(u.op == "output" for u in s.users):
            continue  # returning p instead of a fresh tensor would alias the caller's input
        if any(an.roots.get(a, frozenset({a})) & written_targets for a in leaves):
            continue  # an operand overlaps a written input (DESIGN pitfall 13)
        pc = an.pos[c]
        skip = {an.pos[d] for d in dead} | {pc}
        anchor = max([_last_old_read(reads[p], pc, skip), an.pos[p]]
                     + [an.pos[a] for a in leaves])
        if any(an.pos[u] <= anchor for u in s.users if u is not c):
            continue  # a reader of the new value sits before the last reader of the old one
        if not _movable_to(an, nodes[anchor], c):
            continue
        plans.append((c, p, s, chain, dead, nodes[anchor]))
    for c, p, s, chain, dead, after in plans:
        new_nodes: list[fx.Node] = []

        def make(at, chain=chain, p=p):
            cur, insert_at = p, at
            for _kind, op, args, kwargs in chain:  # views of p / writes: (target, *args)
                with graph.inserting_after(insert_at):
                    cur = graph.call_function(op, (cur, *args), kwargs)
                insert_at = cur
                new_nodes.append(cur)
            return cur

        _insert_write(graph, after, make, an.bracket.get(c), an.mode_after[after],
                      an.write_mode[c])
        for n in new_nodes:
            n.meta["fxpurify_recover"] = f"in place of {s.name} ({s.target})"
            if "stack_trace" in s.meta:
                n.meta["stack_trace"] = s.meta["stack_trace"]
        _set_val(new_nodes, p)
        c.replace_all_uses_with(p)
        graph.erase_node(c)
        s.replace_all_uses_with(p)
        for d in dead:
            if not d.users:
                graph.erase_node(d)
        records.append(RecoveryRecord(
            "inplace_scatter" if chain[0][0] != "inplace" or _inplace_sibling(s.target)
            or s.target in _VIEW_SCATTERS else "inplace_write", p.name, s.name,
            f"{s.target} -> " + " -> ".join(str(op) for _, op, _, _ in chain),
            _nbytes(_val(p))))
    _drop_empty_brackets(graph)


def _bracket_key(bracket: tuple | None) -> Any:
    if bracket is None:
        return None
    begin, end = bracket
    return (begin.target, repr(begin.args), repr(begin.kwargs), end.target)


def _inplace_foreach(gm: fx.GraphModule, records: list[RecoveryRecord]) -> None:
    """Transform B for ``_foreach_*`` ops: ``outs = _foreach_op([old(p_0), ..., old(p_n)], ...)``
    with every ``outs[i]`` written back into ``p_i`` becomes ``_foreach_op_([p_0, ..., p_n], ...)``
    at the point where the last ``p_i``'s old value is dead (Adam with ``foreach=True``).

    Each element obeys B's conditions (same layout, operands alias no written input, readers of
    the new values all after the write), and the op ran under the grad mode of the writes."""
    graph = gm.graph
    an = _analyse(graph)
    copies = {c: (p, v) for c, p, v in _copy_candidates(graph, an, plain_only=True)}
    groups: dict[fx.Node, dict[int, tuple]] = {}
    for c, (p, v) in copies.items():
        if not (isinstance(v, fx.Node) and v.target is operator.getitem):
            continue
        f = v.args[0]
        if (isinstance(f, fx.Node) and f.op == "call_function"
                and isinstance(f.target, torch._ops.OpOverload)
                and f.target.__name__.startswith("_foreach_") and isinstance(v.args[1], int)):
            groups.setdefault(f, {})[v.args[1]] = (v, c, p)
    if not groups:
        return
    targets = {p for items in groups.values() for _, _, p in items.values()}
    reads = _last_reads(graph, an, targets)
    nodes = list(graph.nodes)
    written_targets = set(an.written)
    plans = []
    for f, items in groups.items():
        sib = _inplace_sibling(f.target, any_op=True)
        bases = f.args[0] if f.args else None
        if sib is None or not isinstance(bases, (list, tuple)) or len(items) != len(bases):
            continue
        ordered = [items.get(i) for i in range(len(bases))]
        if any(x is None for x in ordered):
            continue
        ok = all(_is_old_value_of(bases[i], p) and _same_layout(_val(v), _val(p))
                 for i, (v, c, p) in enumerate(ordered))
        mode = an.mode_after.get(f.prev)
        cs = [c for _, c, _ in ordered]
        ok = ok and all(_effective_mode(an, c) == mode for c in cs) and mode is not UNKNOWN
        # one write for all: the writes' brackets must be interchangeable (same functions and
        # arguments) and start from the same grad mode
        ok = ok and len({(_bracket_key(an.bracket.get(c)), an.write_mode[c]) for c in cs}) == 1
        leaves = [a for a in tree_leaves((f.args[1:], f.kwargs)) if isinstance(a, fx.Node)]
        ok = ok and not any(an.roots.get(a, frozenset({a})) & written_targets for a in leaves)
        if not ok:
            continue
        first_c = min(cs, key=an.pos.get)
        skip = {an.pos[f]} | {an.pos[b] for b in bases} | {an.pos[c] for c in cs}
        anchor = max([_last_old_read(reads[p], an.pos[c], skip) for _, c, p in ordered]
                     + [an.pos[p] for _, _, p in ordered] + [an.pos[a] for a in leaves]
                     + [an.pos[f]])
        if anchor >= an.pos[first_c]:
            continue
        if any(an.pos[u] <= anchor for v, c, _ in ordered for u in v.users if u is not c):
            continue
        if not _movable_to(an, nodes[anchor], first_c):
            continue
        plans.append((f, sib, ordered, nodes[anchor]))
    for f, sib, ordered, after in plans:
        c0 = ordered[0][1]
        ps = [p for _, _, p in ordered]

        def make(at, f=f, sib=sib, ps=ps):
            with graph.inserting_after(at):
                n = graph.call_function(sib, (list(ps), *f.args[1:]), dict(f.kwargs))
            n.meta["fxpurify_recover"] = f"in place of {f.name} ({f.target})"
            return n

        _insert_write(graph, after, make, an.bracket.get(c0), an.mode_after[after],
                      an.write_mode[c0])
        bases = list(f.args[0])
        for v, c, p in ordered:
            c.replace_all_uses_with(p)
            graph.erase_node(c)
            v.replace_all_uses_with(p)
            graph.erase_node(v)
        graph.erase_node(f)
        for b in bases:
            if b.op == "call_function" and not b.users:
                graph.erase_node(b)
        records.append(RecoveryRecord(
            "inplace_write", ",".join(p.name for p in ps[:3]) + ("..." if len(ps) > 3 else ""),
            f.name, f"{f.target} -> {sib} on {len(ps)} inputs",
            sum(_nbytes(_val(p)) for p in ps)))
    _drop_empty_brackets(graph)


def _mode_before(an: _Analysis, n: fx.Node) -> Any:
    """Static grad mode in force when ``n`` runs (skipping nodes added since the analysis)."""
    p = n.prev
    while p.op != "root" and p not in an.mode_after:
        p = p.prev
    return CALLER if p.op == "root" else an.mode_after[p]


def _inplace_temporaries(gm: fx.GraphModule, records: list[RecoveryRecord]) -> None:
    """Transform D: inside a static ``no_grad`` region, ``y = op(x, ...)`` where ``x`` is a fresh
    temporary that nothing reads after ``op`` becomes ``op_(x, ...)`` (Adam's ``denom`` chain).

    Sound because (1) ``x`` owns its storage and no view of it exists (its alias roots are its
    own and no other node has it as a root), so only its own readers could see the write;
    (2) ``op`` is ``x``'s last reader and reads it only as ``self``, so nobody reads the old
    value afterwards and no operand overlaps the write; (3) both ``x``'s creation and ``op`` run
    with grad off (static), so autograd saved neither; (4) same layout, so ``y``'s readers see
    the same strides and dtype. Runs last, after the write-backs have their final places."""
    graph = gm.graph
    an = _analyse(graph)
    pos = an.pos
    aliased = {r for n, rs in an.roots.items() for r in rs if r is not n}
    for n in list(graph.nodes):
        if n.op != "call_function" or not n.args or n.kwargs.get("out") is not None:
            continue
        x = n.args[0]
        if not (isinstance(x, fx.Node) and x.op == "call_function"
                and isinstance(x.target, torch._ops.OpOverload) and not _is_view(x)
                and not x.target._schema.is_mutable and x not in aliased):
            continue
        if _mode_before(an, n) is not False or _mode_before(an, x) is not False:
            continue
        if max(pos.get(u, -1) for u in x.users) != pos[n] or any(
                a is x for a in tree_leaves((n.args[1:], n.kwargs))):
            continue
        sib = _inplace_sibling(n.target, any_op=True)
        if sib is None or not _same_layout(_val(n), _val(x)):
            continue
        with graph.inserting_before(n):
            new = graph.call_function(sib, n.args, dict(n.kwargs))
        new.meta = copy.copy(n.meta)
        new.meta["fxpurify_recover"] = f"in place of {n.name} ({n.target})"
        n.replace_all_uses_with(x)  # op_ returns self: readers of y now read x, which is y
        graph.erase_node(n)
        pos[new] = pos[n]
        records.append(RecoveryRecord("inplace_temp", x.name, n.name, f"{n.target} -> {sib}",
                                      _nbytes(_val(x))))


def _set_val(new_nodes: list[fx.Node], p: fx.Node) -> None:
    """Carry fake values onto the new nodes where cheap: the final write returns its target."""
    pv = _val(p)
    if new_nodes and pv is not None and new_nodes[0].target not in (
            aten.slice.Tensor, aten.select.int, aten.diagonal.default):
        new_nodes[-1].meta["val"] = pv


# ----------------------------------------------------------------------------- public API

def recover_memory(pure_gm: fx.GraphModule, *, early_writeback: bool = True,
                   inplace_scatter: bool = True) -> fx.GraphModule:
    """Return a new ``GraphModule`` that runs ``pure_gm`` with less memory.

    ``early_writeback``: transform A; ``inplace_scatter``: transforms B, B' and D (final scatters,
    elementwise chains and ``_foreach_*`` ops whose result is written back run in place on the
    input; temporaries in ``no_grad`` regions are reused).

    The input is never modified (nodes are copied into a new graph that shares the module's
    parameters and buffers, and keeps its codegen). ``inplace_scatter`` runs first, so the write
    it makes in place is not also moved by ``early_writeback``. What was done is listed in
    ``result.meta["fxpurify_recover"]`` (:class:`RecoveryRecord` rows; see :func:`records_of`).
    """
    graph = fx.Graph(owning_module=None, tracer_cls=pure_gm.graph._tracer_cls)
    graph._codegen = copy.copy(pure_gm.graph._codegen)  # codegen is read-only in use
    val_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(pure_gm.graph, val_map, return_output_node=True)
    out_node = out[1] if isinstance(out, tuple) else None
    if out_node is not None:
        new_out = graph.output(out[0], type_expr=out_node.type)
        new_out.meta = copy.copy(out_node.meta)
    else:
        graph.output(out)
    gm = fx.GraphModule(pure_gm, graph, class_name=type(pure_gm).__name__)
    gm.meta = dict(getattr(pure_gm, "meta", {}))
    records: list[RecoveryRecord] = []
    if inplace_scatter:
        _inplace_scatter(gm, records)
        _inplace_foreach(gm, records)
    if early_writeback:
        _early_writeback(gm, records)
    if inplace_scatter:
        _inplace_temporaries(gm, records)
    gm.graph.lint()
    gm.recompile()
    gm.meta["fxpurify_recover"] = records
    log.info("recover_memory: %d rewrites (%s)", len(records),
             ", ".join(f"{r.kind}:{r.input}" for r in records) or "none")
    return gm


def records_of(gm: fx.GraphModule) -> list[RecoveryRecord]:
    """The rewrites :func:`recover_memory` made on ``gm`` (empty if none / not recovered)."""
    return list(getattr(gm, "meta", {}).get("fxpurify_recover", []))


def allocated_bytes(gm: fx.GraphModule) -> int:
    """Bytes of fresh storage the graph's nodes allocate in one call (cumulative).

    Views, in-place ops and copies into existing tensors allocate nothing; every other ATen
    result allocates ``nbytes`` of its ``meta["val"]``. Needs ``meta["val"]`` (nodes without it
    count 0). This is the static counterpart of ``memory.MemoryStats.total``.
    """
    total = 0
    roots = _alias_roots(gm.graph)
    for n in gm.graph.nodes:
        if n.op != "call_function" or roots.get(n) != frozenset({n}):
            continue
        if n.target is operator.getitem:
            continue  # counted on the multi-output op itself
        total += _nbytes(_val(n))
    return total


def extra_bytes(pure_gm: fx.GraphModule, original: fx.GraphModule | None = None) -> int:
    """Bytes the pure form allocates beyond the in-place original, for one call of the graph.

    With ``original`` (the mutating graph that was purified): ``allocated_bytes(pure_gm) -
    allocated_bytes(original)`` — the exact static difference, since in-place ops allocate
    nothing and their functional replacements allocate their full result.

    Without it, a lower bound read off the pure graph alone: the bytes of every value written
    back into an input (each one is a full-size buffer the in-place program never needed), plus
    the nested view-scatter results feeding them.
    """
    if original is not None:
        return allocated_bytes(pure_gm) - allocated_bytes(original)
    total = 0
    seen: set[fx.Node] = set()
    for n in pure_gm.graph.nodes:
        if n.op == "call_function" and (n.target is _COPY or _is_write_back(n)):
            stack = [n.args[1]] if len(n.args) > 1 else []
            while stack:
                v = stack.pop()
                if not isinstance(v, fx.Node) or v in seen or v.op != "call_function":
                    continue
                seen.add(v)
                if _is_view(v):
                    continue
                total += _nbytes(_val(v))
                if v.target in _VIEW_SCATTERS and len(v.args) > 1:
                    stack.append(v.args[1])
    return total
