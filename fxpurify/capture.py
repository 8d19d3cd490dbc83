"""Capture: the first stage of fxpurify (capture → analyze → rewrite → clean up → emit → report).

This module turns user code into the input the pass needs: an ATen-level ``GraphModule`` that
*still contains its mutations* (no functionalization here), whose tensor nodes carry fake
``node.meta["val"]`` and whose nodes carry ``node.meta["stack_trace"]`` pointing at the user's
own source lines. It owns three entry points:

* :func:`trace` / :func:`trace_module` — user code (a function or an ``nn.Module``) → ATen graph
  via ``make_fx`` without ``functionalize``.
* :func:`lower_dynamo_graph` — a torch-level Dynamo graph (``call_method add_``,
  ``relu(inplace=True)``, ``torch._C._nn.linear``) → ATen graph, for the ``torch.compile``
  backend. It re-traces the *given graph* (not the user's Python) under Dynamo's fake mode.
* :func:`ensure_fake_metadata` — a graph without ``meta["val"]`` → a copy that has it.

and one predicate, :func:`is_torch_level_graph`, so the pipeline can refuse a torch-level graph
with an error that says which of the above to call.

Why ``stack_trace`` needs work: ``make_fx(record_stack_traces=True)`` only keeps frames whose
function is called ``forward`` (``TracerBase._filter_traceback_frames`` with
``_record_forward_stack_traces_only``), so a plain function, or a helper called from
``forward``, gets nothing. We swap that filter, for the duration of one trace, for one that
keeps exactly the frames *below our own call into the user's code* that are not torch or Python
internals — the user's ``file:line`` chain, innermost last.

Why modules are traced with their state *lifted* (``torch.func.functional_call``): parameters
and buffers become placeholders, so the pass sees a BatchNorm running-stat update or a KV-cache
``index_copy_`` as the mutation of a graph *input* and emits one ``copy_`` into it. Whoever
calls the graph with the model's own tensors (``fxpurify.module.PurifiedModule``) therefore
updates the model's own buffers, and gradients reach its own parameters. It also works in
``tracing_mode="fake"`` (Hugging Face models), where constants captured as ``get_attr`` would
have to be real. :func:`trace` then turns those placeholders into ``get_attr`` nodes bound to
the *same* tensor objects, so ``trace(model, x)`` keeps the model's calling convention and an
epilogue ``copy_`` into such a ``get_attr`` still lands in the model's buffer.

Side effects: ``tracing_mode="real"`` executes the program. We trace on clones (preserving
which inputs share storage) so tracing never mutates the caller's tensors or the model's state.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import logging
import os
import re
import sysconfig
import threading
import traceback
from typing import Any, Callable, Sequence

import torch
import torch.fx
import torch.fx.traceback as fx_traceback
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.experimental.proxy_tensor import make_fx

log = logging.getLogger(__name__)

__all__ = [
    "trace", "trace_module", "ModuleCapture", "lower_dynamo_graph", "ensure_fake_metadata",
    "is_torch_level_graph", "torch_level_nodes", "needs_fake_metadata",
]

_TRACING_MODES = ("real", "fake", "symbolic")


# --------------------------------------------------------------------------------------------
# stack traces
# --------------------------------------------------------------------------------------------

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_FXPURIFY_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# fxpurify files that are machinery, not "user code"; models.py is user code for our purposes
# (its lines are what a reader of the report of the built-in models wants to see).
_FXPURIFY_MACHINERY = {os.path.join(_FXPURIFY_DIR, f) for f in ("capture.py", "module.py", "cli.py")}
_STDLIB_DIR = sysconfig.get_paths()["stdlib"] + os.sep
_SITE_DIRS = tuple({sysconfig.get_paths()[k] + os.sep for k in ("purelib", "platlib")})
_ENTRY_NAME = "_fxpurify_call_user"  # the frame below which user code runs (see _call_user)
_PATCH_LOCK = threading.RLock()


def _is_user_frame(filename: str) -> bool:
    if filename.startswith(("<eval_with_key", "<frozen")):  # FX-generated code, importlib
        return False
    if filename.startswith(_TORCH_DIR) or filename in _FXPURIFY_MACHINERY:
        return False
    if filename.startswith(_STDLIB_DIR) and not filename.startswith(_SITE_DIRS):
        return False
    return True


def _user_frames(summary: traceback.StackSummary) -> traceback.StackSummary:
    """Frames of ``summary`` the user wrote: those after our last entry frame, minus internals."""
    start = 0
    for i, frame in enumerate(summary):
        if frame.name == _ENTRY_NAME and frame.filename == __file__:
            start = i + 1
    if start == 0:  # not inside a trace we started (e.g. lowering): record nothing
        return traceback.StackSummary.from_list([])
    frames = [f for f in summary[start:] if _is_user_frame(f.filename)]
    if not frames:
        # Only library code ran (an nn.Sequential of torch modules): the innermost ``forward``
        # still says which module made the node, which is torch's own default.
        frames = [f for f in summary[start:] if f.name == "forward"][-1:]
    return traceback.StackSummary.from_list(frames)


@contextlib.contextmanager
def _record_user_stack_traces():
    """Make ``make_fx(record_stack_traces=True)`` keep the user's frames, not only ``forward``.

    ``_filter_traceback_frames`` is documented in torch as the hook to customize this filter; it
    is a method of the tracer class that ``make_fx`` instantiates internally, so we override it on
    the class for the duration of one trace (under a lock, restored on exit).
    """
    from torch.fx.experimental.proxy_tensor import PythonKeyTracer

    if not hasattr(PythonKeyTracer, "_filter_traceback_frames"):  # older/newer torch: best effort
        yield
        return
    with _PATCH_LOCK:
        saved = PythonKeyTracer.__dict__.get("_filter_traceback_frames")
        PythonKeyTracer._filter_traceback_frames = lambda self, summary: _user_frames(summary)
        try:
            yield
        finally:
            if saved is None:
                del PythonKeyTracer._filter_traceback_frames
            else:
                PythonKeyTracer._filter_traceback_frames = saved


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------

def _is_dynamic_leaf(x: Any) -> bool:
    """Leaves that become placeholders; every other leaf (int, None, a config) is a constant."""
    return isinstance(x, (torch.Tensor, torch.SymInt, torch.SymFloat, torch.SymBool))


def _clone_preserving_aliases(values: Sequence[Any]) -> list[Any]:
    """Clone the tensors in ``values`` so a real-mode trace cannot mutate the caller's tensors.

    Inputs that share storage at trace time must still share it in the clones (the traced graph
    is specialised to that aliasing, DESIGN pitfall 7), and autograd structure must survive: a
    non-leaf that requires grad stays a non-leaf, so in-place ops legal on it stay legal.
    ``verify.clone_inputs`` does exactly that (one storage clone per group, hidden leaves).
    """
    from .verify import clone_inputs
    return list(clone_inputs(list(values)).inputs)


def _sanitize(name: str) -> str:
    name = re.sub(r"[^0-9a-zA-Z_]", "_", name)
    return name if name and not name[0].isdigit() else f"_{name}"


def _input_names(fn: Callable, args: tuple, kwargs: dict, n_leaves_per_arg: list[int]) -> list[str]:
    """Readable placeholder names from ``fn``'s signature: ``x``, ``cache_0``, ``cache_1``…"""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names: list[str] = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), "arg")
    labels = [positional[i] if i < len(positional) else f"{var}{i}" for i in range(len(args))]
    labels += list(kwargs)
    for label, n in zip(labels, n_leaves_per_arg):
        names += [_sanitize(label)] if n == 1 else [f"{_sanitize(label)}_{j}" for j in range(n)]
    return names


def _rename_placeholders(gm: torch.fx.GraphModule, names: Sequence[str]) -> None:
    """Give placeholders readable names (the generated ``arg0_1`` means nothing in a report)."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(phs) != len(names):
        return
    for node, name in zip(phs, names):
        node._rename(name)
        node.target = node.name
    gm.recompile()


def _set_class_name(gm: torch.fx.GraphModule, name: str) -> None:
    """Name the graph after the user's program (``print_readable`` shows ``class TinyCNN``).

    ``GraphModule`` gives every instance its own subclass, so renaming it touches nothing else.
    """
    name = _sanitize(name.replace("<lambda>", "lambda"))
    type(gm).__name__ = type(gm).__qualname__ = name


def _make_flat_callable(fn: Callable, args: tuple, kwargs: dict):
    """Wrap ``fn`` as ``f(*dynamic_leaves)`` returning a flat tuple (or one tensor).

    Only tensors and SymInts become graph inputs; other leaves (ints, ``None``, configs) are
    baked in as constants, as ``make_fx`` would specialise on them anyway. Outputs are flattened
    with pytree so model outputs (``ModelOutput``, dicts) trace; the spec is kept in
    ``gm.meta["fxpurify_capture"]`` for callers that want the structure back.
    """
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    dyn_idx = [i for i, x in enumerate(leaves) if _is_dynamic_leaf(x)]
    state: dict[str, Any] = {}

    def _fxpurify_call_user(*dyn):  # name is the anchor for _user_frames
        full = list(leaves)
        for i, v in zip(dyn_idx, dyn):
            full[i] = v
        a, kw = pytree.tree_unflatten(full, in_spec)
        out = fn(*a, **kw)
        if isinstance(out, torch.Tensor):
            state["out_spec"] = None
            return out
        flat_out, out_spec = pytree.tree_flatten(out)
        state["out_spec"] = out_spec
        for o in flat_out:
            if not (o is None or isinstance(o, (torch.Tensor, int, float, bool, str, torch.SymInt,
                                                 torch.SymFloat, torch.SymBool))):
                raise _errors().UnsupportedError(
                    f"fxpurify.trace: the traced callable returned a {type(o).__name__} "
                    f"inside its output; return tensors (or pytrees of tensors) instead.")
        return tuple(flat_out)

    per_arg = [sum(_is_dynamic_leaf(x) for x in pytree.tree_leaves(a)) for a in (*args, *kwargs.values())]
    return _fxpurify_call_user, [leaves[i] for i in dyn_idx], state, per_arg


def _errors():
    # Lazy: errors.py belongs to the core; keep capture importable on its own.
    from . import errors
    return errors


def _unify_fake_metadata(gm: torch.fx.GraphModule, inputs: Sequence[Any]) -> None:
    """Re-derive every ``meta["val"]`` of a real-mode trace in *one* fake mode.

    ``make_fx(tracing_mode="real")`` snapshots each value into its own ``FakeTensorMode``, so no
    two ``meta["val"]`` share a fake storage: an ``add_`` result does not alias its input and
    two aliased inputs do not alias each other, which defeats an alias analysis that confirms
    aliasing by storage identity (``fake`` / ``symbolic`` traces do not have this problem). We
    convert the caller's inputs with a single mode (views of one base stay views of one fake
    base) and re-run ``FakeTensorProp`` over the graph. ``FakeTensorProp`` snapshots values
    with ``detach()``, like ``make_fx`` does, so ``requires_grad`` is ``False`` in the metadata
    either way; it runs under ``no_grad`` because the graph may write leaves that require grad
    (an optimizer step traced without ``pre_dispatch``). If propagation fails (an op fake
    tensors cannot run), ``make_fx``'s own metadata is kept and a warning logged.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # A ShapeEnv lets data-dependent ops (nonzero, boolean masks) get unbacked sizes; inputs
    # stay static, as the real-mode trace was. get_attr constants are real tensors.
    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    saved = {n: n.meta.get("val") for n in gm.graph.nodes}
    try:
        fakes = [mode.from_tensor(x, static_shapes=True) if isinstance(x, torch.Tensor) else x
                 for x in inputs]
        from .metadata import propagate   # snapshots: later metadata mutations do not rewrite them
        propagate(gm, mode, fakes)
    except Exception as e:  # noqa: BLE001 - any failure: fall back to make_fx's metadata
        log.warning("fxpurify.trace: could not unify fake metadata (%s: %s); keeping make_fx's "
                    "per-node metadata, whose storages do not reflect aliasing", type(e).__name__, e)
        for n, v in saved.items():
            if v is not None:
                n.meta["val"] = v


def _make_fx_trace(fn, args: tuple, kwargs: dict, *, tracing_mode: str, pre_dispatch: bool):
    if tracing_mode not in _TRACING_MODES:
        raise ValueError(f"tracing_mode={tracing_mode!r}; valid: {', '.join(_TRACING_MODES)}")
    flat_fn, dyn, state, per_arg = _make_flat_callable(fn, args, kwargs)
    traced_on = _clone_preserving_aliases(dyn) if tracing_mode == "real" else dyn
    try:
        with _record_user_stack_traces():
            gm = make_fx(flat_fn, tracing_mode=tracing_mode, pre_dispatch=pre_dispatch,
                         record_stack_traces=True)(*traced_on)
    except RuntimeError as e:
        if tracing_mode == "real" and "get value out of a tracing tensor" in str(e):
            where = _user_frames(traceback.extract_tb(e.__traceback__))
            line = f"{where[-1].filename}:{where[-1].lineno}" if where else "<unknown>"
            raise _errors().UnsupportedError(
                f"fxpurify.trace(tracing_mode='real'): the program reads a traced tensor's value "
                f"(.item(), bool(tensor), a data-dependent branch) at {line}",
                hint="trace with tracing_mode='fake' (enough when the value does not depend on "
                     "the inputs, as in Hugging Face mask code), or move the data-dependent "
                     "decision out of the traced function") from e
        raise
    if tracing_mode == "real":
        _unify_fake_metadata(gm, dyn)
    _rename_placeholders(gm, _input_names(fn, args, kwargs, per_arg))
    _set_class_name(gm, getattr(fn, "__name__", "") or type(fn).__name__)
    gm.meta["fxpurify_capture"] = {"out_spec": state.get("out_spec"), "tracing_mode": tracing_mode,
                                   "pre_dispatch": pre_dispatch}
    return gm


# --------------------------------------------------------------------------------------------
# public: trace
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ModuleCapture:
    """A module traced with its state lifted: ``graph_module(*params, *buffers, *user_inputs)``.

    ``param_names`` / ``buffer_names`` are the fully qualified names, in placeholder order; the
    user inputs follow (the tensor leaves of ``(args, kwargs)``, in order). ``out_spec`` is the
    pytree spec of the model's output, or ``None`` when it returned one tensor.
    """

    graph_module: torch.fx.GraphModule
    param_names: list[str]
    buffer_names: list[str]
    out_spec: Any

    @property
    def num_state(self) -> int:
        return len(self.param_names) + len(self.buffer_names)


def _named_state(model: torch.nn.Module):
    params = dict(model.named_parameters(remove_duplicate=True))
    buffers = dict(model.named_buffers(remove_duplicate=True))
    return params, buffers


def trace_module(model: torch.nn.Module, *example_inputs, tracing_mode: str = "real",
                 pre_dispatch: bool = False, **example_kwargs) -> ModuleCapture:
    """Trace ``model`` with parameters and buffers as leading placeholders (see module docs).

    Tied weights appear once (``remove_duplicate=True``), under their first name. Training mode
    is whatever ``model`` is in now: a train-mode BatchNorm traces to a ``batch_norm`` that
    updates running statistics (the pass turns that into explicit copies).
    """
    params, buffers = _named_state(model)
    p_names, b_names = list(params), list(buffers)
    n_state = len(p_names) + len(b_names)

    def _stateful_call(*flat):
        state = dict(zip(p_names + b_names, flat[:n_state]))
        args = flat[n_state:n_state + len(example_inputs)]
        kw = dict(zip(example_kwargs, flat[n_state + len(example_inputs):]))
        return torch.func.functional_call(model, state, args, kw, tie_weights=True, strict=False)

    prefix = [f"p_{_sanitize(n)}" for n in p_names] + [f"b_{_sanitize(n)}" for n in b_names]
    # Arguments stay nested (a list of cache tensors is one argument); _make_flat_callable flattens.
    all_args = (*params.values(), *buffers.values(), *example_inputs, *example_kwargs.values())
    fwd = model.forward
    gm = _make_fx_trace(_stateful_call, all_args, {}, tracing_mode=tracing_mode,
                        pre_dispatch=pre_dispatch)
    user_per_arg = [sum(_is_dynamic_leaf(x) for x in pytree.tree_leaves(a))
                    for a in (*example_inputs, *example_kwargs.values())]
    names = prefix + _input_names(fwd, example_inputs, example_kwargs, user_per_arg)
    _rename_placeholders(gm, names)
    _set_class_name(gm, type(model).__name__)
    gm.meta["fxpurify_capture"].update(param_names=p_names, buffer_names=b_names)
    return ModuleCapture(gm, p_names, b_names, gm.meta["fxpurify_capture"]["out_spec"])


def _lift_to_get_attr(capture: ModuleCapture, model: torch.nn.Module) -> torch.fx.GraphModule:
    """Replace state placeholders by ``get_attr`` nodes bound to the model's own tensors."""
    gm = capture.graph_module
    params, buffers = _named_state(model)
    root = torch.nn.Module()
    targets = []
    for fqn, t in [*params.items(), *buffers.items()]:
        target = _sanitize(fqn)
        # Register on a flat root: the same tensor objects, so writes land in the model.
        if isinstance(t, torch.nn.Parameter):
            root.register_parameter(target, t)
        else:
            root.register_buffer(target, t)
        targets.append(target)
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"][:capture.num_state]
    for node, target in zip(phs, targets):
        with gm.graph.inserting_before(node):
            # create_node, not graph.get_attr: the attribute lives on the new root, not on gm.
            new = gm.graph.create_node("get_attr", target)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    # get_attr nodes must follow the placeholders for the codegen to read naturally.
    first_real = next((n for n in gm.graph.nodes if n.op != "placeholder" and n.op != "get_attr"), None)
    if first_real is not None:
        for n in [n for n in gm.graph.nodes if n.op == "get_attr" and n.target in set(targets)]:
            first_real.prepend(n)
    for name, sub in gm.named_children():  # higher-order op bodies
        root.add_module(name, sub)
    mine = set(targets)
    for node in gm.graph.nodes:  # make_fx's own constants (_tensor_constant0, ...)
        if node.op == "get_attr" and node.target not in mine and not hasattr(root, node.target):
            setattr(root, node.target, _fetch_attr(gm, node.target))
    out = torch.fx.GraphModule(root, gm.graph, class_name=type(model).__name__ + "Graph")
    out.meta.update(gm.meta)
    out.meta["fxpurify_capture"]["state_as"] = "get_attr"
    out.graph.lint()
    return out


def trace(fn_or_module: Callable, *example_inputs, tracing_mode: str = "real",
          pre_dispatch: bool = False, **example_kwargs) -> torch.fx.GraphModule:
    """The ATen-level graph of ``fn_or_module(*example_inputs, **example_kwargs)``, mutations kept.

    * ``tracing_mode``: ``"real"`` (runs the program once, on clones of the inputs), ``"fake"``
      (no data: what Hugging Face models need, their mask code calls ``.item()`` in real mode)
      or ``"symbolic"`` (symbolic shapes: ``SymInt`` placeholders / ``sym_size`` nodes).
    * ``pre_dispatch=True`` records grad-mode changes (``torch._C._set_grad_enabled`` nodes);
      without it ``with torch.no_grad()`` regions are invisible in the graph.
    * Every tensor node has a fake ``meta["val"]``; nodes made by the user's code have
      ``meta["stack_trace"]`` with the user's ``file:line`` (innermost frame last).

    Calling convention of the result: the tensor (and ``SymInt``) leaves of
    ``(example_inputs, example_kwargs)`` positionally, in order; non-tensor leaves are baked in.
    It returns one tensor if the callable did, else the flattened output leaves as a tuple (the
    pytree spec is in ``gm.meta["fxpurify_capture"]["out_spec"]``).

    For an ``nn.Module`` the graph reads parameters and buffers through ``get_attr`` nodes bound
    to the model's *own* tensors (not copies), so ``gm(x)`` is called like ``model(x)`` and a
    purified graph's epilogue ``copy_`` into a buffer updates the model's buffer. Use
    :func:`trace_module` for the lifted form (state as placeholders).
    """
    if isinstance(fn_or_module, torch.nn.Module):
        cap = trace_module(fn_or_module, *example_inputs, tracing_mode=tracing_mode,
                           pre_dispatch=pre_dispatch, **example_kwargs)
        return _lift_to_get_attr(cap, fn_or_module)
    if not callable(fn_or_module):
        raise TypeError(f"fxpurify.trace expects a function or nn.Module, got {type(fn_or_module).__name__}")
    return _make_fx_trace(fn_or_module, example_inputs, example_kwargs, tracing_mode=tracing_mode,
                          pre_dispatch=pre_dispatch)


# --------------------------------------------------------------------------------------------
# public: Dynamo graphs
# --------------------------------------------------------------------------------------------

def _lowering_inputs(example_inputs: Sequence[Any]):
    """Inputs (and the fake mode) for re-tracing a Dynamo graph, in Dynamo's fake mode if possible.

    Inside a backend, ``detect_fake_mode`` finds the tracing context's mode; converting each real
    input with the symbolic context and source Dynamo recorded (``tensor_to_context``, as
    AOTAutograd's ``process_inputs`` does) gives back the *same* symbols, so ``SymInt`` inputs and
    tensor sizes agree, and ``.item()`` on lifted float attributes (BatchNorm ``momentum``/``eps``
    under ``dynamic=True``) resolves to Dynamo's memo instead of a data-dependent error.

    Outside a backend (no tracing context, real inputs) we use a fresh ``FakeTensorMode`` with a
    ``ShapeEnv`` and static shapes; ``SymInt`` inputs are replaced by their hints, and ``.item()``
    of an input is answered from the real input (see :class:`_LoweringInterpreter`): the result
    is specialised to those values, as Dynamo's own lowering specialises momentum/eps.
    Returns ``(fake_mode, inputs, item_values)``.
    """
    from torch._guards import TracingContext, detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    fake_mode = detect_fake_mode(example_inputs)
    if fake_mode is None:
        fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=False)
        items, inputs = {}, []
        for i, x in enumerate(example_inputs):
            if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)) and x.node.has_hint():
                x = x.node.hint
            if isinstance(x, torch.Tensor):
                if x.numel() == 1:
                    items[i] = x.item()
                x = fake_mode.from_tensor(x, static_shapes=True)
            inputs.append(x)
        return fake_mode, inputs, items
    ctx = TracingContext.try_get()

    def convert(x):
        if isinstance(x, FakeTensor):
            return x if x.fake_mode is fake_mode else fake_mode.from_tensor(x)
        if isinstance(x, torch.Tensor):
            sc = ctx.tensor_to_context.get(x) if ctx is not None else None
            if sc is None:
                return fake_mode.from_tensor(x, static_shapes=False)
            return fake_mode.from_tensor(x, static_shapes=False, symbolic_context=sc,
                                         source=sc.tensor_source, trace=False)
        return x

    return fake_mode, [convert(x) for x in example_inputs], {}


class _LoweringInterpreter(torch.fx.Interpreter):
    """Runs a Dynamo graph for ``make_fx``; answers ``.item()`` of inputs whose value we know."""

    def __init__(self, gm: torch.fx.GraphModule, items: dict[int, Any]):
        super().__init__(gm)
        phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self._items = {phs[i]: v for i, v in items.items() if i < len(phs)}

    def run_node(self, n: torch.fx.Node) -> Any:
        if (n.op == "call_method" and n.target == "item" and n.args
                and n.args[0] in self._items):
            return self._items[n.args[0]]
        return super().run_node(n)


def lower_dynamo_graph(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> torch.fx.GraphModule:
    """Lower a torch-level Dynamo graph to ATen, keeping its mutations.

    ``make_fx(Interpreter(gm).run, pre_dispatch=True)`` under Dynamo's fake mode: the interpreter
    sets each node as the "current meta" and ``preserve_node_meta`` copies its ``stack_trace``
    (Dynamo's, pointing at the user's code) onto every ATen node it produces; ``pre_dispatch``
    records ``torch._C._set_grad_enabled`` for ``no_grad`` regions. Placeholders keep Dynamo's
    names (``l_x_``, ``l_self_modules_bn_buffers_running_mean_``) and order, so the result is
    called exactly like ``gm``. Call it from inside the backend, where the tracing context lives
    (outside one it works on real inputs too, but specialises ``SymInt`` inputs).
    """
    fake_mode, inputs, items = _lowering_inputs(example_inputs)
    with fx_traceback.preserve_node_meta(), fake_mode:
        lowered = make_fx(_LoweringInterpreter(gm, items).run, pre_dispatch=True)(*inputs)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    _rename_placeholders(lowered, names)
    lowered.meta["fxpurify_capture"] = {"out_spec": None, "tracing_mode": "dynamo", "pre_dispatch": True}
    log.debug("lowered Dynamo graph: %d → %d nodes", len(gm.graph.nodes), len(lowered.graph.nodes))
    return lowered


# --------------------------------------------------------------------------------------------
# public: metadata
# --------------------------------------------------------------------------------------------

def _returns_nothing(node: torch.fx.Node) -> bool:
    t = node.target
    if node.op == "output" or t is torch._C._set_grad_enabled:
        return True
    if isinstance(t, torch._ops.OpOverload):
        return len(t._schema.returns) == 0
    return False


def needs_fake_metadata(gm: torch.fx.GraphModule) -> bool:
    """True when some value-producing node has no ``meta["val"]``."""
    for node in gm.graph.nodes:
        if "val" in node.meta or _returns_nothing(node):
            continue
        if node.op == "get_attr" and not isinstance(_fetch_attr(gm, node.target), torch.Tensor):
            continue  # submodules (higher-order op bodies) have no value
        return True
    return False


def _fetch_attr(gm: torch.nn.Module, target: str):
    obj = gm
    for atom in target.split("."):
        obj = getattr(obj, atom, None)
    return obj


def ensure_fake_metadata(gm: torch.fx.GraphModule, example_inputs: Sequence[Any] | None = None
                         ) -> torch.fx.GraphModule:
    """``gm`` itself when it has fake ``meta["val"]`` everywhere, else a copy that has.

    The copy has its own graph (``copy.deepcopy(gm.graph)``, which keeps ``_codegen`` and shallow
    copies of each node's meta) but shares parameters, buffers and submodules with ``gm``, so the
    given graph is never modified and no state is duplicated. Values come from
    ``FakeTensorProp`` over ``example_inputs`` in their fake mode (or a fresh one); running an
    in-place op on fake tensors changes nothing real.

    Raises ``MissingMetadataError`` when metadata is missing and no example inputs are given.
    """
    if not needs_fake_metadata(gm):
        return gm
    if example_inputs is None:
        missing = [n.name for n in gm.graph.nodes
                   if "val" not in n.meta and not _returns_nothing(n) and n.op != "get_attr"]
        raise _errors().MissingMetadataError(
            f"graph nodes {missing[:5]}{'…' if len(missing) > 5 else ''} have no meta['val'] "
            "(fake tensor metadata) and no example_inputs were given: pass example_inputs "
            "(one per placeholder) so fxpurify can propagate fake tensors, or capture the graph "
            "with fxpurify.trace / make_fx, which record it.")
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensorMode

    graph = copy.deepcopy(gm.graph)
    out = torch.fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    out.meta.update(gm.meta)
    from .metadata import propagate
    mode = detect_fake_mode(example_inputs) or FakeTensorMode(allow_non_fake_inputs=True)
    inputs = [mode.from_tensor(x) if isinstance(x, torch.Tensor) and getattr(x, "fake_mode", None)
              is not mode else x for x in example_inputs]
    propagate(out, mode, inputs)
    return out


# --------------------------------------------------------------------------------------------
# public: input check
# --------------------------------------------------------------------------------------------

# Callables that may appear in an ATen-level graph although they are not OpOverloads.
_ATEN_LEVEL_FUNCTIONS = {torch._C._set_grad_enabled}
_TORCH_LEVEL_MODULES = ("torch", "torch.nn.functional", "torch._C._nn", "torch._C._linalg",
                        "torch._C._fft", "torch._C._special", "torch.functional", "torch._tensor",
                        "torch._C._VariableFunctions", "torch.nn.modules")


def _is_torch_level_target(target: Any) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return False
    if isinstance(target, torch._ops.OpOverloadPacket):
        return True  # make_fx always resolves the overload; a packet means torch-level tracing
    if target in _ATEN_LEVEL_FUNCTIONS:
        return False
    name = getattr(target, "__name__", "")
    if name.startswith(("sym_", "_sym_", "_check", "_assert")):
        return False
    mod = getattr(target, "__module__", None) or ""
    if isinstance(target, type(torch.Tensor.add_)) or getattr(target, "__objclass__", None) in (
            torch._C.TensorBase, torch.Tensor):
        return True  # Tensor methods used as functions
    return mod in _TORCH_LEVEL_MODULES or mod.startswith("torch.nn.")


def torch_level_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The nodes that make ``gm`` a torch-level graph (empty for an ATen-level graph).

    Evidence: ``call_method`` / ``call_module`` nodes, and ``call_function`` nodes whose target is
    a torch-level callable (``torch.relu``, ``F.relu``, ``torch._C._nn.linear``, a Tensor method,
    an ``OpOverloadPacket``) or an ``operator`` function applied to a tensor (``x + y``,
    ``operator.iadd``). ``operator.getitem`` of a multi-output op, SymInt arithmetic,
    higher-order ops, ``_set_grad_enabled`` and autocast markers are ATen-level. Unknown user
    functions (``torch.fx.wrap``) are not counted.
    """
    import operator

    found: list[torch.fx.Node] = []
    found_set: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op in ("call_method", "call_module"):
            found.append(node)
            found_set.add(node)
            continue
        if node.op != "call_function":
            continue
        t = node.target
        if getattr(t, "__module__", None) in ("_operator", "operator"):
            if t is operator.getitem:
                continue
            # on a tensor (by metadata), or on the result of a torch-level call (no metadata:
            # symbolic_trace); SymInt arithmetic of ATen graphs reads sym_size nodes instead
            ins = node.all_input_nodes
            if any(isinstance(a.meta.get("val", a.meta.get("example_value")), torch.Tensor)
                   for a in ins) or any(a in found_set for a in ins):
                found.append(node)
                found_set.add(node)
            continue
        if _is_torch_level_target(t):
            found.append(node)
            found_set.add(node)
    return found


def is_torch_level_graph(gm: torch.fx.GraphModule) -> bool:
    """True for graphs from ``symbolic_trace`` or Dynamo, which purify cannot take directly
    (see :func:`torch_level_nodes` for what counts); lower them with :func:`trace` or
    :func:`lower_dynamo_graph` first."""
    return bool(torch_level_nodes(gm))
