"""Module-level API: purify an ``nn.Module`` and get back something you call like the model.

Sits beside the pipeline: capture (:func:`fxpurify.capture.trace_module`, state lifted to
placeholders) → :func:`fxpurify.purify` → :class:`PurifiedModule`, which on every call feeds the
pure graph the model's *current* parameters and buffers, then the user's inputs. Why that makes
state land where it belongs:

* the pure graph ends with one ``copy_`` (or ``write_back_input``) per mutated input; the inputs
  *are* the model's buffers, so BatchNorm running statistics and KV caches are updated in the
  model's own tensors — no copies of the state exist anywhere;
* parameters enter as graph inputs, so eager autograd through the pure graph accumulates
  ``.grad`` on the model's own ``nn.Parameter`` objects, and an optimizer built on
  ``model.parameters()`` (or on the ``PurifiedModule``'s, the same objects) just works;
* tensors are looked up by name on each call, so a reassigned buffer is seen by the next call;
  when the state's devices, dtypes or shapes change (``model.to(...)``, ``.double()``), the
  graph is traced again, since its constants and dtypes were specialised to the old state.

A graph is specialised to what tracing saw: the training mode (``model.train()`` /
``.eval()`` select different graphs — the other one is traced on first use, from that call's
inputs), the pytree structure of the call and its non-tensor arguments (checked on every
call; a mismatch raises instead of silently computing something else).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from .capture import ModuleCapture, _is_dynamic_leaf, trace_module

log = logging.getLogger(__name__)

__all__ = ["PurifiedModule", "purify_module", "PurifiedFunction", "purify_function"]


def _errors():
    from . import errors
    return errors


@dataclasses.dataclass
class _Compiled:
    """One purified graph and the call structure it was traced for."""

    capture: ModuleCapture
    pure: torch.fx.GraphModule
    in_spec: Any                 # pytree spec of (args, kwargs) at trace time
    kwarg_names: tuple           # keyword names, in trace order
    constants: dict              # leaf index -> baked-in non-tensor value
    state_meta: tuple = ()       # (device, dtype, shape) of each state tensor at trace time


def _default_purify(gm: torch.fx.GraphModule, example_inputs) -> torch.fx.GraphModule:
    from .pipeline import purify
    return purify(gm, example_inputs)


class PurifiedModule(torch.nn.Module):
    """``model`` with its forward replaced by a pure graph; parameters and buffers shared.

    Attributes: ``graph_module`` (the pure ``GraphModule`` for the current training mode,
    inputs ``(*params, *buffers, *user_tensors)``), ``original_graph`` (the mutating graph it
    came from, same inputs), ``report`` (``fxpurify.report_of(graph_module)``), ``model`` (the
    wrapped model, a registered submodule, so ``.parameters()`` / ``.state_dict()`` / ``.train()``
    reach it).
    """

    def __init__(self, model: torch.nn.Module, example_inputs: tuple, example_kwargs: dict, *,
                 tracing_mode: str = "real", pre_dispatch: bool = False,
                 purify_fn: Callable | None = None):
        super().__init__()
        self.model = model
        self._trace_options = {"tracing_mode": tracing_mode, "pre_dispatch": pre_dispatch}
        self._purify_fn = purify_fn or _default_purify
        self._compiled: dict[bool, _Compiled] = {}
        try:
            self.__signature__ = inspect.signature(model.forward)
        except (TypeError, ValueError):
            pass
        self._compile(tuple(example_inputs), dict(example_kwargs))

    # -- tracing ---------------------------------------------------------------------------

    def _compile(self, args: tuple, kwargs: dict) -> _Compiled:
        mode = self.model.training
        cap = trace_module(self.model, *args, **self._trace_options, **kwargs)
        state = self._state(cap)
        user = [x for x in pytree.tree_leaves((args, kwargs)) if _is_dynamic_leaf(x)]
        pure = self._purify_fn(cap.graph_module, [*state, *user])
        leaves, spec = pytree.tree_flatten((args, kwargs))
        constants = {i: v for i, v in enumerate(leaves) if not _is_dynamic_leaf(v)}
        compiled = _Compiled(cap, pure, spec, tuple(kwargs), constants, _state_meta(state))
        self._compiled[mode] = compiled
        log.info("purified %s (training=%s): %d → %d nodes", type(self.model).__name__, mode,
                 len(cap.graph_module.graph.nodes), len(pure.graph.nodes))
        return compiled

    def _state(self, cap: ModuleCapture) -> list[torch.Tensor]:
        m = self.model
        return [m.get_parameter(n) for n in cap.param_names] + [m.get_buffer(n) for n in cap.buffer_names]

    @property
    def _current(self) -> _Compiled:
        try:
            return self._compiled[self.model.training]
        except KeyError:
            raise RuntimeError(
                f"no graph traced yet for training={self.model.training}; call the module once "
                "(it traces on first use) or purify_module() in this mode") from None

    # -- public attributes -----------------------------------------------------------------

    @property
    def graph_module(self) -> torch.fx.GraphModule:
        return self._current.pure

    @property
    def original_graph(self) -> torch.fx.GraphModule:
        return self._current.capture.graph_module

    @property
    def report(self):
        from .report import report_of
        return report_of(self._current.pure)

    # -- calling ---------------------------------------------------------------------------

    @staticmethod
    def _flat_user_inputs(compiled: _Compiled, args: tuple, kwargs: dict) -> list:
        """The tensor leaves of a call, after checking it has the traced structure and constants."""
        if set(kwargs) != set(compiled.kwarg_names):
            raise _errors().FxPurifyError(
                f"called with keyword arguments {sorted(kwargs)}, but the graph was traced with "
                f"{sorted(compiled.kwarg_names)}",
                hint="call with the same arguments as the example inputs, or purify again")
        ordered = {k: kwargs[k] for k in compiled.kwarg_names}
        leaves, spec = pytree.tree_flatten((tuple(args), ordered))
        if spec != compiled.in_spec:
            raise _errors().FxPurifyError(
                "the call's argument structure differs from the example inputs the graph was "
                f"traced with:\n  traced: {compiled.in_spec}\n  called: {spec}",
                hint="call with the same structure as the example inputs, or purify again")
        for i, v in compiled.constants.items():
            if _is_dynamic_leaf(leaves[i]) or not _same_constant(leaves[i], v):
                raise _errors().FxPurifyError(
                    f"non-tensor argument #{i} is {leaves[i]!r}, but the graph was traced with "
                    f"{v!r} baked in", hint="purify again with these arguments")
        return [x for x in leaves if _is_dynamic_leaf(x)]

    def forward(self, *args, **kwargs):
        compiled = self._compiled.get(self.model.training)
        if compiled is None:
            compiled = self._compile(args, kwargs)
        state = self._state(compiled.capture)
        if _state_meta(state) != compiled.state_meta:
            # model.to(device/dtype) or a reassigned buffer: the graph (its constants, dtypes)
            # was specialised to the old state; trace again rather than compute something else.
            log.info("state of %s changed device/dtype/shape: tracing again", type(self.model).__name__)
            compiled = self._compile(args, kwargs)
            state = self._state(compiled.capture)
        user = self._flat_user_inputs(compiled, args, kwargs)
        out = compiled.pure(*state, *user)
        spec = compiled.capture.out_spec
        if spec is None:
            return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
        return pytree.tree_unflatten(list(out), spec)

    def extra_repr(self) -> str:
        modes = ", ".join(("train" if m else "eval") for m in self._compiled)
        return f"graphs traced for: {modes}"


def _state_meta(state) -> tuple:
    return tuple((t.device, t.dtype, tuple(t.shape)) for t in state)


def _same_constant(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # objects without a usable __eq__: identity is the best we can say
        return a is b


def purify_module(model: torch.nn.Module, *example_inputs, tracing_mode: str = "real",
                  pre_dispatch: bool = False, purify_fn: Callable | None = None,
                  **example_kwargs) -> PurifiedModule:
    """Trace ``model(*example_inputs, **example_kwargs)``, purify it, return a :class:`PurifiedModule`.

    Tracing runs on clones of the state and inputs (``tracing_mode="real"``: one forward pass,
    and a transient copy of the state) or on fake tensors (``"fake"``: no data, no copy; what
    Hugging Face models need), so building the module changes nothing; the first call updates
    the model's buffers exactly as one eager call would. ``purify_fn(gm,
    example_inputs)`` replaces :func:`fxpurify.purify` (e.g. to compare against another pass).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"purify_module expects an nn.Module, got {type(model).__name__}; "
                        "for a function use fxpurify.purify(fxpurify.trace(fn, *inputs))")
    return PurifiedModule(model, example_inputs, example_kwargs, tracing_mode=tracing_mode,
                          pre_dispatch=pre_dispatch, purify_fn=purify_fn)


class PurifiedFunction:
    """A function's pure graph behind the function's own calling convention.

    ``fxpurify.trace`` flattens inputs to their tensor leaves and outputs to a tuple; this puts
    the structure back, so ``purify_function(f, *inputs)(*inputs)`` returns what ``f`` returns
    (``None`` for an optimizer step). Same attributes as :class:`PurifiedModule`.
    """

    def __init__(self, fn: Callable, example_inputs: tuple, example_kwargs: dict, *,
                 tracing_mode: str = "real", pre_dispatch: bool = False,
                 purify_fn: Callable | None = None):
        from .capture import trace

        self.fn = fn
        self.original_graph = trace(fn, *example_inputs, tracing_mode=tracing_mode,
                                    pre_dispatch=pre_dispatch, **example_kwargs)
        user = [x for x in pytree.tree_leaves((example_inputs, example_kwargs)) if _is_dynamic_leaf(x)]
        self.graph_module = (purify_fn or _default_purify)(self.original_graph, user)
        leaves, spec = pytree.tree_flatten((tuple(example_inputs), dict(example_kwargs)))
        self._in_spec, self._kwarg_names = spec, tuple(example_kwargs)
        self._constants = {i: v for i, v in enumerate(leaves) if not _is_dynamic_leaf(v)}
        self._out_spec = self.original_graph.meta["fxpurify_capture"]["out_spec"]
        try:
            self.__signature__ = inspect.signature(fn)
        except (TypeError, ValueError):
            pass

    @property
    def report(self):
        from .report import report_of
        return report_of(self.graph_module)

    def __call__(self, *args, **kwargs):
        compiled = _Compiled(None, self.graph_module, self._in_spec, self._kwarg_names,
                             self._constants)
        user = PurifiedModule._flat_user_inputs(compiled, args, kwargs)
        out = self.graph_module(*user)
        if self._out_spec is None:
            return out
        return pytree.tree_unflatten(list(out), self._out_spec)


def purify_function(fn: Callable, *example_inputs, tracing_mode: str = "real",
                    pre_dispatch: bool = False, purify_fn: Callable | None = None,
                    **example_kwargs) -> PurifiedFunction:
    """``fxpurify.purify(fxpurify.trace(fn, ...))`` wrapped to be called exactly like ``fn``."""
    return PurifiedFunction(fn, example_inputs, example_kwargs, tracing_mode=tracing_mode,
                            pre_dispatch=pre_dispatch, purify_fn=purify_fn)
