"""A guard for users' own test suites: "does my model do anything in place to its inputs, its
parameters or its buffers?" — and, if so, where, and what fxpurify turns it into.

This module sits beside the pipeline and only composes it: capture (:func:`fxpurify.trace` /
:func:`fxpurify.capture.trace_module`, mutations kept) → :func:`fxpurify.purify` (whose report
says what each mutation became) → :func:`fxpurify.verify.compare_with_eager` for the one-call
check that a purified graph equals eager. Typical use in a user's pytest file::

    from fxpurify.testing import assert_no_inplace, assert_purified_matches_eager

    def test_model_is_functional():
        assert_no_inplace(model, x)                   # fails listing file:line of each write

    def test_model_purifies():
        assert_purified_matches_eager(model, x)       # outputs, buffers, parameter grads

Which writes count: a node writes a tensor when its schema marks the argument written
(``Tensor(a!)``: in-place ops, ``out=``, ``copy_``, metadata mutations like ``transpose_``) or
when it is a *hidden* mutator whose schema lies (train-mode ``batch_norm`` updates its running
statistics, pytorch/pytorch#73050 — the table lives in :mod:`fxpurify.ops`). The written tensor is
attributed to an input, parameter or buffer when it shares that tensor's storage (fake-tensor
storage identity from ``node.meta["val"]``), so a write through any chain of views
(``x[1:].t().add_(1)``) is attributed to ``x``. Writes into intermediates are harmless for
callers and are listed only with ``include_intermediates=True``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx
from torch.multiprocessing.reductions import StorageWeakRef

from .verify import Comparison, compare_module_with_eager, compare_with_eager

log = logging.getLogger(__name__)

__all__ = ["InplaceOp", "InplaceOpsFound", "list_inplace_ops", "assert_no_inplace",
           "assert_purified_matches_eager"]


@dataclasses.dataclass(frozen=True)
class InplaceOp:
    """One write into a caller-visible tensor (or an intermediate, when asked for)."""

    op: str          # "aten.add_.Tensor"
    target: str      # "input x", "parameter lin.weight", "buffer bn.running_mean", "intermediate"
    kind: str        # "in-place", "out=", "metadata", "hidden (train-mode batch norm)"
    source: str      # the user's file:line
    code: str        # the user's source line, stripped
    becomes: str     # what fxpurify turns it into (from the purify report), or why it refuses
    node: str        # node name in the traced graph

    def __str__(self) -> str:
        return f"{self.source}: {self.code or self.op} — {self.kind} {self.op} writes " \
               f"{self.target}; fxpurify: {self.becomes}"


class InplaceOpsFound(AssertionError):
    """Raised by :func:`assert_no_inplace`; ``.ops`` holds the offending :class:`InplaceOp`s."""

    def __init__(self, ops: Sequence[InplaceOp]):
        self.ops = list(ops)
        try:
            from tabulate import tabulate
            table = tabulate([(o.source, o.code, o.op, o.target, o.becomes) for o in self.ops],
                             headers=["where", "code", "op", "writes", "fxpurify turns it into"],
                             tablefmt="simple")
        except ImportError:  # tabulate is a dependency, but keep the error readable without it
            table = "\n".join(str(o) for o in self.ops)
        super().__init__(
            f"{len(self.ops)} in-place operation(s) on inputs, parameters or buffers:\n{table}\n"
            "Rewrite them out of place, allow them (allow=[...] with an op or tensor name), or "
            "let fxpurify remove them: fxpurify.purify(fxpurify.trace(fn, *inputs)).")


# --------------------------------------------------------------------------------------------
# capture and attribution
# --------------------------------------------------------------------------------------------

def _capture(fn_or_module, example_inputs, tracing_mode):
    """(graph with state lifted to placeholders, label per placeholder)."""
    from .capture import trace, trace_module
    if isinstance(fn_or_module, torch.nn.Module):
        cap = trace_module(fn_or_module, *example_inputs, tracing_mode=tracing_mode)
        gm = cap.graph_module
        phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        labels = [f"parameter {n}" for n in cap.param_names] + \
                 [f"buffer {n}" for n in cap.buffer_names]
        labels += [f"input {n.name}" for n in phs[len(labels):]]
        return gm, labels
    gm = trace(fn_or_module, *example_inputs, tracing_mode=tracing_mode)
    return gm, [f"input {n.name}" for n in gm.graph.nodes if n.op == "placeholder"]


def _storage(val) -> StorageWeakRef | None:
    if isinstance(val, torch.Tensor) and val.layout == torch.strided:
        try:
            return StorageWeakRef(val.untyped_storage())
        except Exception:  # e.g. sparse or functional wrappers: nothing to attribute
            return None
    return None


def _written(node: torch.fx.Node) -> list[tuple[str, Any]]:
    """(kind, written argument) pairs for one node, from its schema and the hidden-writes table."""
    from . import ops
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return []
    bound = ops.bind_args(target, node.args, node.kwargs)
    hidden = ops.HIDDEN_MUTATIONS.get(target)
    if hidden is not None:
        if not bound.get(hidden.when):
            return []
        return [("hidden (train-mode batch norm)", bound.get(a)) for a in hidden.written
                if bound.get(a) is not None]
    info = ops.op_info(target)
    if not info.written:
        return []
    kind = "metadata" if info.metadata_only else "out=" if info.is_out else "in-place"
    res = []
    for name in info.written:
        arg = bound.get(name)
        for a in (arg if isinstance(arg, (list, tuple)) else [arg]):
            if isinstance(a, torch.fx.Node):
                res.append((kind, a))
    return res


def _code_line(node: torch.fx.Node) -> str:
    lines = [ln for ln in (node.meta.get("stack_trace") or "").strip().splitlines() if ln.strip()]
    if len(lines) >= 2 and not lines[-1].strip().startswith("File "):
        return lines[-1].strip()
    return ""


def _becomes(gm: torch.fx.GraphModule) -> dict[str, Any]:
    """Node name → what the purify report says replaced it (or one refusal for everything)."""
    from . import purify, report_of
    from .errors import FxPurifyError
    try:
        report = report_of(purify(gm))
    except FxPurifyError as e:
        first = str(e).strip().splitlines()[0]
        return {"*": f"refused ({type(e).__name__}: {first})"}
    out: dict[str, str] = {}
    for r in report.rewrites:
        if r.node != "-":
            out[r.node] = f"{r.replacement}" if r.node not in out else \
                f"{out[r.node]}; {r.replacement}"
    for r in report.rewrites:
        if r.kind == "write-back":
            out.setdefault("*write-backs", []).append(r.replacement)
    return out


def list_inplace_ops(fn_or_module: Callable, *example_inputs, include_intermediates: bool = False,
                     tracing_mode: str = "real") -> list[InplaceOp]:
    """Every in-place write of ``fn_or_module(*example_inputs)`` into its inputs, parameters or
    buffers (and intermediates with ``include_intermediates``), in program order, with the
    user's source line and what :func:`fxpurify.purify` turns it into.

    The program is traced once on clones of the inputs (``tracing_mode="real"`` runs it; a
    module's own parameters and buffers are not modified). Use ``tracing_mode="fake"`` for
    models whose Python reads tensor data (Hugging Face mask code).
    """
    from .errors import source_line
    gm, labels = _capture(fn_or_module, example_inputs, tracing_mode)
    roots: dict[StorageWeakRef, list[str]] = {}
    placeholder_of: dict[str, str] = {}
    for node, label in zip([n for n in gm.graph.nodes if n.op == "placeholder"], labels):
        placeholder_of[label] = node.name
        ref = _storage(node.meta.get("val"))
        if ref is not None:
            roots.setdefault(ref, []).append(label)
    for node in gm.graph.nodes:  # constants the graph owns (get_attr): not caller-visible
        if node.op == "get_attr":
            ref = _storage(node.meta.get("val"))
            if ref is not None:
                roots.setdefault(ref, [f"constant {node.target}"])
    found: list[tuple[torch.fx.Node, str, str]] = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        for kind, arg in _written(node):
            ref = _storage(arg.meta.get("val"))
            names = roots.get(ref, []) if ref is not None else []
            if names:
                found += [(node, kind, name) for name in names]
            elif include_intermediates:
                found.append((node, kind, "intermediate"))
    if not found:
        return []
    becomes = _becomes(gm)
    result = []
    for node, kind, target in found:
        b = becomes.get("*") or becomes.get(node.name, "removed (no rewrite recorded)")
        ph = placeholder_of.get(target)
        backs = [w for w in becomes.get("*write-backs", []) if ph and f"({ph}," in w]
        if "*" not in becomes and backs:
            b += ", then one write-back at the end: " + "; ".join(backs)
        result.append(InplaceOp(str(node.target), target, kind, source_line(node),
                                _code_line(node), b, node.name))
    return result


def _allowed(op: InplaceOp, allow: Iterable) -> bool:
    for a in allow:
        if callable(a) and not isinstance(a, str):
            if a(op):
                return True
            continue
        a = str(a)
        short = op.op.replace("aten.", "")
        name = op.target.split(" ", 1)[-1]
        if a in (op.op, short, short.split(".")[0], op.target, name):
            return True
    return False


def assert_no_inplace(fn_or_module: Callable, *example_inputs, allow: Iterable = (),
                      tracing_mode: str = "real") -> None:
    """Fail (``InplaceOpsFound``, an ``AssertionError``) if ``fn_or_module`` writes in place
    into any input, parameter or buffer, listing each write with its ``file:line``.

    ``allow``: entries that excuse a write — an op (``"add_"``, ``"aten.add_.Tensor"``), a
    tensor (``"bn.running_mean"``, ``"buffer bn.running_mean"``, ``"input x"``) or a predicate
    on :class:`InplaceOp`.
    """
    bad = [o for o in list_inplace_ops(fn_or_module, *example_inputs, tracing_mode=tracing_mode)
           if not _allowed(o, allow)]
    if bad:
        raise InplaceOpsFound(bad)


def assert_purified_matches_eager(fn_or_module: Callable, *example_inputs, grads: bool = True,
                                  rtol: float | None = None, atol: float | None = None,
                                  tracing_mode: str = "real") -> Comparison:
    """Trace, purify, check purity, and compare the purified program against eager on
    ``example_inputs``: outputs, final state of inputs (and of a module's parameters and
    buffers), gradients, output aliasing. Raises ``VerificationError`` (an ``AssertionError``)
    listing every difference; returns what was compared.

    A module is never modified: both sides run on deep copies of it.
    """
    import fxpurify
    if isinstance(fn_or_module, torch.nn.Module):
        def make(copy_of_model):
            pm = fxpurify.purify_module(copy_of_model, *example_inputs, tracing_mode=tracing_mode)
            fxpurify.check_pure(pm.graph_module)
            return pm
        return compare_module_with_eager(fn_or_module, make, list(example_inputs), grads=grads,
                                         rtol=rtol, atol=atol)
    gm = fxpurify.trace(fn_or_module, *example_inputs, tracing_mode=tracing_mode)
    pure = fxpurify.purify(gm)
    fxpurify.check_pure(pure)
    return compare_with_eager(fn_or_module, pure, list(example_inputs), grads=grads, rtol=rtol,
                              atol=atol)
