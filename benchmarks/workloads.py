"""Benchmark workloads: each one a mutating program with flat tensor inputs.

A :class:`Workload` is what every variant of ``variants.py`` runs: ``fn(*inputs)`` is the eager,
in-place program (the reference), ``make_inputs()`` gives fresh inputs, ``train`` says whether a
step is forward+backward (the loss is the sum of the outputs), ``no_grad`` whether a step runs
under ``torch.no_grad()`` (optimizer steps, decode steps). The models come from
``fxpurify.models`` (the capture engineer's built-in programs) at benchmark sizes; the
synthetic scaling graphs are made here.

Sizes are chosen so that the price of purity is visible (a KV cache of a few MiB, 100 optimizer
parameters) while a full run stays under 15 minutes on a 2-core CPU; ``quick=True`` shrinks
everything for the CI smoke test.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["Workload", "build_workloads", "WORKLOAD_NAMES", "synthetic"]


@dataclasses.dataclass
class Workload:
    name: str
    description: str
    fn: Callable[..., Any]
    make_inputs: Callable[[], list]
    train: bool = False
    no_grad: bool = False
    trace_kwargs: dict = dataclasses.field(default_factory=dict)
    group: str = "model"          # "model" | "scaling"
    compile_ok: bool = True       # run the torch.compile variants on it
    compile_fn: Callable[..., Any] | None = None  # what torch.compile gets, if not `fn`


def _module_workload(name: str, desc: str, model: nn.Module, inputs: tuple, *, train: bool,
                     no_grad: bool = False, trace_kwargs: dict | None = None) -> Workload:
    """State (params, buffers) becomes leading flat inputs, as ``fxpurify.capture`` lifts it."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    names = list(params) + list(buffers)
    n_state = len(names)
    flat_in, spec = tree_flatten(inputs)

    def fn(*flat):
        state = dict(zip(names, flat[:n_state]))
        args = tree_unflatten(list(flat[n_state:]), spec)
        return torch.func.functional_call(model, state, tuple(args), strict=False)

    fn.__name__ = name

    def make_inputs():
        out = []
        for k, t in [*params.items(), *buffers.items()]:
            c = t.detach().clone()
            if train and isinstance(t, nn.Parameter):
                c.requires_grad_(True)
            out.append(c)
        out.extend(x.clone() if isinstance(x, torch.Tensor) else x for x in flat_in)
        return out

    return Workload(name, desc, fn, make_inputs, train=train, no_grad=no_grad,
                    trace_kwargs=dict(trace_kwargs or {}))


# ----------------------------------------------------------------------------- models

def _kv_decode(quick: bool) -> Workload:
    from fxpurify.models import TinyTransformerBlock

    dim, heads, max_len, batch = (32, 4, 64, 1) if quick else (256, 8, 1024, 4)
    torch.manual_seed(0)
    model = TinyTransformerBlock(dim=dim, heads=heads, max_len=max_len, batch=batch).eval()
    with torch.no_grad():
        model(torch.randn(batch, 8, dim), torch.arange(8))
    x, pos = torch.randn(batch, 1, dim), torch.tensor([8])
    cache_mib = 2 * batch * max_len * dim * 4 / 2**20
    return _module_workload(
        "kv_decode", f"decoder block decode step, static KV cache {cache_mib:.1f} MiB "
        f"(index_copy_, index_put_), batch {batch}, dim {dim}", model, (x, pos),
        train=False, no_grad=True)


def _cnn_train(quick: bool) -> Workload:
    from fxpurify.models import TinyCNN

    ch, hw, batch = (8, 8, 4) if quick else (32, 32, 16)
    torch.manual_seed(0)
    model = TinyCNN(channels=ch).train()
    x = torch.randn(batch, 3, hw, hw)
    return _module_workload(
        "cnn_train", f"ResNet-style CNN, BatchNorm train + ReLU(inplace), fwd+bwd, "
        f"{ch} ch, {batch}x3x{hw}x{hw}", model, (x,), train=True)


@contextlib.contextmanager
def _capturable_on_cpu():
    """``torch.optim`` refuses ``capturable=True`` on CPU unless ``torch.compiler.is_compiling()``;
    the math does not depend on the device, so eager and tracing set the flag (as
    ``fxpurify.models`` does). Never used under ``torch.compile``: Dynamo would guard on the
    global flag, see it change on every exit, and recompile on every call."""
    old = getattr(torch.compiler, "_is_compiling_flag", None)
    if old is None:
        yield
        return
    torch.compiler._is_compiling_flag = True
    try:
        yield
    finally:
        torch.compiler._is_compiling_flag = old


def _adam_step(kind: str, foreach: bool, *, set_flag: bool) -> Callable:
    from torch.optim.adam import adam
    from torch.optim.adamw import adamw

    fn = {"adam": adam, "adamw": adamw}[kind]
    wd = 0.0 if kind == "adam" else 1e-2

    def step(params, grads, exp_avgs, exp_avg_sqs, state_steps):
        flag = _capturable_on_cpu() if set_flag else contextlib.nullcontext()
        with torch.no_grad(), flag:
            fn(params, grads, exp_avgs, exp_avg_sqs, [], state_steps, foreach=foreach,
               capturable=True, amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-3,
               weight_decay=wd, eps=1e-8, maximize=False)

    return step


def _optimizer(kind: str, foreach: bool, quick: bool) -> Workload:
    n = 10 if quick else 100
    shapes = [(64, 64), (64,), (128, 64), (256,)] if not quick else [(8, 8), (8,)]
    torch.manual_seed(0)
    shp = [shapes[i % len(shapes)] for i in range(n)]
    base = ([torch.randn(s) for s in shp], [torch.randn(s) for s in shp],
            [torch.randn(s).abs() * 0.1 for s in shp], [torch.rand(s) * 0.01 for s in shp],
            [torch.tensor(3.0) for _ in shp])
    flat, spec = tree_flatten(base)
    n_params = len(base[0])

    def flat_step(step):
        def fn(*flat_args):
            step(*tree_unflatten(list(flat_args), spec))
            return ()

        fn.__name__ = f"{kind}_step"
        return fn

    def make_inputs():
        out = [t.clone() for t in flat]
        for t in out[:n_params]:
            t.requires_grad_(True)
        return out

    nbytes = sum(t.numel() * 4 for t in base[0])
    name = f"{kind}{'_foreach' if foreach else ''}"
    return Workload(name, f"{kind} step, {n} params ({nbytes / 2**20:.2f} MiB), "
                    f"foreach={foreach}, capturable=True", flat_step(_adam_step(kind, foreach,
                                                                              set_flag=True)),
                    make_inputs, train=False, no_grad=True, trace_kwargs={"pre_dispatch": True},
                    compile_fn=flat_step(_adam_step(kind, foreach, set_flag=False)))


def _gpt2_train(quick: bool) -> Workload:
    from transformers import GPT2Config, GPT2LMHeadModel

    layers, emb, seq = (1, 32, 8) if quick else (2, 128, 64)
    cfg = GPT2Config(vocab_size=512, n_positions=128, n_embd=emb, n_layer=layers, n_head=4,
                     use_cache=False, attn_implementation="eager", bos_token_id=0,
                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (2, seq))

    class LossOnly(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, labels=ids).loss

    return _module_workload("gpt2_train", f"HF GPT-2 training step, {layers} layers, n_embd "
                            f"{emb}, batch 2x{seq}", LossOnly(model), (ids,), train=True,
                            trace_kwargs={"tracing_mode": "fake"})


def _llama_decode(quick: bool) -> Workload:
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    from fxpurify.models import LlamaStaticDecode

    hidden, layers, max_len = (32, 1, 16) if quick else (128, 2, 512)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_len, attn_implementation="eager",
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    cache = StaticCache(config=cfg, max_cache_len=max_len)
    prompt = torch.randint(0, cfg.vocab_size, (1, 4))
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
    step = LlamaStaticDecode(model, cache)
    ids = torch.randint(0, cfg.vocab_size, (1, 1))
    return _module_workload("llama_decode", f"HF Llama decode step, StaticCache {max_len} "
                            f"slots, {layers} layers, hidden {hidden}", step,
                            (ids, torch.tensor([[4]])), train=False, no_grad=True,
                            trace_kwargs={"tracing_mode": "fake"})


# ----------------------------------------------------------------------------- synthetic

ROWS = 16


def synthetic(n_blocks: int) -> Callable[..., Any]:
    """A mutation-heavy program of ``n_blocks`` blocks (about 16 ATen nodes each).

    Each block mutates inputs through views and aliases (``a[r].add_``, a row of ``b.t()``,
    ``c[r].copy_``), mutates intermediates in place (``relu_``, ``add_`` through a view), and
    reads inputs after their mutation — the patterns the pass must get right, repeated.
    """

    def fn(a, b, c, d):
        acc = d * 0
        for i in range(n_blocks):
            r = i % ROWS
            row = a[r]
            row.add_(d)                      # input mutation through a view
            bt = b.t()
            bt[i % 8].mul_(0.999)            # through a view of an alias
            y = c[r] * 2
            y.relu_()                        # in-place intermediate
            z = y.view(2, 4)
            z[0].add_(row[:4])               # intermediate through a view, reading an input view
            c[r].copy_(y)                    # copy_ into an input row
            acc = acc + y
            acc.mul_(0.5)
        return acc, a.sum()

    return fn


def _synthetic(target_nodes: int) -> Workload:
    per_block = 16  # measured: call_function nodes per block of `synthetic` under make_fx
    n_blocks = max(1, target_nodes // per_block)
    fn = synthetic(n_blocks)
    fn.__name__ = f"synthetic_{target_nodes}"

    def make_inputs():
        g = torch.Generator().manual_seed(0)
        return [torch.randn(ROWS, 8, generator=g), torch.randn(8, 8, generator=g),
                torch.randn(ROWS, 8, generator=g), torch.randn(8, generator=g)]

    label = f"{target_nodes // 1000}k" if target_nodes >= 1000 else str(target_nodes)
    return Workload(f"synthetic_{label}", f"synthetic mutation-heavy graph, {n_blocks} blocks",
                    fn, make_inputs, group="scaling", compile_ok=False)


# ----------------------------------------------------------------------------- registry

def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except Exception:
        return False
    return True


FULL_SCALING = (1000, 5000, 20000, 50000)
QUICK_SCALING = (1000,)

WORKLOAD_NAMES = ("kv_decode", "llama_decode", "cnn_train", "gpt2_train", "adam", "adam_foreach",
                  "adamw", "adamw_foreach", "synthetic_1k", "synthetic_5k", "synthetic_20k",
                  "synthetic_50k")


def build_workloads(names: list[str] | None = None, *, quick: bool = False) -> list[Workload]:
    """Build the selected workloads (default: all that apply; HF ones need ``transformers``)."""
    builders: dict[str, Callable[[], Workload]] = {
        "kv_decode": lambda: _kv_decode(quick),
        "cnn_train": lambda: _cnn_train(quick),
        "adam": lambda: _optimizer("adam", False, quick),
        "adam_foreach": lambda: _optimizer("adam", True, quick),
        "adamw": lambda: _optimizer("adamw", False, quick),
        "adamw_foreach": lambda: _optimizer("adamw", True, quick),
    }
    if _has_transformers():
        builders["gpt2_train"] = lambda: _gpt2_train(quick)
        builders["llama_decode"] = lambda: _llama_decode(quick)
    for n in FULL_SCALING:
        builders[f"synthetic_{n // 1000}k"] = (lambda n=n: _synthetic(n))
    if names is None:
        default = ["kv_decode", "llama_decode", "cnn_train", "gpt2_train", "adam",
                   "adam_foreach"]
        if quick:
            default = ["kv_decode", "cnn_train", "adam"]
        scaling = QUICK_SCALING if quick else FULL_SCALING
        names = [n for n in default if n in builders] + [
            f"synthetic_{n // 1000}k" for n in scaling]
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; available: {sorted(builders)}")
    return [builders[n]() for n in names]
