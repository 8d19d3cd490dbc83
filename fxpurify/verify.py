"""The differential oracle: run a reference and a candidate on identical inputs, compare everything
a caller can observe.

This module sits *beside* the pipeline (capture → analyze → rewrite → clean up → emit → report):
it never looks inside a graph. It is what the tests, the CLI and the fuzzer use to decide whether
a purified program is equivalent to the program it came from. "Equivalent" means, for the same
inputs and the same RNG seed:

1. **outputs** — same pytree structure (lists and tuples are not distinguished, because a
   GraphModule's codegen may return either), same dtype, shape and values (``assert_close`` with
   ``equal_nan`` for floating/complex, exact for integers and bools), same ``requires_grad``;
2. **final state of every input** — in-place writes into inputs (the epilogue ``copy_`` of a
   purified graph) and metadata mutations (``transpose_`` on an input) are caller-visible, so
   values, shape, strides and storage offset of each input after the call must match;
3. **gradients** — backward of one deterministic weighted sum of every floating output that
   requires grad (and of the final value of every non-leaf input that requires grad, so the
   autograd history of a write-back is checked too), then ``.grad`` of every input leaf, of the
   hidden leaf behind each non-leaf input, and of every module parameter;
4. **output aliasing** — for each output, the set of inputs it shares storage with (by
   ``untyped_storage().data_ptr()``); an output that was a view of an input must still be one,
   and one that was fresh must not suddenly alias an input.

Why clone inputs this carefully: the reference and the candidate each get their *own* copy of
the inputs, because both mutate them. A naive ``x.clone()`` would silently change what is being
tested: it drops strides of non-dense tensors and storage offsets, turns views into leaves, and —
worst — breaks aliasing *between* inputs, which is exactly the case where functionalization is
hardest (pytorch/pytorch#198095, #139789). So :func:`clone_inputs` clones each underlying storage
once and re-creates every tensor on it with ``set_`` at its original size/stride/offset, then
rebuilds autograd structure (leaves stay leaves; non-leaf inputs that require grad become views
of one hidden leaf, so in-place ops on them are legal exactly as they were on the originals).

RNG: the global generators are reseeded with the same seed before each run (inside
``torch.random.fork_rng`` so the caller's RNG stream is left untouched), so random ops compare
bit-exactly when the candidate consumes the RNG the way eager does.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any, Callable, Sequence

import torch
import torch.utils._pytree as pytree

log = logging.getLogger(__name__)

__all__ = [
    "VerificationError", "Comparison", "compare_with_eager", "compare_module_with_eager",
    "clone_inputs",
]


class VerificationError(AssertionError):
    """The candidate is observably different from the reference.

    An ``AssertionError`` so that pytest shows it as a test failure, not an error. ``mismatches``
    holds one line per difference found (all of them, not only the first).
    """

    def __init__(self, mismatches: Sequence[str], summary: "Comparison | None" = None):
        self.mismatches = list(mismatches)
        self.summary = summary
        lines = "\n".join(f"  - {m}" for m in self.mismatches)
        super().__init__(f"candidate differs from the reference ({len(self.mismatches)} "
                         f"mismatch{'es' if len(self.mismatches) != 1 else ''}):\n{lines}")


@dataclasses.dataclass
class Comparison:
    """What was compared (returned on success, attached to a :class:`VerificationError`).

    ``aliasing`` maps output index → sorted input indices the output shares storage with
    (only outputs that alias some input are listed). ``notes`` says what could *not* be compared
    and why (e.g. eager backward raised), so a green result never hides a skipped check.
    """

    outputs: int = 0
    inputs_state: int = 0
    grads: list[str] = dataclasses.field(default_factory=list)
    aliasing: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    reference_backward_error: str | None = None
    candidate_backward_error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def grads_compared(self) -> bool:
        return bool(self.grads)

    def __str__(self) -> str:
        parts = [f"{self.outputs} outputs", f"{self.inputs_state} input states",
                 f"{len(self.grads)} grads", f"{len(self.aliasing)} aliased outputs"]
        s = "compared " + ", ".join(parts) + f" (seed {self.seed})"
        if self.notes:
            s += "; " + "; ".join(self.notes)
        return s


# --------------------------------------------------------------------------------------------
# cloning inputs, aliasing and autograd structure preserved
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Cloned:
    """One side's copy of the inputs, plus the leaves whose ``.grad`` is compared."""

    inputs: list[Any]
    grad_leaves: dict[str, torch.Tensor]     # name -> leaf (input leaves and hidden leaves)
    retained: dict[str, torch.Tensor]        # name -> non-leaf input (its final value joins the loss)


def _storage_key(t: torch.Tensor):
    """Identity of a tensor's storage; ``None`` when it cannot alias anything we can see."""
    if t.layout != torch.strided or t.device.type == "meta":
        return None
    st = t.untyped_storage()
    if st.nbytes() == 0:
        return None
    return (t.device, st.data_ptr())


def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (some permutation of a contiguous layout): ``clone()`` with
    ``preserve_format`` then keeps its strides exactly."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _on_storage(storage: torch.UntypedStorage, like: torch.Tensor) -> torch.Tensor:
    """A plain tensor with ``like``'s dtype/size/stride/offset over ``storage`` (no autograd)."""
    t = torch.empty(0, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        t.set_(storage, like.storage_offset(), like.size(), like.stride())
    return t


def _keep_type(orig: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if isinstance(orig, torch.nn.Parameter):
        return torch.nn.Parameter(t, requires_grad=orig.requires_grad)
    return t


def clone_inputs(inputs: Sequence[Any]) -> _Cloned:
    """Deep-clone ``inputs`` preserving dtype, layout, leafness, ``requires_grad`` and aliasing.

    Per storage group (tensors sharing one storage): the storage is cloned once and every
    member is re-created on it with ``set_``. Then autograd structure:

    - a leaf that requires grad stays a leaf (``requires_grad_()`` on the re-created tensor);
    - a non-leaf that requires grad and is no view (``leaf * 1``) becomes ``hidden.clone()`` of
      a hidden leaf with its layout; one that is a view, or shares storage with other inputs,
      becomes ``as_strided`` of a leaf requiring grad in the same group if there is one (it was
      most likely a view of it), else ``as_strided`` of a hidden non-leaf
      ``base = hidden_leaf.clone()`` covering the whole storage. Either way in-place ops on it
      are legal exactly when they were on the original, and the hidden leaf's ``.grad`` tells
      whether gradients flow back through a write-back.
    """
    flat, spec = pytree.tree_flatten(list(inputs))
    groups: dict[Any, list[int]] = {}
    for i, x in enumerate(flat):
        if isinstance(x, torch.Tensor):
            key = _storage_key(x)
            groups.setdefault(key if key is not None else ("solo", i), []).append(i)
    out: list[Any] = list(flat)
    grad_leaves: dict[str, torch.Tensor] = {}
    retained: dict[str, torch.Tensor] = {}
    for key, members in groups.items():
        first = flat[members[0]]
        if first.layout != torch.strided or first.device.type == "meta":
            for i in members:  # sparse/meta: best effort, no aliasing to preserve
                x = flat[i]
                c = x.detach().clone()
                if x.requires_grad:
                    c.requires_grad_(True)
                    if x.is_leaf:
                        grad_leaves[f"input[{i}]"] = c
                out[i] = c
            continue
        storage = first.untyped_storage().clone()
        grad_leaf_members = [i for i in members if flat[i].requires_grad and flat[i].is_leaf]
        nonleaf_members = [i for i in members if flat[i].requires_grad and not flat[i].is_leaf]
        for i in members:
            x = flat[i]
            if not x.requires_grad or x.is_leaf:
                t = _on_storage(storage, x)
                if x.requires_grad:
                    t.requires_grad_(True)
                    grad_leaves[f"input[{i}]"] = t
                out[i] = _keep_type(x, t)
        if not nonleaf_members:
            continue
        if len(members) == 1 and flat[members[0]]._base is None and \
                _dense(flat[members[0]]):
            # A lone non-leaf that is not a view (``leaf * 1``): recreate it as exactly that,
            # a clone of a hidden leaf with its layout, so it is not a view either (in-place
            # ops on views rebase their base's history, which would change what is tested).
            i = members[0]
            hidden = _on_storage(storage, flat[i]).requires_grad_(True)
            grad_leaves[f"hidden leaf of input[{i}]"] = hidden
            out[i] = hidden.clone(memory_format=torch.preserve_format)
            retained[f"input[{i}]"] = out[i]
            continue
        if grad_leaf_members:
            anchor = out[grad_leaf_members[0]]
        else:
            # Hidden leaf over the whole storage, in the first non-leaf's dtype.
            like = flat[nonleaf_members[0]]
            n = storage.nbytes() // like.element_size()
            flat_like = torch.empty_strided((n,), (1,), dtype=like.dtype, device=like.device)
            hidden = torch.empty(0, dtype=like.dtype, device=like.device)
            with torch.no_grad():
                hidden.set_(storage, 0, flat_like.size(), flat_like.stride())
            hidden.requires_grad_(True)
            grad_leaves[f"hidden base of input[{nonleaf_members[0]}]"] = hidden
            anchor = hidden.clone()
            # Non-grad members of the group must now alias the non-leaf base's storage.
            for i in members:
                if not flat[i].requires_grad:
                    out[i] = _on_storage(anchor.untyped_storage(), flat[i])
        for i in nonleaf_members:
            x = flat[i]
            if x.dtype != anchor.dtype:
                # Cannot be an autograd view of a different dtype: fall back to a fresh
                # non-leaf over its own copy (aliasing with the group is lost; say so).
                log.warning("verify: input[%d] aliases an input of another dtype; its autograd "
                            "link to that input is not preserved", i)
                h = _on_storage(torch.UntypedStorage(storage.nbytes(), device=x.device), x)
                with torch.no_grad():
                    h.copy_(_on_storage(storage, x))
                h.requires_grad_(True)
                grad_leaves[f"hidden leaf of input[{i}]"] = h
                out[i] = h.clone()
                continue
            v = anchor.as_strided(x.size(), x.stride(), x.storage_offset())
            out[i] = v
            retained[f"input[{i}]"] = v
    return _Cloned(pytree.tree_unflatten(out, spec), grad_leaves, retained)


# --------------------------------------------------------------------------------------------
# comparison helpers
# --------------------------------------------------------------------------------------------

def _normalize(obj):
    """Lists and tuples compare equal (GraphModule codegen may return either)."""
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return tuple(_normalize(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _normalize(v) for k, v in obj.items()}
    return obj


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _compare_tensor(what: str, actual: torch.Tensor, expected: torch.Tensor, rtol, atol,
                    mismatches: list[str], *, layout: bool = False) -> None:
    if actual.dtype != expected.dtype:
        mismatches.append(f"{what}: dtype {actual.dtype} vs reference {expected.dtype}")
        return
    if actual.shape != expected.shape:
        mismatches.append(f"{what}: shape {tuple(actual.shape)} vs reference "
                          f"{tuple(expected.shape)}")
        return
    if actual.device != expected.device:
        mismatches.append(f"{what}: device {actual.device} vs reference {expected.device}")
        return
    if layout and actual.numel() > 1 and (actual.stride() != expected.stride()
                                          or actual.storage_offset() != expected.storage_offset()):
        mismatches.append(f"{what}: stride/offset {actual.stride()}/{actual.storage_offset()} vs "
                          f"reference {expected.stride()}/{expected.storage_offset()}")
    kw = {}
    if _is_float(expected) and (rtol is not None or atol is not None):
        kw = {"rtol": rtol if rtol is not None else 0.0, "atol": atol if atol is not None else 0.0}
    try:
        torch.testing.assert_close(actual.detach(), expected.detach(), equal_nan=True,
                                   check_stride=False, **kw)
    except AssertionError as e:
        detail = " ".join(str(e).split("\n")[1:4]).strip()
        mismatches.append(f"{what}: values differ ({detail})")


def _grad_flag_differs(a: torch.Tensor, e: torch.Tensor) -> bool:
    """``requires_grad`` differs where it means something. An integer tensor written in place
    from a value that requires grad gets the flag in eager (``x[1:] = w.sum()`` leaves an int64
    ``x`` with a ``CopySlices`` grad_fn), yet no gradient can ever reach or leave it: an
    integer value cannot carry history in a pure graph, and there is nothing to compare."""
    if not _is_float(e):
        return False
    return a.requires_grad != e.requires_grad


def _compare_value(what, actual, expected, rtol, atol, mismatches, *, layout=False):
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        if not (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)):
            mismatches.append(f"{what}: {type(actual).__name__} vs reference "
                              f"{type(expected).__name__}")
            return
        _compare_tensor(what, actual, expected, rtol, atol, mismatches, layout=layout)
        return
    try:
        same = actual == expected or (isinstance(expected, float) and math.isnan(expected)
                                      and isinstance(actual, float) and math.isnan(actual))
    except Exception:  # e.g. SymInt comparisons that cannot be decided
        same = repr(actual) == repr(expected)
    if not same:
        mismatches.append(f"{what}: {actual!r} vs reference {expected!r}")


def _input_keys(flat_inputs) -> dict[Any, list[int]]:
    keys: dict[Any, list[int]] = {}
    for i, x in enumerate(flat_inputs):
        if isinstance(x, torch.Tensor):
            k = _storage_key(x)
            if k is not None:
                keys.setdefault(k, []).append(i)
    return keys


def _aliasing(flat_out, keys_before, keys_after) -> dict[int, list[int]]:
    res = {}
    for j, o in enumerate(flat_out):
        if isinstance(o, torch.Tensor):
            k = _storage_key(o)
            if k is None:
                continue
            hit = set(keys_before.get(k, [])) | set(keys_after.get(k, []))
            if hit:
                res[j] = sorted(hit)
    return res


def _weights(t: torch.Tensor, salt: int) -> torch.Tensor:
    """Deterministic, non-uniform weights (a plain sum would hide permuted gradients)."""
    g = torch.Generator().manual_seed(1000 + salt)
    real_dtype = t.real.dtype if t.is_complex() else t.dtype
    w = torch.rand(t.shape, generator=g, dtype=torch.float64) + 0.5
    return w.to(dtype=real_dtype, device=t.device)


def _loss_terms(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    total = None
    for k, t in enumerate(tensors):
        w = _weights(t, k)
        term = (t * w)
        term = (term.real + term.imag).sum() if t.is_complex() else term.sum()
        term = term.to(torch.float64)
        total = term if total is None else total + term
    return total


@dataclasses.dataclass
class _Run:
    outputs: Any
    flat_out: list
    inputs: list
    cloned: _Cloned
    aliasing: dict[int, list[int]]
    extra_state: dict[str, torch.Tensor]
    extra_leaves: dict[str, torch.Tensor]
    grad_mode_leak: bool = False
    backward_error: BaseException | None = None
    grads: dict[str, torch.Tensor | None] = dataclasses.field(default_factory=dict)


def _run(fn: Callable, inputs, seed: int, side: str, grads: bool, extra: Callable | None) -> _Run:
    cloned = clone_inputs(inputs)
    flat_in = pytree.tree_leaves(cloned.inputs)
    keys_before = _input_keys(flat_in)
    devices = sorted({x.device.index or 0 for x in flat_in
                      if isinstance(x, torch.Tensor) and x.device.type == "cuda"})
    grad_mode = torch.is_grad_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            out = fn(*cloned.inputs)
        except Exception as e:
            e.add_note(f"(raised by the {side} inside fxpurify.verify)")
            raise
        finally:
            # A callable that leaves grad mode changed breaks everything its caller runs next;
            # restore it (so one bad run cannot poison the next) and report it below.
            leaked = torch.is_grad_enabled() != grad_mode
            torch.set_grad_enabled(grad_mode)
    flat_out = pytree.tree_leaves(_normalize(out))
    extra_state, extra_leaves = extra() if extra is not None else ({}, {})
    run = _Run(out, flat_out, cloned.inputs, cloned,
               _aliasing(flat_out, keys_before, _input_keys(flat_in)), extra_state, extra_leaves,
               grad_mode_leak=leaked)
    if grads:
        _backward(run)
    return run


def _backward(run: _Run) -> None:
    terms = [o for o in run.flat_out
             if isinstance(o, torch.Tensor) and o.requires_grad and _is_float(o)]
    terms += [t for t in run.cloned.retained.values() if t.requires_grad and _is_float(t)]
    leaves = {**run.cloned.grad_leaves, **run.extra_leaves}
    try:
        # Building the loss can already fail: using a multi-output view (split/unbind) whose
        # base was modified in place raises on first use. Eager autograd may reject the
        # program either way; report it, don't hide it.
        loss = _loss_terms(terms)
        if loss is not None:
            loss.backward()
    except Exception as e:
        run.backward_error = e
        return
    run.grads = {name: (leaf.grad.detach().clone() if leaf.grad is not None else None)
                 for name, leaf in leaves.items()}


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def _compare_runs(ref: _Run, cand: _Run, *, grads: bool, check_aliasing: bool, rtol, atol,
                  check_stride: bool, summary: Comparison) -> list[str]:
    mm: list[str] = []
    if cand.grad_mode_leak and not ref.grad_mode_leak:
        mm.append("the candidate returned with the global grad mode changed "
                  "(torch.is_grad_enabled() differs from before the call)")
    # 1. outputs
    ref_struct = pytree.tree_structure(_normalize(ref.outputs))
    cand_struct = pytree.tree_structure(_normalize(cand.outputs))
    if ref_struct != cand_struct:
        mm.append(f"output structure {cand_struct} vs reference {ref_struct}")
    else:
        for j, (a, e) in enumerate(zip(cand.flat_out, ref.flat_out)):
            aliased = j in ref.aliasing
            _compare_value(f"output[{j}]", a, e, rtol, atol, mm,
                           layout=check_stride or (check_aliasing and aliased))
            if isinstance(a, torch.Tensor) and isinstance(e, torch.Tensor) and _grad_flag_differs(a, e):
                mm.append(f"output[{j}]: requires_grad={a.requires_grad} vs reference "
                          f"{e.requires_grad}")
        summary.outputs = len(ref.flat_out)
    # 2. final state of inputs (and module state)
    ref_in, cand_in = pytree.tree_leaves(ref.inputs), pytree.tree_leaves(cand.inputs)
    n = 0
    for i, (a, e) in enumerate(zip(cand_in, ref_in)):
        if isinstance(e, torch.Tensor):
            _compare_value(f"input[{i}] after the call", a, e, rtol, atol, mm, layout=True)
            if _grad_flag_differs(a, e):
                mm.append(f"input[{i}] after the call: requires_grad={a.requires_grad} vs "
                          f"reference {e.requires_grad}")
            n += 1
    for name, e in ref.extra_state.items():
        a = cand.extra_state.get(name)
        if a is None:
            mm.append(f"{name}: missing in the candidate")
            continue
        _compare_value(f"{name} after the call", a, e, rtol, atol, mm, layout=False)
        n += 1
    summary.inputs_state = n
    # 3. output aliasing
    if check_aliasing:
        summary.aliasing = dict(ref.aliasing)
        for j in sorted(set(ref.aliasing) | set(cand.aliasing)):
            r, c = ref.aliasing.get(j, []), cand.aliasing.get(j, [])
            if r != c:
                mm.append(f"output[{j}] aliasing: shares storage with inputs {c} vs reference "
                          f"{r}" + (" (a view of an input was returned as a fresh tensor)"
                                    if r and not c else ""))
    # 4. gradients
    if grads:
        if ref.backward_error is not None:
            summary.reference_backward_error = f"{type(ref.backward_error).__name__}: " \
                                               f"{ref.backward_error}"
            summary.notes.append("gradients not compared: reference backward raised "
                                 + summary.reference_backward_error.splitlines()[0])
            if cand.backward_error is not None:
                summary.candidate_backward_error = str(cand.backward_error)
        elif cand.backward_error is not None:
            summary.candidate_backward_error = str(cand.backward_error)
            mm.append(f"backward raised in the candidate but not in the reference: "
                      f"{type(cand.backward_error).__name__}: "
                      f"{str(cand.backward_error).splitlines()[0]}")
        else:
            for name, e in ref.grads.items():
                if name not in cand.grads:
                    mm.append(f"grad of {name}: missing in the candidate")
                    continue
                a = cand.grads[name]
                if e is None and a is None:
                    continue
                # None and an all-zero gradient mean the same thing to a caller.
                e_ = e if e is not None else torch.zeros_like(a)
                a_ = a if a is not None else torch.zeros_like(e)
                _compare_value(f"grad of {name}", a_, e_, rtol, atol, mm)
                summary.grads.append(name)
            if not ref.grads:
                summary.notes.append("no input requires grad: gradients not compared")
    return mm


def compare_with_eager(reference: Callable, candidate: Callable, inputs: Sequence[Any], *,
                       grads: bool = True, check_aliasing: bool = True, rtol: float | None = None,
                       atol: float | None = None, seed: int = 0,
                       check_stride: bool = False) -> Comparison:
    """Run ``reference(*inputs)`` and ``candidate(*inputs)`` on separate deep clones and compare.

    Raises :class:`VerificationError` listing every difference (outputs, final input state,
    gradients, output aliasing); returns a :class:`Comparison` saying what was compared.
    Exceptions raised by either side propagate unchanged (with a note saying which side), so a
    caller can tell "the candidate refused" (an ``FxPurifyError``) from "it computed something
    else". If eager backward raises (autograd rejects the program) while the candidate's does
    not, gradients are not compared and ``Comparison.reference_backward_error`` says why.
    ``check_stride`` also compares strides of outputs that do not alias an input (those that do
    are always compared when ``check_aliasing``).
    """
    summary = Comparison(seed=seed)
    ref = _run(reference, inputs, seed, "reference", grads, None)
    cand = _run(candidate, inputs, seed, "candidate", grads, None)
    mm = _compare_runs(ref, cand, grads=grads, check_aliasing=check_aliasing, rtol=rtol,
                       atol=atol, check_stride=check_stride, summary=summary)
    if mm:
        raise VerificationError(mm, summary)
    log.debug("verify: %s", summary)
    return summary


def _module_state(model: torch.nn.Module):
    state = {f"parameter {n}": p for n, p in model.named_parameters()}
    state.update({f"buffer {n}": b for n, b in model.named_buffers()})
    leaves = {f"parameter {n}": p for n, p in model.named_parameters() if p.requires_grad}
    return state, leaves


def compare_module_with_eager(model: torch.nn.Module,
                              make_candidate: Callable[[torch.nn.Module], Callable],
                              inputs: Sequence[Any], *, grads: bool = True,
                              check_aliasing: bool = True, rtol: float | None = None,
                              atol: float | None = None, seed: int = 0) -> Comparison:
    """Compare ``model`` against ``make_candidate(model_copy)`` (e.g. a purified module).

    Each side gets its own ``deepcopy`` of ``model``, so ``model`` itself is never touched.
    ``make_candidate`` may trace the copy with real inputs (which runs it and may update its
    buffers, e.g. BatchNorm running stats): the copy's parameters and buffers are therefore
    restored in place — identity kept, so a candidate that shares them still does — before the
    compared run. Compares outputs, final input state, every parameter and buffer after the
    call, parameter gradients, and output aliasing.
    """
    summary = Comparison(seed=seed)
    ref_model = copy.deepcopy(model)
    cand_model = copy.deepcopy(model)
    snapshot = {k: v.detach().clone() for k, v in cand_model.state_dict(keep_vars=True).items()}
    with torch.random.fork_rng():
        candidate = make_candidate(cand_model)
    with torch.no_grad():
        for k, v in cand_model.state_dict(keep_vars=True).items():
            if k in snapshot and v.shape == snapshot[k].shape:
                v.copy_(snapshot[k])
            if isinstance(v, torch.Tensor) and v.grad is not None:
                v.grad = None
    ref = _run(ref_model, inputs, seed, "reference", grads, lambda: _module_state(ref_model))
    cand = _run(candidate, inputs, seed, "candidate", grads, lambda: _module_state(cand_model))
    mm = _compare_runs(ref, cand, grads=grads, check_aliasing=check_aliasing, rtol=rtol,
                       atol=atol, check_stride=False, summary=summary)
    if mm:
        raise VerificationError(mm, summary)
    return summary
