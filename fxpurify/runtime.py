"""Functions the emitted pure graphs call at run time.

They are kept tiny: they run on every call of a purified graph. Both are marked
``_fxpurify_side_effect`` so dead-code elimination keeps them.
"""
from __future__ import annotations

import torch

from .errors import AliasedInputsError


def check_inputs_not_aliased(names: tuple, mutated: tuple, *inputs) -> None:
    """Refuse a call where a mutated input shares memory with another input.

    The graph was traced with these inputs in separate memory, so its write-backs assume that
    writing one leaves the others unchanged (pytorch/pytorch#198095, #139789). Cheap: compares
    storage pointers of the few mutated inputs against all others."""
    ptrs = [t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() else None
            for t in inputs]
    for i in mutated:
        p = ptrs[i]
        if p is None:
            continue
        for j, q in enumerate(ptrs):
            if j != i and q == p:
                raise AliasedInputsError(
                    f"inputs '{names[i]}' and '{names[j]}' share memory, but the purified graph writes "
                    f"'{names[i]}' and was traced with them separate; its result would be wrong",
                    hint="pass separate tensors (e.g. .clone() one of them), or purify a graph traced "
                         "with these aliased inputs")


check_inputs_not_aliased._fxpurify_side_effect = True


def begin_write_back(mutated_inputs: tuple, hidden_only: tuple = ()) -> tuple:
    """Prepare the write-backs; the token it returns goes to ``end_write_back``.

    Grad mode: a leaf that requires grad can only have been mutated under ``no_grad`` (an
    optimizer step: eager forbids anything else), so when one is among the inputs written back,
    the writes run with grad off. Otherwise grad mode stays as the caller has it, so a non-leaf
    input's autograd history is rebased exactly as eager's in-place op rebased it. (A graph
    that writes both kinds writes all under no_grad: the non-leaf then keeps its old history.)

    Version counters: inputs written *only* by hidden writes (train-mode batch norm's running
    statistics) keep their version, as eager's kernel left it: autograd saved them for backward,
    and a bump would make ``backward()`` fail the version check."""
    was = torch.is_grad_enabled()
    if was and any(t.is_leaf and t.requires_grad for t in mutated_inputs if isinstance(t, torch.Tensor)):
        torch._C._set_grad_enabled(False)
    return was, hidden_only, tuple(t._version for t in hidden_only)


def end_write_back(token: tuple) -> None:
    was, hidden_only, versions = token
    if hidden_only:
        torch._C._autograd._unsafe_set_version_counter(hidden_only, versions)
    torch._C._set_grad_enabled(was)


begin_write_back._fxpurify_side_effect = True
end_write_back._fxpurify_side_effect = True


def autograd_active(*inputs: torch.Tensor) -> bool:
    """Whether this call can build an autograd graph at all: some input requires grad."""
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)


def old_value(x: torch.Tensor, active: bool) -> torch.Tensor:
    """The value an input had on entry, for a graph that writes it back later.

    Cloned only when autograd is recording here (grad mode on and ``autograd_active``): then
    some op may save it for backward, and the write-back must not change what it saved.
    Otherwise the input itself, at no cost (inference, optimizer steps under no_grad, KV-cache
    decode).

    The clone keeps ``x``'s place in its storage (sizes, strides, offset, storage size), so
    storage-relative views of the old value (``as_strided``) select the elements they select
    in ``x``; for a gapped or offset ``x`` that means cloning its whole storage."""
    if not (active and torch.is_grad_enabled()):
        return x
    from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense
    storage_numel = x.untyped_storage().nbytes() // x.element_size()
    if x.storage_offset() == 0 and storage_numel == x.numel() and is_non_overlapping_and_dense(x):
        return x.clone(memory_format=torch.preserve_format)
    whole = x.as_strided((storage_numel,), (1,), 0).clone()
    return whole.as_strided(x.shape, x.stride(), x.storage_offset())


class _KeepHistory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, new, old, as_view):
        # as_view: a view with new's exact sizes and strides (an output that must alias an input)
        return torch.ops.aten.alias.default(new) if as_view else new.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, grad, None


def keep_autograd_history(new: torch.Tensor, old: torch.Tensor, as_view: bool = False) -> torch.Tensor:
    """``new``'s values with ``old``'s autograd history: what a tensor that requires grad holds
    after an in-place write under ``no_grad`` (eager leaves its ``grad_fn`` as it was), or a
    ``detach()``ed alias after a write with grad on (``as_view``: for an output that must alias
    an input)."""
    if torch.is_grad_enabled() and old.requires_grad:
        return _KeepHistory.apply(new, old, as_view)
    return new


class _CopyInto(torch.autograd.Function):
    @staticmethod
    def forward(ctx, template, value):
        return torch.ops.aten.copy.default(template, value)

    @staticmethod
    def backward(ctx, grad):
        return None, grad


def copy_into(template: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (broadcast) in a new tensor laid out like ``template`` (sizes, strides, offset,
    gaps): the pure form of ``copy_`` into a freshly allocated strided tensor. ``aten.copy`` has
    no derivative; the gradient is the identity to ``value`` (summed over broadcast dims)."""
    if torch.is_grad_enabled() and value.requires_grad:
        return _CopyInto.apply(template, value.expand(template.shape))
    return torch.ops.aten.copy.default(template, value)


def version_of(x: torch.Tensor) -> int:
    return x._version


def restore_version(x: torch.Tensor, version: int) -> None:
    """Set ``x``'s version counter back (after a metadata-only epilogue: no data changed)."""
    torch._C._autograd._unsafe_set_version_counter((x,), (version,))


restore_version._fxpurify_side_effect = True
