"""Measure one workload: pass time, graph sizes, and every run variant side by side.

Pass time is process CPU time (``time.process_time``) with ``torch.set_num_threads(1)`` (set by
``run.py``), median with min–max over repeats, per 1k input nodes, for three things on the same
traced graph: ``fxpurify.purify``, the anchor ``make_fx(torch.func.functionalize(gm))``, and the
floor — a plain walk that copies every node into a new graph plus ``recompile()``, the least any
graph-to-graph pass can cost.

Run variants (step time is wall time, median over repeats, after warm-up):

* ``eager``: the in-place program itself, the reference for every ratio;
* ``fxpurify``: the pure graph run on ATen kernels; ``+writeback``, ``+scatter``, ``+recover``:
  the same after ``fxpurify.recover.recover_memory`` with one or both options;
* ``anchor``: ``make_fx(functionalize(...))``'s graph run on ATen kernels;
* ``aot_eager``, ``inductor``, ``purify[eager]``, ``purify[inductor]``: ``torch.compile`` with
  those backends; their first call is the compile time.

Every variant's first step is compared with eager's first step (outputs and final inputs) and
the result is reported as ``ok``: a fast wrong variant must not look like a win.
Peak memory is :func:`fxpurify.memory.measure_peak` of one step. On CPU it tracks allocations
that pass through the dispatcher, so it is not reported for Inductor-compiled code (its kernels
allocate in C++) nor for Dynamo-compiled code (Dynamo does not trace under a foreign dispatch
mode); on CUDA ``max_memory_allocated`` covers every variant.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import statistics
import time
import traceback
from typing import Any, Callable

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from fxpurify.memory import measure_peak

from .workloads import Workload

log = logging.getLogger(__name__)

GRAPH_VARIANTS = ("eager", "fxpurify", "fxpurify+writeback", "fxpurify+scatter",
                  "fxpurify+recover", "anchor")
COMPILE_VARIANTS = ("aot_eager", "inductor", "purify[eager]", "purify[inductor]")
ALL_VARIANTS = GRAPH_VARIANTS + COMPILE_VARIANTS


@dataclasses.dataclass
class Timing:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, xs: list[float]) -> "Timing":
        return cls(statistics.median(xs), min(xs), max(xs), len(xs))


@dataclasses.dataclass
class PassResult:
    workload: str
    nodes_in: int
    fxpurify: Timing | None = None
    anchor: Timing | None = None
    floor: Timing | None = None
    fxpurify_nodes: int | None = None
    anchor_nodes: int | None = None
    fxpurify_copies: int | None = None
    anchor_copies: int | None = None
    fxpurify_dead: int | None = None
    anchor_dead: int | None = None
    extra_bytes: int | None = None
    error: str = ""


@dataclasses.dataclass
class RunResult:
    workload: str
    variant: str
    fwd_ms: float | None = None
    step_ms: float | None = None        # fwd+bwd for training workloads, else = fwd
    step_min_ms: float | None = None
    step_max_ms: float | None = None
    peak_bytes: int | None = None
    compile_s: float | None = None
    ok: bool | None = None
    rewrites: str = ""
    error: str = ""


@dataclasses.dataclass
class Settings:
    quick: bool = False
    pass_repeats: int = 5
    anchor_repeats: int = 3
    big_graph: int = 10_000          # at or above: anchor once, fxpurify 3 times
    min_step_reps: int = 5
    max_step_reps: int = 30
    step_budget_s: float = 0.5
    # scaling graphs: the variants that answer "what does purity cost at this size"
    scaling_variants: tuple = ("eager", "fxpurify", "fxpurify+recover", "anchor")
    # at or above: the anchor's pass time is still measured (once), its graph is not run (a
    # 50k-node input gives a ~120k-node anchor graph; running and memory-tracking it alone
    # would take minutes of the 15-minute budget)
    huge_graph: int = 40_000
    variants: tuple = ALL_VARIANTS


# ----------------------------------------------------------------------------- graph facts

def _n_calls(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function")


def _is_write_back(n: fx.Node) -> bool:
    if n.op != "call_function":
        return False
    if n.target is torch.ops.aten.copy_.default:
        return isinstance(n.args[0], fx.Node) and n.args[0].op in ("placeholder", "get_attr")
    return getattr(n.target, "__name__", "") == "write_back_input"


def _n_copies(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if _is_write_back(n))


def _n_dead(gm: fx.GraphModule) -> int:
    """call_function nodes nobody reads that have no effect (mutations, RNG, guards excluded)."""
    dead = 0
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.users:
            continue
        t = n.target
        if isinstance(t, torch._ops.OpOverload):
            if t._schema.is_mutable or torch.Tag.nondeterministic_seeded in t.tags:
                continue
        elif getattr(t, "_fxpurify_side_effect", False) or not isinstance(
                t, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
            if getattr(t, "__module__", "") != "_operator":
                continue  # Python callables (grad-mode switches, runtime guards): effects
        dead += 1
    return dead


# ----------------------------------------------------------------------------- capture

def trace(w: Workload) -> fx.GraphModule:
    import fxpurify

    return fxpurify.trace(w.fn, *w.make_inputs(), **w.trace_kwargs)


def anchor_graph(w: Workload, gm: fx.GraphModule) -> fx.GraphModule:
    """PyTorch's own functionalization: re-trace ``gm`` through ``FunctionalTensorMode``."""
    from torch.fx.experimental.proxy_tensor import make_fx

    mode = w.trace_kwargs.get("tracing_mode", "real")
    # The re-trace ends by writing the new values into the (real) inputs, under whatever grad
    # mode the graph's own `_set_grad_enabled` nodes left on; a leaf parameter that requires
    # grad refuses that. The ATen graph does not depend on requires_grad, so trace on detached
    # inputs.
    inputs = [t.detach() if isinstance(t, torch.Tensor) else t for t in w.make_inputs()]
    ctx = torch.no_grad() if w.no_grad else contextlib.nullcontext()
    with ctx:
        return make_fx(torch.func.functionalize(gm, remove="mutations_and_views"),
                       tracing_mode=mode)(*inputs)


def floor_walk(gm: fx.GraphModule) -> fx.GraphModule:
    """The least a graph-to-graph pass costs: copy every node, build a module, recompile."""
    g = fx.Graph()
    g._codegen = gm.graph._codegen
    out = g.graph_copy(gm.graph, {})
    g.output(out)
    return fx.GraphModule(gm, g)


def _cpu_time(fn: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def measure_pass(w: Workload, gm: fx.GraphModule, s: Settings) -> tuple[PassResult, Any, Any]:
    import fxpurify
    from fxpurify.recover import extra_bytes

    n = _n_calls(gm)
    res = PassResult(w.name, n)
    big = n >= s.big_graph
    reps = 1 if s.quick else (3 if big else s.pass_repeats)
    pure = anchor = None
    try:
        times = []
        for _ in range(reps):
            pure, t = _cpu_time(lambda: fxpurify.purify(gm))
            times.append(t)
        res.fxpurify = Timing.of(times)
        res.fxpurify_nodes = _n_calls(pure)
        res.fxpurify_copies = _n_copies(pure)
        res.fxpurify_dead = _n_dead(pure)
        res.extra_bytes = extra_bytes(pure, gm)
    except Exception as e:  # report, keep going: one failure must not sink the whole table
        res.error += f"fxpurify: {type(e).__name__}: {str(e)[:200]}; "
        log.debug("purify failed", exc_info=True)
    times = []
    for _ in range(reps):
        _, t = _cpu_time(lambda: floor_walk(gm))
        times.append(t)
    res.floor = Timing.of(times)
    try:
        areps = 1 if (s.quick or big) else s.anchor_repeats
        times = []
        for _ in range(areps):
            anchor, t = _cpu_time(lambda: anchor_graph(w, gm))
            times.append(t)
        res.anchor = Timing.of(times)
        res.anchor_nodes = _n_calls(anchor)
        res.anchor_copies = _n_copies(anchor)
        res.anchor_dead = _n_dead(anchor)
    except Exception as e:
        res.error += f"anchor: {type(e).__name__}: {str(e)[:200]}; "
        log.debug("anchor failed", exc_info=True)
    return res, pure, anchor


# ----------------------------------------------------------------------------- running

def _loss(out: Any) -> torch.Tensor | None:
    ts = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not ts:
        return None
    return functools.reduce(torch.add, [t.float().sum() for t in ts])


def _step(f: Callable, inputs: list, w: Workload, backward: bool) -> Any:
    ctx = torch.no_grad() if w.no_grad else contextlib.nullcontext()
    with ctx:
        out = f(*inputs)
    if backward:
        loss = _loss(out)
        if loss is not None:
            loss.backward()
    return out


def _zero_grads(inputs: list) -> None:
    for t in inputs:
        if isinstance(t, torch.Tensor):
            t.grad = None


def _time_steps(f: Callable, inputs: list, w: Workload, backward: bool, s: Settings) -> Timing:
    for _ in range(1 if s.quick else 2):
        _step(f, inputs, w, backward)
        _zero_grads(inputs)
    xs: list[float] = []
    spent = 0.0
    while len(xs) < s.max_step_reps and (len(xs) < s.min_step_reps or spent < s.step_budget_s):
        t0 = time.perf_counter()
        _step(f, inputs, w, backward)
        dt = time.perf_counter() - t0
        _zero_grads(inputs)
        xs.append(dt * 1e3)
        spent += dt
    return Timing.of(xs)


def _snapshot(out: Any, inputs: list, backward: bool) -> list:
    vals = [t.detach().clone() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    vals += [t.detach().clone() for t in inputs if isinstance(t, torch.Tensor)]
    if backward:
        vals += [t.grad.clone() for t in inputs
                 if isinstance(t, torch.Tensor) and t.grad is not None]
    return vals


def _same(a: list, b: list, loose: bool) -> bool:
    if len(a) != len(b):
        return False
    tol = dict(rtol=1e-3, atol=1e-3) if loose else dict(rtol=1e-4, atol=1e-5)
    try:
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **tol, equal_nan=True)
    except AssertionError:
        return False
    return True


@contextlib.contextmanager
def cold_compile_caches():
    """First-call compile time means a cold compile: Inductor's on-disk FX graph cache and
    AOTAutograd's cache would otherwise turn a second benchmark run into cache hits."""
    import torch._functorch.config as fconfig
    import torch._inductor.config as iconfig

    with iconfig.patch(fx_graph_cache=False), fconfig.patch(enable_autograd_cache=False):
        yield


def _compile(name: str, fn: Callable) -> Callable:
    torch._dynamo.reset()
    if name in ("aot_eager", "inductor"):
        return torch.compile(fn, backend=name)
    from fxpurify.backend import purify_backend

    inner = name[len("purify["):-1]
    return torch.compile(fn, backend=functools.partial(purify_backend, options={"inner": inner}))


def measure_runs(w: Workload, pure: Any, anchor: Any, s: Settings) -> list[RunResult]:
    from fxpurify.recover import recover_memory

    backward = w.train
    graphs: dict[str, Any] = {"eager": w.fn}
    if pure is not None:
        graphs["fxpurify"] = pure
        for name, ewb, sc in (("fxpurify+writeback", True, False),
                              ("fxpurify+scatter", False, True),
                              ("fxpurify+recover", True, True)):
            wanted = s.scaling_variants if w.group == "scaling" else s.variants
            if name in s.variants and name in wanted:
                graphs[name] = recover_memory(pure, early_writeback=ewb, inplace_scatter=sc)
    if anchor is not None:
        graphs["anchor"] = anchor

    # eager reference: first step on fresh inputs
    ref_inputs = w.make_inputs()
    ref = _snapshot(_step(w.fn, ref_inputs, w, backward), ref_inputs, backward)

    results = []
    with cold_compile_caches():
        _measure_variants(w, graphs, ref, backward, anchor, s, results)
    torch._dynamo.reset()
    return results


def _measure_variants(w: Workload, graphs: dict, ref: list, backward: bool, anchor: Any,
                      s: Settings, results: list) -> None:
    from fxpurify.recover import records_of

    order = [v for v in s.variants if v in graphs or v in COMPILE_VARIANTS]
    if w.group == "scaling":
        order = [v for v in order if v in s.scaling_variants]
        if anchor is not None and _n_calls(anchor) and len(anchor.graph.nodes) >= 2 * s.huge_graph:
            order = [v for v in order if v != "anchor"]
    for v in order:
        if v in COMPILE_VARIANTS and not w.compile_ok:
            continue
        r = RunResult(w.name, v)
        try:
            inputs = w.make_inputs()
            if v in COMPILE_VARIANTS:
                f = _compile(v, w.compile_fn or w.fn)
                t0 = time.perf_counter()
                out = _step(f, inputs, w, backward)
                r.compile_s = time.perf_counter() - t0
            else:
                f = graphs[v]
                out = _step(f, inputs, w, backward)
                if v.startswith("fxpurify+"):
                    r.rewrites = str(len(records_of(f)))
            r.ok = _same(_snapshot(out, inputs, backward), ref, loose="inductor" in v)
            _zero_grads(inputs)
            del out
            inputs = w.make_inputs()
            if backward:  # forward alone, autograd recording as in training
                r.fwd_ms = _time_steps(f, inputs, w, False, s).median
            tt = _time_steps(f, inputs, w, backward, s)
            r.step_ms, r.step_min_ms, r.step_max_ms = tt.median, tt.min, tt.max
            if not backward:
                r.fwd_ms = tt.median
            if v not in COMPILE_VARIANTS:
                _, st = measure_peak(lambda: _step(f, inputs, w, backward))
                _zero_grads(inputs)
                r.peak_bytes = st.peak
        except Exception as e:
            r.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            log.debug("variant %s failed:\n%s", v, traceback.format_exc())
        results.append(r)
        gc.collect()
