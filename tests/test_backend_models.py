"""Real models under torch.compile(backend="purify"), both inner compilers, against eager.

Models come from ``fxpurify.models`` (tiny configs, random weights, no downloads). Every compile
is ``strict=True`` so a fallback to the unpurified graph cannot hide a failure. Inductor cases on
CPU pay a C++ compile; the Hugging Face ones with Inductor (20-40 s each with a cold Inductor
cache) run only with ``FXPURIFY_SLOW=1 pytest tests/test_backend_models.py``.
"""
import copy
import os

import pytest
import torch
from torch._dynamo.utils import counters

from fxpurify import models

SLOW = pytest.mark.skipif(not os.environ.get("FXPURIFY_SLOW"),
                          reason="slow Inductor CPU compile; run with FXPURIFY_SLOW=1")
needs_hf = pytest.mark.skipif(not models.has_transformers(), reason="needs transformers")
INNERS = ["eager", "inductor"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def purify_compile(model, inner, **kw):
    return torch.compile(model, backend="purify", options={"inner": inner, "strict": True}, **kw)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_purified():
    # Dynamo called a backend at least once, and strict=True means none fell back
    assert counters["stats"]["unique_graphs"] >= 1


# -------------------------------------------------------------------------------------------
# CNN: train-mode BatchNorm (hidden running-stat writes) + ReLU(inplace=True) + out += identity


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inner", INNERS)
def test_cnn_train_steps_match_eager(inner, device):
    ref, (x,) = models.build("cnn")
    ref, x = ref.to(device), x.to(device)
    model = copy.deepcopy(ref)
    step = purify_compile(model, inner)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(2):
        xi = x + i
        for m, fn, o in ((ref, ref, opt_ref), (model, step, opt)):
            o.zero_grad()
            out = fn(xi)
            out.logsumexp(-1).mean().backward()
        torch.testing.assert_close(grads(model), grads(ref))
        opt_ref.step()
        opt.step()
        # running_mean / running_var / num_batches_tracked written back exactly
        torch.testing.assert_close(state(model), state(ref))
    assert model.bn0.num_batches_tracked.item() == 2
    assert_purified()


# -------------------------------------------------------------------------------------------
# built-in decoder block with an in-place static KV cache


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inner", INNERS)
def test_kv_block_decode_steps_match_eager(inner, device):
    ref, (x, pos) = models.build("kv_block")
    ref, x, pos = ref.to(device), x.to(device), pos.to(device)
    model = copy.deepcopy(ref)
    step = purify_compile(model, inner)
    with torch.no_grad():
        for i in range(3):
            p = pos + 2 * i
            torch.testing.assert_close(step(x + i, p), ref(x + i, p))
            torch.testing.assert_close(state(model), state(ref))
    assert model.n_tokens.item() == ref.n_tokens.item() == 3 + 6
    assert counters["stats"]["unique_graphs"] == 1  # new positions: no recompile
    assert_purified()


# -------------------------------------------------------------------------------------------
# Hugging Face GPT-2: a training step


def _gpt2_train_step(model, fn, ids):
    model.zero_grad()
    logits = fn(ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach()


@needs_hf
@pytest.mark.parametrize("inner", ["eager", pytest.param("inductor", marks=SLOW)])
def test_gpt2_training_step_matches_eager(inner):
    ref, (ids,) = models.build("gpt2")  # eval(): dropout off, so RNG cannot differ
    model = copy.deepcopy(ref)
    step = purify_compile(model, inner)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        loss_ref = _gpt2_train_step(ref, ref, ids)
        loss = _gpt2_train_step(model, step, ids)
        torch.testing.assert_close(loss, loss_ref)
        torch.testing.assert_close(grads(model), grads(ref), rtol=1e-4, atol=1e-5)
        opt_ref.step()
        opt.step()
    torch.testing.assert_close(state(model), state(ref), rtol=1e-4, atol=1e-5)
    assert_purified()


# -------------------------------------------------------------------------------------------
# Llama-style decoder, Hugging Face StaticCache written in place (index_copy_)


@needs_hf
@pytest.mark.parametrize("inner", ["eager", pytest.param("inductor", marks=SLOW)])
def test_llama_static_cache_decode_matches_eager(inner):
    ref, (ids, position) = models.build("llama_decode")
    model = copy.deepcopy(ref)
    step = purify_compile(model, inner)
    with torch.no_grad():
        for i in range(3):
            pos = position + i
            tok = (ids + 7 * i) % 128
            torch.testing.assert_close(step(tok, pos), ref(tok, pos), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(state(model), state(ref), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1  # decode steps reuse one graph
    assert_purified()


# -------------------------------------------------------------------------------------------
# a whole training step compiled: forward graph, backward (graph break), AdamW step graph


def test_compiled_train_step_with_optimizer_matches_eager():
    ref, (x,) = models.build("cnn")
    model = copy.deepcopy(ref)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def train_step(m, o, x):
        o.zero_grad(set_to_none=True)
        loss = m(x).logsumexp(-1).mean()
        loss.backward()
        o.step()
        return loss.detach()

    step = torch.compile(train_step, backend="purify", options={"strict": True})
    for i in range(3):
        torch.testing.assert_close(step(model, opt, x + i), train_step(ref, opt_ref, x + i))
    torch.testing.assert_close(state(model), state(ref))
    assert counters["stats"]["unique_graphs"] >= 2  # forward and optimizer step, both purified
