"""Golden pure graphs of a few showcase programs (normalized ``GraphModule.code``).

A change in the emitted graph shows up here as a readable diff. To accept intended changes:
``FXPURIFY_ACCEPT_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""
from __future__ import annotations

import os
import pathlib

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import fxpurify

GOLDEN = pathlib.Path(__file__).parent / "golden"


def setitem_increment(x):
    x[1] += 1
    return x


def three_writes_one_view(x):
    a = x.clone()
    v = a[1:3]
    v.add_(1)
    v.mul_(2)
    v.sub_(3)
    return a


def sigmoid_mul_inplace(x):
    y = x.sigmoid()
    y.mul_(2)
    return y


def kv_cache_write(cache, k, pos):
    cache.index_copy_(0, pos, k)
    return cache.sum(0)


SHOWCASES = [
    (setitem_increment, lambda: [torch.randn(3, 2)]),
    (three_writes_one_view, lambda: [torch.randn(4, 4)]),
    (sigmoid_mul_inplace, lambda: [torch.randn(4)]),
    (kv_cache_write, lambda: [torch.zeros(6, 4), torch.randn(1, 4), torch.tensor([2])]),
]


def normalized(gm: torch.fx.GraphModule) -> str:
    lines = [line.rstrip() for line in gm.code.strip().splitlines()]
    return "\n".join(line for line in lines if line) + "\n"


@pytest.mark.parametrize("fn,make_inputs", SHOWCASES, ids=[f.__name__ for f, _ in SHOWCASES])
def test_golden(fn, make_inputs):
    gm = make_fx(fn, tracing_mode="fake")(*make_inputs())
    text = normalized(fxpurify.purify(gm))
    path = GOLDEN / f"{fn.__name__}.txt"
    if os.environ.get("FXPURIFY_ACCEPT_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"pure graph of {fn.__name__} changed; see {path}"
