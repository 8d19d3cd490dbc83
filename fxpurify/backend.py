"""``torch.compile(model, backend="purify")``: the Dynamo backend.

This module sits beside the pipeline: it composes capture, the pass and an inner compiler, the way
``torch/_dynamo/backends/debugging.py`` composes ``aot_eager`` — for each graph Dynamo captures:

1. **lower** the torch-level Dynamo graph (``call_method add_``, ``relu(inplace=True)``) to an ATen
   graph that still holds its mutations (``fxpurify.capture.lower_dynamo_graph``:
   ``make_fx(pre_dispatch=True)`` under Dynamo's fake mode, so SymInt inputs stay symbolic and
   nothing is run for real);
2. **purify** it (``fxpurify.purify``): the result has no mutation left except one write-back per
   mutated parameter, buffer or input;
3. hand the pure graph to the **inner** compiler:

   - ``"eager"`` runs the pure ATen graph on ATen kernels. The graph is pre-dispatch (above
     autograd), so autograd is recorded while it runs and only ever sees out-of-place ops.
   - ``"inductor"`` calls ``compile_fx(pure_gm, example_inputs)``; Inductor's AOTAutograd then
     traces autograd over the *pure* program.

   Either way autograd never sees the in-place op that eager autograd rejects: ``y = x.sigmoid();
   y.mul_(2)`` fails in eager ("modified by an inplace operation"), under ``aot_eager`` and under
   ``inductor`` (both trace autograd over the mutating program), and runs here with the gradients
   of the out-of-place program ``y = x.sigmoid() * 2``.

Options (``options=`` or ``mode=`` of ``torch.compile``) are parsed by ``fxpurify.options``. The
backend is registered once, through the ``torch_dynamo_backends`` entry point in
``pyproject.toml``; this module must not also call ``register_backend("purify")`` (Dynamo raises
"duplicate name" when it loads the entry point).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch.multiprocessing.reductions import StorageWeakRef

from .errors import FxPurifyError, source_line
from .options import BackendOptions, parse_backend_options

__all__ = ["purify_backend", "InputMutationError", "mutated_inputs"]

log = logging.getLogger(__name__)

# Reasons already warned about (strict=False fallbacks), so a model with many graphs that all hit
# the same limitation warns once, not once per graph or per recompile.
_warned: set[str] = set()
_graph_counter = itertools.count()


class InputMutationError(FxPurifyError):
    """``input_mutations="error"`` and the graph writes to a parameter, buffer or user input.

    Defined here until ``fxpurify.errors`` carries it (requested from the core owner).
    """

    kind = "input-mutation"


def purify_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    options: Any = None,
    mode: str | None = None,
) -> Callable[..., Any]:
    """Dynamo backend: lower ``gm`` to ATen, purify it, compile the pure graph with the inner
    compiler, and publish the report. Called once per captured graph (graph breaks give several).
    """
    opts = parse_backend_options(options, mode)
    graph_id = _graph_id()
    gm, attrs = _lift_tensor_attrs(gm)
    example_inputs = [*example_inputs, *attrs]
    try:
        aten_gm = _lower(gm, example_inputs)
    except Exception as exc:  # lowering is capture's job; a failure there is not the user's
        return _bind(_fallback(gm, example_inputs, opts, graph_id, "lowering to ATen failed", exc),
                     attrs)

    if opts.input_mutations == "error":
        found = mutated_inputs(aten_gm, gm)
        if found:
            raise InputMutationError(_describe_mutations(found), hint=(
                "remove the in-place update from forward (keep state outside the model), or "
                "compile with options={'input_mutations': 'copy_back'} to have it written back"
            ))

    try:
        pure_gm = _purify(aten_gm, example_inputs)
    except Exception as exc:
        return _bind(_fallback(gm, example_inputs, opts, graph_id, "purification failed", exc),
                     attrs)

    _publish(graph_id, gm, aten_gm, pure_gm, opts)
    return _bind(_compile_inner(pure_gm, example_inputs, opts), attrs)


def _lift_tensor_attrs(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """Turn tensor ``get_attr`` nodes into trailing placeholders.

    Dynamo installs tensors it does not pass as inputs as attributes of the graph module (an
    optimizer's parameters and state, for instance). Real tensors cannot enter the fake-mode
    lowering, and a write to one is a write to user state that the pure graph must express as
    an epilogue copy into an *input*. So, like ``aot_module_simplified`` does for parameters,
    they become inputs, and :func:`_bind` passes the same tensor objects at every call.
    """
    attr_nodes = [n for n in gm.graph.nodes if n.op == "get_attr"
                  and isinstance(_fetch_attr(gm, n.target), torch.Tensor)]
    if not attr_nodes:
        return gm, []
    graph = torch.fx.Graph()
    out = graph.graph_copy(gm.graph, val_map := {})
    last = [n for n in graph.nodes if n.op == "placeholder"]
    lifted: dict[str, torch.fx.Node] = {}
    values = []
    for old in attr_nodes:
        new = val_map[old]
        if old.target not in lifted:
            where = last[-1] if last else None
            ctx = graph.inserting_after(where) if where is not None else graph.inserting_before(
                next(iter(graph.nodes)))
            with ctx:
                ph = graph.placeholder(old.target.replace(".", "_"))
            ph.meta.update(old.meta)
            last.append(ph)
            lifted[old.target] = ph
            values.append(_fetch_attr(gm, old.target))
        new.replace_all_uses_with(lifted[old.target])
        graph.erase_node(new)
    graph.output(out)
    lifted_gm = torch.fx.GraphModule(gm, graph)
    lifted_gm.meta.update(gm.meta)
    return lifted_gm, values


def _fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _bind(fn: Callable[..., Any], attrs: list[torch.Tensor]) -> Callable[..., Any]:
    if not attrs:
        return fn

    def call_with_lifted_attrs(*args):
        return fn(*args, *attrs)

    return call_with_lifted_attrs


# --------------------------------------------------------------------------------------------
# stages


def _lower(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> torch.fx.GraphModule:
    from .capture import lower_dynamo_graph

    with _checkpoint_bodies_traceable(gm):
        lowered = lower_dynamo_graph(gm, list(example_inputs))
    for mod in lowered.modules():
        if isinstance(mod, torch.fx.GraphModule) and mod.meta.get(_CKPT_KEY) is _noop_context_fn():
            del mod.meta[_CKPT_KEY]  # copied over by the HOP's tracing rule; not the user's
    return lowered


_CKPT_KEY = "_checkpoint_context_fn"


def _noop_context_fn():
    from torch.utils.checkpoint import noop_context_fn

    return noop_context_fn


class _checkpoint_bodies_traceable:
    """Work around a torch 2.13 bug so activation checkpointing can be lowered.

    Pre-dispatch tracing of ``tag_activation_checkpoint`` (``torch/_higher_order_ops/wrap.py``)
    reads ``body.meta["_checkpoint_context_fn"]`` unconditionally, but Dynamo only sets it when
    the user passed a ``context_fn``: plain ``checkpoint(fn, x, use_reentrant=False)`` raises
    ``KeyError``. During lowering the key is set to ``noop_context_fn`` (checkpoint's own
    default, so eager semantics are unchanged) and removed again afterwards — also from the
    lowered bodies, because Inductor treats the key's presence as selective checkpointing.
    """

    def __init__(self, gm: torch.fx.GraphModule):
        self.patched: list[torch.fx.GraphModule] = []
        hop = getattr(torch.ops.higher_order, "tag_activation_checkpoint", None)
        for node in gm.graph.nodes:
            if hop is not None and node.target is hop and isinstance(node.args[0], torch.fx.Node):
                body = _fetch_attr(gm, node.args[0].target)
                if isinstance(body, torch.fx.GraphModule) and _CKPT_KEY not in body.meta:
                    self.patched.append(body)

    def __enter__(self):
        for body in self.patched:
            body.meta[_CKPT_KEY] = _noop_context_fn()
        return self

    def __exit__(self, *exc):
        for body in self.patched:
            body.meta.pop(_CKPT_KEY, None)
        return False


def _purify(aten_gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> torch.fx.GraphModule:
    from .pipeline import purify

    # The lowered graph carries meta["val"] fakes from Dynamo's fake mode; example inputs are
    # real tensors that purify does not need (and must not run on).
    return purify(aten_gm)


def _compile_inner(pure_gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                   opts: BackendOptions) -> Callable[..., Any]:
    log.debug("compiling the pure graph with inner=%s %s", opts.inner, opts.config_patches() or "")
    if opts.inner == "eager":
        # The pure graph is pre-dispatch ATen: running it records autograd over pure ops only.
        # Its bound forward, not the module: nn.Module.__call__ costs microseconds per call.
        return pure_gm.forward
    from torch._inductor.compile_fx import compile_fx

    guards = _hoist_call_time_guards(pure_gm)
    cloned = _hoist_old_values(pure_gm, example_inputs)
    extra = [example_inputs[i].clone() for i in cloned]  # what the wrapper passes at call time
    compiled = compile_fx(pure_gm, [*example_inputs, *extra],
                          config_patches=opts.config_patches() or None)
    if not guards and not cloned:
        return compiled

    def guarded(*args):
        for fn, spec in guards:
            fn(*[args[a.index] if isinstance(a, _Placeholder) else a for a in spec])
        return compiled(*args, *[args[i].clone() for i in cloned])

    return guarded


def _hoist_old_values(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> list[int]:
    """Move ``fxpurify.runtime.old_value`` clones out of the graph Inductor compiles.

    Where a graph reads an input that requires grad and later writes it back, the pure graph
    reads a clone of the entry value (``old_value``), so what backward saves is not the tensor
    the write-back changes. Inside ``compile_fx`` that clone does not survive: AOTAutograd's
    partitioner prefers to save the *input* and recompute the cheap clone in backward, and the
    write-back then fails backward's version check. So the clone is made by the backend, outside
    the compiled graph, and passed in as an extra trailing input; readers use that input.

    Whether the clone happens is decided here, from the example inputs: ``old_value`` clones
    only when grad mode is on and some input requires grad, and Dynamo guards both, so every
    call of this compiled graph takes the same branch. Returns the positions of the inputs
    whose entry value the caller must clone and append, in placeholder order.
    """
    from . import runtime

    old_fn = getattr(runtime, "old_value", None)
    active_fn = getattr(runtime, "autograd_active", None)
    if old_fn is None or active_fn is None:
        return []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    index = {n: i for i, n in enumerate(placeholders)}
    cloned: list[int] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not old_fn or node.kwargs:
            continue
        if len(node.args) != 2 or node.args[0] not in index:
            continue
        src, flag = node.args
        if isinstance(flag, torch.fx.Node):
            if flag.target is not active_fn or flag.kwargs or any(
                    a not in index for a in flag.args):
                continue
            active = active_fn(*[example_inputs[index[a]] for a in flag.args])
        else:
            active = bool(flag)
        if active and torch.is_grad_enabled():
            with gm.graph.inserting_after(placeholders[-1]):
                new = gm.graph.placeholder(f"{src.name}_old_value")
            new.meta.update(node.meta)
            placeholders.append(new)
            node.replace_all_uses_with(new)
            cloned.append(index[src])
        else:
            node.replace_all_uses_with(src)  # old_value returns the input itself
        gm.graph.erase_node(node)
        if isinstance(flag, torch.fx.Node) and not flag.users:
            gm.graph.erase_node(flag)
    gm.graph.lint()
    gm.recompile()
    return cloned


class _Placeholder(int):
    """Marks a guard argument that is the graph input at this position."""

    @property
    def index(self) -> int:
        return int(self)


def _hoist_call_time_guards(gm: torch.fx.GraphModule) -> list[tuple[Callable[..., Any], list]]:
    """Take the call-time guard nodes (``fxpurify.runtime.check_inputs_not_aliased``) out of the
    graph so the backend runs them on the real inputs before the compiled graph.

    Inductor's AOTAutograd re-traces the graph with fake/functional tensors; a guard that reads
    storage pointers cannot run there ("invalid python storage"), and its answer at trace time
    would say nothing about the tensors of a later call anyway.
    """
    from . import runtime

    index = {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}
    hoisted = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not runtime.check_inputs_not_aliased:
            continue
        if node.kwargs or node.users or any(
                isinstance(a, torch.fx.Node) and a not in index for a in node.args):
            continue  # not the shape we know: leave it in the graph
        spec = [_Placeholder(index[a]) if isinstance(a, torch.fx.Node) else a for a in node.args]
        hoisted.append((node.target, spec))
        gm.graph.erase_node(node)
    if hoisted:
        gm.recompile()
    return hoisted


def _fallback(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], opts: BackendOptions,
              graph_id: str, what: str, exc: Exception) -> Callable[..., Any]:
    """strict=False: run the graph unpurified, after one warning per distinct reason."""
    if opts.strict or isinstance(exc, InputMutationError):
        raise exc
    first_line = (str(exc).strip().splitlines() or [""])[0]
    kind = "" if isinstance(exc, FxPurifyError) else " (internal error, please report it)"
    reason = f"{what}{kind}: {type(exc).__name__}: {first_line}"
    runner = "the original graph eagerly" if opts.inner == "eager" else "plain Inductor"
    log.debug("graph %s not purified", graph_id, exc_info=exc)
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"fxpurify backend: graph {graph_id} runs unpurified ({runner}); {reason}. "
            "Pass options={'strict': True} to raise instead.",
            stacklevel=2,
        )
    if opts.inner == "eager":
        return gm.forward
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, list(example_inputs), config_patches=opts.config_patches() or None)


# --------------------------------------------------------------------------------------------
# input mutations (input_mutations="error")

def _written_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The arguments ``node`` writes to: from its schema's alias annotations, plus the hidden
    writers of ``fxpurify.ops.HIDDEN_MUTATIONS`` (train-mode batch norm's running statistics,
    pytorch/pytorch#73050) when their switch argument is on."""
    from . import ops

    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return []
    bound = ops.bind_args(target, node.args, node.kwargs)
    names = list(ops.op_info(target).written)
    hidden = ops.HIDDEN_MUTATIONS.get(target)
    if hidden is not None and bound.get(hidden.when) is True:
        names += hidden.written
    flat = []
    for name in names:
        value = bound.get(name)
        flat.extend(value if isinstance(value, (list, tuple)) else [value])
    return [w for w in flat if isinstance(w, torch.fx.Node)]


def _storage(node: torch.fx.Node):
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        try:
            return StorageWeakRef(val.untyped_storage())
        except (NotImplementedError, RuntimeError):  # e.g. sparse or subclass values
            return None
    return None


def mutated_inputs(aten_gm: torch.fx.GraphModule,
                   dynamo_gm: torch.fx.GraphModule | None = None) -> list[tuple[str, str, str]]:
    """Each write to a graph input: ``(input name, op, source line)``, in program order.

    An input is written when an op writes (by schema, or by the hidden-writer table) a tensor
    whose storage is the input's storage: views of inputs count. Names come from Dynamo's
    sources (``L['self']._buffers['b']``) when ``dynamo_gm`` is given (same placeholder order).
    """
    placeholders = [n for n in aten_gm.graph.nodes if n.op == "placeholder"]
    names = [n.name for n in placeholders]
    if dynamo_gm is not None:
        dyn = [n for n in dynamo_gm.graph.nodes if n.op == "placeholder"]
        if len(dyn) == len(placeholders):
            names = [_source_name(n) for n in dyn]
    by_storage = {}
    for ph, name in zip(placeholders, names):
        st = _storage(ph)
        if st is not None:
            by_storage.setdefault(st, name)
    found = []
    for node in aten_gm.graph.nodes:
        if node.op != "call_function":
            continue
        for arg in _written_args(node):
            name = by_storage.get(_storage(arg)) if _storage(arg) is not None else None
            if name is not None:
                found.append((name, str(node.target), _where(node)))
    return found


def _where(node: torch.fx.Node) -> str:
    """The user's ``file:line``; Dynamo records none for code inside ``torch.nn`` modules, so
    fall back to the innermost module (``L['model'].bn1 (BatchNorm2d)``)."""
    line = source_line(node)
    if not line.startswith("<unknown"):
        return line
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        return f"module {path} ({getattr(cls, '__name__', cls)})"
    return "<unknown source line>"


def _source_name(node: torch.fx.Node) -> str:
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    if source is not None:
        try:
            return source.name
        except Exception:  # noqa: BLE001 - a name is cosmetic; never fail the compile on it
            pass
    return str(node.target)


def _describe_mutations(found: list[tuple[str, str, str]]) -> str:
    lines = [f"graph mutates {len({f[0] for f in found})} input(s) "
             "(parameters, buffers or user inputs) and input_mutations='error' forbids it:"]
    lines += [f"  - {name}: {op} at {where}" for name, op, where in found]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# report


def _graph_id() -> str:
    n = next(_graph_counter)
    try:
        from torch._guards import CompileContext

        cid = CompileContext.current_compile_id()
    except Exception:  # noqa: BLE001 - outside Dynamo (direct calls) there is no compile id
        cid = None
    return f"g{n:03d}" + (f"_{str(cid).replace('/', '_')}" if cid is not None else "")


def _publish(graph_id: str, dynamo_gm: torch.fx.GraphModule, aten_gm: torch.fx.GraphModule,
             pure_gm: torch.fx.GraphModule, opts: BackendOptions) -> None:
    from .report import report_of

    report = report_of(pure_gm)
    log.debug("graph %s purified: %d ATen nodes -> %d nodes", graph_id,
              len(aten_gm.graph.nodes), len(pure_gm.graph.nodes))
    if opts.log_report:
        log.info("fxpurify report for graph %s: %s", graph_id, report)
    if opts.report_dir is not None:
        os.makedirs(opts.report_dir, exist_ok=True)
        base = os.path.join(opts.report_dir, graph_id)
        _write(base + ".dynamo.txt", dynamo_gm.print_readable(print_output=False))
        _write(base + ".before.txt", aten_gm.print_readable(print_output=False))
        _write(base + ".after.txt", pure_gm.print_readable(print_output=False))
        _write(base + ".report.txt", str(report))
        _write(base + ".report.json", json.dumps(report.to_dict(), indent=2, default=str))
        log.debug("graph %s: wrote %s.*", graph_id, base)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
