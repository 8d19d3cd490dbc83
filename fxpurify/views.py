"""Rewrite helpers: replaying a view and writing a value back through it.

A *view step* is one view op applied to a base (``slice(dim=0, 1, 3)``, ``t()``, the ``i``-th
output of ``split``). A tensor of the original program is a storage *root* plus a path of steps;
its current value is the root's current value with the path replayed, and writing a value ``v``
to it means computing the root's new value by running the path backwards through the *inverse*
of each step:

=========================  ==========================================================
view step                   inverse: new base from (base, value)
=========================  ==========================================================
slice / narrow / split[i]   ``slice_scatter(base, value, dim, start, end, step)``
select / unbind[i]          ``select_scatter(base, value, dim, index)``
diagonal                    ``diagonal_scatter(base, value, offset, dim1, dim2)``
full-coverage views         the opposite view of ``value`` (``t`` ↔ ``t``, ``permute`` ↔ its
                            inverse permutation, ``unsqueeze`` ↔ ``squeeze``, ``view`` ↔ ``view``
                            to the base's sizes, ``alias``/``detach`` ↔ identity, ...)
unfold (no overlap)         ``index_put`` of the windows at ``start_i + j`` along the dim
anything else (as_strided)  ``index_put`` at the view's flat storage positions, only when the
                            base is contiguous with the original base's exact storage layout;
                            otherwise the write is refused, never guessed (#104505). Not
                            ``as_strided_scatter``: its gradient w.r.t. the base is wrong in 2.13
=========================  ==========================================================

Every inverse is exact: the scatter ops write precisely the elements the view covers, and a
full-coverage view is a bijection between base and view elements. Writes into a view whose
elements overlap (``expand``, overlapping ``unfold``/``as_strided``) are refused: eager itself
rejects most of them and no value semantics exists for the rest.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx

from .errors import UnsupportedError
from .ops import bind_args

aten = torch.ops.aten


@dataclass(frozen=True)
class ViewStep:
    """One view op applied to a base. Equal steps on equal bases give the same view, which is
    what lets the rewrite share regenerated views instead of emitting duplicates."""

    op: Any
    args: tuple             # arguments after the base, already in the new graph
    kwargs: tuple           # sorted (name, value) pairs
    index: Optional[int] = None          # which output of a multi-output view
    source: torch.fx.Node = field(default=None, compare=False, hash=False)   # original node
    base_val: Any = field(default=None, compare=False, hash=False)           # original base's fake value

    def bound(self, base) -> dict:
        return bind_args(self.op, (base,) + self.args, dict(self.kwargs))

    @property
    def val(self):
        return self.source.meta.get("val") if self.source is not None else None


def freeze(value):
    """Lists to tuples, recursively, so steps can be dictionary keys."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


# Multi-output views whose outputs are consecutive pieces of ``self`` along ``dim``.
CONSECUTIVE_PIECES = {"aten::split", "aten::split_with_sizes", "aten::chunk", "aten::tensor_split",
                      "aten::unsafe_split", "aten::unsafe_split_with_sizes", "aten::unsafe_chunk"}


def single_output_step(op, args: tuple, kwargs: tuple, index: int, source, base_val) -> ViewStep:
    """The ``index``-th output of a multi-output view as a single-output view where that is
    static: ``split``/``split_with_sizes`` → ``slice``, ``unbind`` → ``select``. Fewer nodes,
    and autograd forbids in-place writes to a base whose multi-output views are still used
    (a write-back after returning ``x.split(...)[0]`` would break backward)."""
    b = bind_args(op, (None,) + args, dict(kwargs))
    if op._schema.name in CONSECUTIVE_PIECES:
        pieces = source.args[0].meta.get("val") if isinstance(source.args[0], torch.fx.Node) else None
        dim = b.get("dim", 0)
        if isinstance(pieces, (list, tuple)) and isinstance(dim, int):
            sizes = [p.shape[dim] for p in pieces]
            if _concrete(sizes):
                start = sum(sizes[:index])
                return ViewStep(aten.slice.Tensor, (dim, start, start + sizes[index]), (), None, source, base_val)
    if op is aten.unbind.int:
        return ViewStep(aten.select.int, (b["dim"], index), (), None, source, base_val)
    return ViewStep(op, args, kwargs, index, source, base_val)


def from_storage(path: tuple) -> tuple:
    """``path`` with everything up to its last ``as_strided`` replaced by that one step taken
    from the root: ``as_strided`` addresses storage, so what it selects does not depend on the
    views before it (and may lie outside them, which a chain of steps cannot express)."""
    last = max((i for i, step in enumerate(path) if step.op is aten.as_strided.default), default=0)
    if last == 0:
        return path
    step = path[last]
    direct = (ViewStep(step.op, step.args, step.kwargs, None, source=step.source, base_val=path[0].base_val),)
    if any(s.op is aten.detach.default for s in path[:last]):   # still no autograd history
        direct += (ViewStep(aten.detach.default, (), (), None, source=step.source, base_val=step.val),)
    return direct + path[last + 1:]


def sizes_of(emitter, node: torch.fx.Node) -> list:
    """The sizes of ``node`` as graph arguments: ints, or ``sym_size`` nodes for symbolic dims
    (a SymInt object must never be baked into a node's arguments)."""
    val = node.meta["val"]
    out = []
    for d, s in enumerate(val.shape):
        if isinstance(s, torch.SymInt):
            hint = s.node.maybe_as_int() if hasattr(s.node, "maybe_as_int") else None
            out.append(hint if hint is not None else emitter.call(aten.sym_size.int, (node, d)))
        else:
            out.append(int(s))
    return out


def known_equal(a, b) -> bool:
    """``a == b`` for ints or SymInts, True only when provably so. Never adds a guard to the
    shape environment (a guard could specialize the caller's symbolic graph)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    return statically_known_true(a == b)


def same_shape(a, b) -> bool:
    return len(a) == len(b) and all(known_equal(x, y) for x, y in zip(a, b))


def is_static(val) -> bool:
    return all(isinstance(s, int) for s in (*val.shape, *val.stride(), val.storage_offset()))


def _hint(x):
    """An int, or a SymInt's value in the traced example (the overlap pattern of a view does not
    depend on the particular sizes), or None."""
    if isinstance(x, int):
        return x
    hint = getattr(x.node, "hint", None)
    return int(hint) if hint is not None else None


def may_overlap(val) -> bool:
    """True unless ``val``'s elements provably occupy distinct memory (static sizes/strides).

    The classic sufficient test: visiting dims by increasing stride, each stride must step over
    everything the smaller dims span. ``torch._debug_has_internal_overlap`` answers "too hard"
    for fake tensors, so the check is done here."""
    sizes, strides = [_hint(x) for x in val.shape], [_hint(x) for x in val.stride()]
    if None in sizes or None in strides:
        return False
    dims = sorted((st, sz) for sz, st in zip(sizes, strides) if sz > 1)
    span = 0
    for stride, size in dims:
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def may_share_elements(a, b, limit: int = 1 << 20) -> bool:
    """Whether two views of one storage may have an element in common: by their memory ranges,
    then (static and small enough) exactly, by enumerating the storage positions of each."""
    metas = [(a.shape, a.stride(), a.storage_offset()), (b.shape, b.stride(), b.storage_offset())]
    hinted = [([_hint(x) for x in sh], [_hint(x) for x in st], _hint(off)) for sh, st, off in metas]
    if any(None in sh or None in st or off is None for sh, st, off in hinted):
        return True
    if any(0 in sh for sh, _, _ in hinted):
        return False
    bounds = [(off + sum(min(0, (n - 1) * k) for n, k in zip(sh, st)),
               off + sum(max(0, (n - 1) * k) for n, k in zip(sh, st))) for sh, st, off in hinted]
    (lo_a, hi_a), (lo_b, hi_b) = bounds
    if hi_a < lo_b or hi_b < lo_a:
        return False
    top = max(hi_a, hi_b) + 1
    if top > limit or min(lo_a, lo_b) < 0:
        return True
    flat = torch.arange(top)
    positions = [torch.as_strided(flat, sh, st, off) for sh, st, off in hinted]
    return bool(torch.isin(positions[0].reshape(-1), positions[1].reshape(-1)).any())


def same_metadata(a, b, offset: bool = True) -> bool:
    """Same dtype, sizes, strides (and offset): a view replayed on ``a`` has the metadata the
    original view had on ``b``."""
    if a is b:
        return True
    if a is None or b is None or a.dtype != b.dtype or a.device != b.device:
        return False
    return (same_shape(a.shape, b.shape) and same_shape(a.stride(), b.stride())
            and (not offset or known_equal(a.storage_offset(), b.storage_offset())))


def is_dense(val) -> bool:
    from torch._prims_common import is_non_overlapping_and_dense_or_false
    return is_non_overlapping_and_dense_or_false(val)


def owns_storage_densely(val) -> bool:
    """``val`` fills its whole storage without gaps or overlap, from offset 0: a fresh tensor
    computed from it by a layout-preserving op has exactly its metadata."""
    from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense
    return (known_equal(val.storage_offset(), 0) and is_non_overlapping_and_dense(val)
            and known_equal(val.untyped_storage().nbytes(), val.numel() * val.element_size()))


def layout_matches(current, original) -> bool:
    """True when ``current`` sits in its storage exactly as ``original`` did in its own, so
    storage-relative views (``as_strided``) select the same elements from either."""
    return (same_shape(current.shape, original.shape)
            and same_shape(current.stride(), original.stride())
            and known_equal(current.storage_offset(), original.storage_offset())
            and known_equal(current.untyped_storage().nbytes(), original.untyped_storage().nbytes()))


def _concrete(values) -> bool:
    return all(isinstance(v, int) for v in values)


def _view_back(emitter, step, base, value):
    return emitter.view_or_reshape(value, sizes_of(emitter, base), origin=step.source)


def _inverse_permutation(dims):
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d % len(dims)] = i
    return inverse


def _slice(e, step, base, value):
    b = step.bound(base)
    return e.call(aten.slice_scatter.default, (base, value, b["dim"], b["start"], b["end"], b["step"]),
                  origin=step.source)


def _narrow(e, step, base, value):
    b = step.bound(base)
    start, length = b["start"], b["length"]
    if not (isinstance(start, int) and isinstance(length, int)):
        return _as_strided_fallback(e, step, base, value)
    return e.call(aten.slice_scatter.default, (base, value, b["dim"], start, start + length), origin=step.source)


def _select(e, step, base, value):
    b = step.bound(base)
    return e.call(aten.select_scatter.default, (base, value, b["dim"], b["index"]), origin=step.source)


def _diagonal(e, step, base, value):
    b = step.bound(base)
    return e.call(aten.diagonal_scatter.default, (base, value, b["offset"], b["dim1"], b["dim2"]),
                  origin=step.source)


def _sym_mul(e, a, k):
    return a * k if isinstance(a, int) else e.call(operator.mul, (a, k), origin=None)


def _sym_add(e, a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return e.call(operator.add, (a, b))


def _split(e, step, base, value):
    b = step.bound(base)
    size, dim, i = b["split_size"], b["dim"], step.index
    start, end = _sym_mul(e, size, i), _sym_mul(e, size, i + 1)
    return e.call(aten.slice_scatter.default, (base, value, dim, start, end), origin=step.source)


def _split_with_sizes(e, step, base, value):
    b = step.bound(base)
    sizes = list(b["split_sizes"])
    start = 0
    for s in sizes[: step.index]:
        start = _sym_add(e, start, s)
    end = _sym_add(e, start, sizes[step.index])
    return e.call(aten.slice_scatter.default, (base, value, b["dim"], start, end), origin=step.source)


def _unbind(e, step, base, value):
    b = step.bound(base)
    return e.call(aten.select_scatter.default, (base, value, b["dim"], step.index), origin=step.source)


def _permute(e, step, base, value):
    return e.call(aten.permute.default, (value, _inverse_permutation(list(step.bound(base)["dims"]))),
                  origin=step.source)


def _transpose(e, step, base, value):
    b = step.bound(base)
    return e.call(aten.transpose.int, (value, b["dim0"], b["dim1"]), origin=step.source)


def _t(e, step, base, value):
    return e.call(aten.t.default, (value,), origin=step.source)


def _unsqueeze(e, step, base, value):
    return e.call(aten.squeeze.dim, (value, step.bound(base)["dim"]), origin=step.source)


def _identity(e, step, base, value):
    return value


def _view_as_real(e, step, base, value):
    return e.call(aten.view_as_complex.default, (value,), origin=step.source)


def _view_as_complex(e, step, base, value):
    return e.call(aten.view_as_real.default, (value,), origin=step.source)


def _view_dtype(e, step, base, value):
    return e.call(aten.view.dtype, (value, base.meta["val"].dtype), origin=step.source)


def _real_or_imag(part):
    def inverse(e, step, base, value):
        as_real = e.call(aten.view_as_real.default, (base,), origin=step.source)
        updated = e.call(aten.select_scatter.default, (as_real, value, -1, part), origin=step.source)
        return e.call(aten.view_as_complex.default, (updated,), origin=step.source)
    return inverse


def _as_strided_fallback(e, step, base, value):
    """Write through any view by its storage coordinates. Sound only when ``base`` occupies its
    storage exactly as the original base did (same sizes, strides, offset, storage size):
    then the view's recorded size/stride/offset address the same elements of it."""
    child = step.val
    if child is None or step.base_val is None or not layout_matches(base.meta["val"], step.base_val):
        raise UnsupportedError(
            f"cannot write through {step.op} here: the base no longer has the memory layout the view "
            "was taken from (a stride-sensitive view after a mutation changed strides)",
            step.source, pattern="stride-sensitive-write",
            hint="take the view from a contiguous tensor, or write with an explicit index op "
                 "(index_put_/slice assignment) instead of through this view")
    size, stride, offset = list(child.shape), list(child.stride()), child.storage_offset()
    if not (_concrete(size) and _concrete(stride) and isinstance(offset, int)):
        raise UnsupportedError(f"cannot write through {step.op} with symbolic sizes or strides", step.source,
                               pattern="symbolic-as-strided-write",
                               hint="trace with static shapes, or write with slicing/index ops")
    base_val = base.meta["val"]
    perm = None
    if not base_val.is_contiguous() and is_static(base_val) and owns_storage_densely(base_val):
        # Dense in another dimension order (e.g. transposed): its permutation into memory order
        # is its storage laid flat.
        perm = e._memory_order(base_val, step.source)
        base = e.call(aten.permute.default, (base, perm), origin=step.source)
        base_val = base.meta["val"]
    if not base_val.is_contiguous() or not isinstance(base_val.storage_offset(), int):
        raise UnsupportedError(f"cannot write through {step.op} into a non-contiguous tensor", step.source,
                               pattern="stride-sensitive-write",
                               hint="make the tensor contiguous before taking this view, or write "
                                    "with slicing/index ops")
    # Not as_strided_scatter: its derivative w.r.t. the base is wrong in torch 2.13. A contiguous
    # base is its storage laid flat, so the view's elements are the flat positions
    # offset + sum_i arange(size_i) * stride_i (distinct: overlapping writes were refused),
    # and index_put writes them exactly, with correct gradients.
    device = base_val.device
    index = offset - base_val.storage_offset()
    for d, (n, st) in enumerate(zip(size, stride)):
        steps = e.call(aten.arange.default, (n,), {"dtype": torch.long, "device": device})
        term = e.call(aten.view.default, (e.call(aten.mul.Tensor, (steps, st)),
                                          [n if i == d else 1 for i in range(len(size))]))
        index = term if isinstance(index, int) and index == 0 and d == 0 else e.call(aten.add.Tensor, (term, index))
    if isinstance(index, int):   # 0-dim view: a single position
        index = e.call(aten.scalar_tensor.default, (index,), {"dtype": torch.long, "device": device})
    flat = e.call(aten.view.default, (base, [-1]))
    written = e.call(aten.index_put.default, (flat, [index], value), origin=step.source)
    written = e.call(aten.view.default, (written, sizes_of(e, base)), origin=step.source)
    if perm is not None:
        written = e.call(aten.permute.default, (written, _inverse_permutation(perm)), origin=step.source)
    return written


def _unfold(e, step, base, value):
    """``unfold(d, size, step)`` with windows that do not overlap (gaps allowed): scatter the
    windows back with ``index_put`` at indices ``start_i + j`` along ``d``. Exact and
    layout-independent, unlike storage coordinates (pytorch/pytorch#198102 zero-fills gaps)."""
    b = step.bound(base)
    base_val = base.meta["val"]
    if base_val.dim() == 0:
        return _as_strided_fallback(e, step, base, value)
    d, size, stride = b["dimension"] % base_val.dim(), b["size"], b["step"]
    n = sizes_of(e, value)[d]
    device = base_val.device
    starts = e.call(aten.mul.Tensor, (e.call(aten.arange.default, (n,), {"dtype": torch.long, "device": device}),
                                      stride))
    offsets = e.call(aten.arange.default, (size,), {"dtype": torch.long, "device": device})
    index = e.call(aten.add.Tensor, (e.call(aten.unsqueeze.default, (starts, 1)),
                                     e.call(aten.unsqueeze.default, (offsets, 0))))
    moved_base = e.call(aten.movedim.int, (base, d, 0))
    moved_value = e.call(aten.movedim.intlist, (value, [d, base_val.dim()], [0, 1]))
    updated = e.call(aten.index_put.default, (moved_base, [index], moved_value), origin=step.source)
    return e.call(aten.movedim.int, (updated, 0, d), origin=step.source)


INVERSES = {
    aten.unfold.default: _unfold,
    aten.slice.Tensor: _slice,
    aten.narrow.default: _narrow,
    aten.select.int: _select,
    aten.diagonal.default: _diagonal,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split_with_sizes,
    aten.unbind.int: _unbind,
    aten.permute.default: _permute,
    aten.transpose.int: _transpose,
    aten.t.default: _t,
    aten.unsqueeze.default: _unsqueeze,
    aten.alias.default: _identity,
    aten.detach.default: _identity,
    aten.lift_fresh.default: _identity,
    aten.contiguous.default: _identity,   # only reached when it aliased: then it changed nothing
    aten.view_as_real.default: _view_as_real,
    aten.view_as_complex.default: _view_as_complex,
    aten.view.dtype: _view_dtype,
    aten.real.default: _real_or_imag(0),
    aten.imag.default: _real_or_imag(1),
}
for _op in (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten._reshape_alias.default,
            aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.flatten.using_ints,
            aten.unflatten.int, aten.view_as.default, aten.reshape_as.default):
    INVERSES[_op] = _view_back
for _name in ("to",):
    for _ov in getattr(aten, _name).overloads():
        INVERSES[getattr(getattr(aten, _name), _ov)] = _identity   # aliased `to` is the identity
INVERSES[aten.swapaxes.default] = lambda e, s, b, v: e.call(
    aten.transpose.int, (v, s.bound(b)["axis0"], s.bound(b)["axis1"]), origin=s.source)
INVERSES[aten.swapdims.default] = lambda e, s, b, v: e.call(
    aten.transpose.int, (v, s.bound(b)["dim0"], s.bound(b)["dim1"]), origin=s.source)
INVERSES[aten.movedim.int] = lambda e, s, b, v: e.call(
    aten.movedim.int, (v, s.bound(b)["destination"], s.bound(b)["source"]), origin=s.source)


SCATTERS = {aten.slice_scatter.default, aten.select_scatter.default, aten.diagonal_scatter.default,
            aten.as_strided_scatter.default}


def inverse(emitter, step: ViewStep, base: torch.fx.Node, value: torch.fx.Node) -> torch.fx.Node:
    """The new value of ``base`` after ``value`` is written into ``step(base)``."""
    return INVERSES.get(step.op, _as_strided_fallback)(emitter, step, base, value)


def scatter_value(base_val):
    """Fake value of ``*_scatter(base, ...)``: the scatter ops clone ``base`` preserving its
    strides and offset, so the result has exactly the base's metadata."""
    return base_val
