"""Built-in small models with random weights: the CLI's default job, benchmarks and tests.

Sits beside the pipeline, not in it: each builder returns the *user program* (an ``nn.Module``
or a function) and example inputs; ``fxpurify.trace`` turns it into the mutating ATen graph the
pass consumes. Every model here mutates something the pass must keep observable:

* ``kv_block`` — :class:`TinyTransformerBlock`: a decoder block with an in-place static KV cache
  (``index_copy_`` for keys, slice assignment → ``index_put_`` for values, a token counter
  ``add_``) plus in-place residual adds and ``relu_``.
* ``cnn`` — :class:`TinyCNN`: conv → train-mode ``BatchNorm2d`` (running statistics: a hidden
  mutation, pytorch#73050) → ``ReLU(inplace=True)``, residual ``out += identity``.
* ``adam`` / ``adam_foreach`` / ``adamw`` / ``adamw_foreach`` — one optimizer step over N
  parameters with ``capturable=True`` (``capturable=False`` calls ``.item()``, untraceable).
* ``gpt2`` / ``llama_decode`` — tiny Hugging Face models (only when ``transformers`` imports);
  they need ``tracing_mode="fake"``, which their :class:`BuiltinModel` says.

Builders are deterministic: weights and inputs come from ``torch.manual_seed(seed)`` under
``torch.random.fork_rng`` so building a model never disturbs the caller's RNG.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = [
    "BuiltinModel", "TinyTransformerBlock", "TinyCNN", "MODELS", "DEFAULT_MODELS", "build",
    "make_optimizer_step", "has_transformers",
]


@dataclasses.dataclass
class BuiltinModel:
    """A user program plus what it takes to trace it.

    Unpacks as ``fn, example_inputs = build("cnn")``. ``trace_kwargs`` are the
    ``fxpurify.trace`` options the program needs (``tracing_mode="fake"`` for Hugging Face,
    ``pre_dispatch=True`` where a ``no_grad`` region must stay visible in the graph).
    """

    name: str
    fn: Callable
    example_inputs: tuple
    trace_kwargs: dict = dataclasses.field(default_factory=dict)
    description: str = ""

    def __iter__(self):
        return iter((self.fn, self.example_inputs))

    def fresh_inputs(self) -> tuple:
        """Deep clones of the example inputs (same values, fresh storage, same requires_grad)."""
        def clone(x):
            if isinstance(x, torch.Tensor):
                c = x.detach().clone()
                return c.requires_grad_(x.requires_grad)
            if isinstance(x, (list, tuple)):
                return type(x)(clone(v) for v in x)
            return x
        return tuple(clone(x) for x in self.example_inputs)


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------------
# transformer block with a static KV cache
# ------------------------------------------------------------------------------------------

class TinyTransformerBlock(nn.Module):
    """Pre-norm decoder block that appends to a static KV cache *in place*, as decode loops do.

    ``forward(x, pos)``: ``x`` is ``[batch, t, dim]``, ``pos`` the ``t`` cache positions
    (``int64``). Keys are written with ``index_copy_``, values with a slice assignment
    (``v_cache[:, :, pos] = v``, which is ``index_put_`` at ATen level), and ``n_tokens`` counts
    tokens with ``add_``. Attention reads the whole cache under a mask built from ``pos``, so the
    result depends on what earlier calls wrote: exactly the state the pass must write back.
    """

    def __init__(self, dim: int = 32, heads: int = 4, max_len: int = 16, batch: int = 1):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        shape = (batch, heads, max_len, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape))
        self.register_buffer("v_cache", torch.zeros(shape))
        self.register_buffer("n_tokens", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        self.k_cache.index_copy_(2, pos, k)
        self.v_cache[:, :, pos] = v
        self.n_tokens.add_(t)
        scores = q @ self.k_cache.transpose(-1, -2) / math.sqrt(self.head_dim)
        slots = torch.arange(self.k_cache.shape[2], device=x.device)
        visible = slots.view(1, -1) <= pos.view(-1, 1)  # causal over absolute positions
        scores.masked_fill_(~visible, float("-inf"))
        attn = (scores.softmax(-1) @ self.v_cache).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(attn)
        h = self.fc1(self.norm2(x))
        h.relu_()
        out = self.fc2(h)
        out += x  # in place on a fresh result: nothing autograd saved is overwritten
        return out


def _build_kv_block(seed: int = 0) -> BuiltinModel:
    with _seeded(seed):
        # A decode step is inference: frozen weights. (With grads on, the cache writes would
        # give the buffers an autograd history, as they would in eager.)
        model = TinyTransformerBlock().eval().requires_grad_(False)
        with torch.no_grad():  # pretend three tokens were decoded already: the cache holds data
            model(torch.randn(1, 3, 32), torch.arange(3))
        x = torch.randn(1, 2, 32)
    pos = torch.tensor([3, 4])
    return BuiltinModel("kv_block", model, (x, pos), {},
                        "decoder block, in-place static KV cache (index_copy_, index_put_)")


# ------------------------------------------------------------------------------------------
# CNN with train-mode BatchNorm
# ------------------------------------------------------------------------------------------

class TinyCNN(nn.Module):
    """Residual CNN in *train* mode: BatchNorm running statistics change on every call.

    ``ReLU(inplace=True)`` and ``out += identity`` are the in-place ops ResNets are made of.
    """

    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.stem(x)))
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out)
        return self.head(out.mean((2, 3)))


def _build_cnn(seed: int = 0) -> BuiltinModel:
    with _seeded(seed):
        model = TinyCNN().train()
        x = torch.randn(4, 3, 8, 8)
    return BuiltinModel("cnn", model, (x,), {},
                        "residual CNN, train-mode BatchNorm2d, ReLU(inplace=True), out += identity")


# ------------------------------------------------------------------------------------------
# optimizer step
# ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _compiling():
    """Let ``capturable=True`` optimizers run on CPU.

    ``torch.optim`` refuses ``capturable=True`` for CPU tensors unless
    ``torch.compiler.is_compiling()``: the flag means "a compiler owns device placement". The
    math is device-independent, and we set the flag for the eager reference *and* for tracing,
    so both take the same code path.
    """
    if not hasattr(torch.compiler, "_is_compiling_flag"):
        yield
        return
    old = torch.compiler._is_compiling_flag
    torch.compiler._is_compiling_flag = True
    try:
        yield
    finally:
        torch.compiler._is_compiling_flag = old


def make_optimizer_step(kind: str = "adam", foreach: bool = False, lr: float = 1e-3,
                        weight_decay: float = 0.0) -> Callable:
    """``step(params, grads, exp_avgs, exp_avg_sqs, state_steps)``: one Adam/AdamW step, in place.

    The functional ``torch.optim.adam.adam`` / ``adamw.adamw`` with ``capturable=True``, under
    ``no_grad`` as ``Optimizer.step`` runs it (parameters are leaves that require grad).
    """
    from torch.optim.adam import adam
    from torch.optim.adamw import adamw

    fn = {"adam": adam, "adamw": adamw}[kind]
    wd = weight_decay if weight_decay or kind == "adam" else 1e-2

    def step(params, grads, exp_avgs, exp_avg_sqs, state_steps):
        with torch.no_grad(), _compiling():
            fn(params, grads, exp_avgs, exp_avg_sqs, [], state_steps, foreach=foreach,
               capturable=True, amsgrad=False, beta1=0.9, beta2=0.999, lr=lr,
               weight_decay=wd, eps=1e-8, maximize=False)

    step.__name__ = step.__qualname__ = f"{kind}_step"
    return step


def _build_optimizer(kind: str, foreach: bool, n_params: int = 4, seed: int = 0) -> BuiltinModel:
    shapes = [(16, 8), (8,), (8, 8), (4,)] * (n_params // 4 + 1)
    with _seeded(seed):
        params = [torch.randn(s).requires_grad_() for s in shapes[:n_params]]
        grads = [torch.randn(s) for s in shapes[:n_params]]
        exp_avgs = [torch.randn(s).abs() * 0.1 for s in shapes[:n_params]]
        exp_avg_sqs = [torch.rand(s) * 0.01 for s in shapes[:n_params]]
    steps = [torch.tensor(3.0) for _ in range(n_params)]
    name = f"{kind}{'_foreach' if foreach else ''}"
    return BuiltinModel(name, make_optimizer_step(kind, foreach),
                        (params, grads, exp_avgs, exp_avg_sqs, steps),
                        # no_grad must stay visible: the mutating graph writes leaf parameters.
                        {"pre_dispatch": True},
                        f"{kind} step over {n_params} params, foreach={foreach}, capturable=True")


# ------------------------------------------------------------------------------------------
# Hugging Face (optional)
# ------------------------------------------------------------------------------------------

def has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except Exception:  # ImportError, or a broken install: the HF models are optional
        return False
    return True


def _build_gpt2(seed: int = 0) -> BuiltinModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                     use_cache=False, attn_implementation="eager", bos_token_id=0, eos_token_id=0)
    with _seeded(seed):
        model = GPT2LMHeadModel(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (1, 8))
    return BuiltinModel("gpt2", model, (ids,), {"tracing_mode": "fake"},
                        "tiny GPT-2 LM head (2 layers, random weights)")


class LlamaStaticDecode(nn.Module):
    """One decode step of a tiny Llama with a Hugging Face ``StaticCache``, cache as buffers.

    ``StaticLayer.update`` writes ``keys``/``values`` with ``index_copy_`` and bumps
    ``cumulative_length`` with ``add_``. The cache object keeps plain tensor attributes, which
    ``functional_call`` cannot swap, so ``forward`` rebinds each layer to this module's buffers
    first: tracing then sees the cache as module state (graph inputs), and the write-backs of a
    purified graph land in these buffers, which *are* the cache's tensors in eager use.
    """

    def __init__(self, model: nn.Module, cache: Any):
        super().__init__()
        self.model, self.cache = model, cache
        for i, layer in enumerate(cache.layers):
            self.register_buffer(f"k{i}", layer.keys)
            self.register_buffer(f"v{i}", layer.values)
            self.register_buffer(f"len{i}", layer.cumulative_length)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.cache.layers):
            layer.keys, layer.values = getattr(self, f"k{i}"), getattr(self, f"v{i}")
            layer.cumulative_length = getattr(self, f"len{i}")
        out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=True,
                         **{_cache_kwarg(self.model): self.cache})
        return out.logits


def _cache_kwarg(model: nn.Module) -> str:
    """``cache`` in recent transformers (``past_key_values`` is deprecated there), else the old name."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _build_llama_decode(seed: int = 0) -> BuiltinModel:
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attn_implementation="eager", bos_token_id=0, eos_token_id=0, pad_token_id=0)
    with _seeded(seed):
        model = LlamaForCausalLM(cfg).eval()
        cache = StaticCache(config=cfg, max_cache_len=16)
        prompt = torch.randint(0, cfg.vocab_size, (1, 4))
        with torch.no_grad():  # prefill: allocates the cache and fills 4 slots
            model(input_ids=prompt, use_cache=True, **{_cache_kwarg(model): cache})
        step = LlamaStaticDecode(model, cache)
        ids = torch.randint(0, cfg.vocab_size, (1, 1))
    return BuiltinModel("llama_decode", step, (ids, torch.tensor([[4]])), {"tracing_mode": "fake"},
                        "tiny Llama decode step, HF StaticCache (index_copy_ into the cache)")


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------

MODELS: dict[str, Callable[..., BuiltinModel]] = {
    "kv_block": _build_kv_block,
    "cnn": _build_cnn,
    "adam": functools.partial(_build_optimizer, "adam", False),
    "adam_foreach": functools.partial(_build_optimizer, "adam", True),
    "adamw": functools.partial(_build_optimizer, "adamw", False),
    "adamw_foreach": functools.partial(_build_optimizer, "adamw", True),
}
if has_transformers():
    MODELS["gpt2"] = _build_gpt2
    MODELS["llama_decode"] = _build_llama_decode

#: What ``fxpurify`` with no arguments runs.
DEFAULT_MODELS: tuple[str, ...] = ("kv_block", "cnn")


def build(name: str, seed: int = 0, **options) -> BuiltinModel:
    """The built-in model ``name`` (see :data:`MODELS`); ``options`` go to its builder
    (``n_params=`` for the optimizer steps)."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown built-in model {name!r}; available: {', '.join(MODELS)}") from None
    return builder(seed=seed, **options)
