"""The three classic "avoid in-place ops" cases: what eager does, what the usual hand rewrites
get wrong, and what fxpurify does instead.

    python examples/classic_inplace.py

1. in-place addition on a tensor that requires grad (``x += 1`` on a leaf);
2. in-place multiplication of a tensor autograd saved (``y = x.exp(); y *= 2``);
3. a custom ``nn.Module`` whose ``forward`` updates its own parameter in place.
"""
import glob
import os
import tempfile
import warnings

import torch
import torch.nn as nn

import fxpurify


def section(title):
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def attempt(label, fn):
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - showing the error is the point
        print(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return None
    return result


# -------------------------------------------------------------------------------------------
section("1. in-place addition on a tensor that requires grad")


def add_one(x):
    x += 1
    return x * 2


x = torch.ones(3, requires_grad=True)
attempt("eager", lambda: add_one(x))

# The usual hand rewrite rebinds the name: the new `x` is a non-leaf, so after backward the
# handle you kept has no .grad (PyTorch warns) and the leaf you meant to train is not updated.
x = torch.ones(3, requires_grad=True)
leaf = x
x = x + 1                      # rebinding: `x` is no longer the leaf
(x * 2).sum().backward()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "The .grad attribute of a Tensor that is not a leaf ..."
    print(f"hand rewrite `x = x + 1`: x.is_leaf={x.is_leaf}, x.grad={x.grad} "
          f"(the leaf's grad sits on a handle you no longer use: {leaf.grad.tolist()})")

# fxpurify: trace once (under no_grad: eager refuses the in-place op on a leaf even while
# tracing; torch.compile's Dynamo refuses it too, before any backend runs), purify, then call
# with the real leaf. The add becomes out-of-place; the input is written back once at the end.
x = torch.ones(3, requires_grad=True)
with torch.no_grad():
    gm = fxpurify.trace(add_one, x)
pure = fxpurify.purify(gm)
out = pure(x)
out.sum().backward()
print(f"fxpurify: out={out.tolist()}, x.grad={x.grad.tolist()} (leaf kept, gradient of x+1 "
      f"times 2), x now {x.tolist()} (written back, as the program says)")
print(fxpurify.report_of(pure).table())


# -------------------------------------------------------------------------------------------
section("2. in-place multiplication of a tensor autograd saved")


def exp_scaled(x):
    y = x.exp()   # exp's backward uses its output y ...
    y *= 2        # ... which this overwrites
    return y


x = torch.randn(4, requires_grad=True)
attempt("eager backward", lambda: exp_scaled(x).sum().backward())

# Hand rewrite `y = y * 2` is right here, but only because y is local: had y been an input or
# a buffer, the caller would silently stop seeing the update.
with tempfile.TemporaryDirectory() as report_dir:
    f = torch.compile(exp_scaled, backend="purify", options={"report_dir": report_dir})
    x.grad = None
    f(x).sum().backward()
    print(f"fxpurify backend: grad matches d/dx 2*exp(x): "
          f"{torch.allclose(x.grad, 2 * x.detach().exp())}")
    for path in sorted(glob.glob(os.path.join(report_dir, "*.report.txt"))):
        print(open(path).read())


# -------------------------------------------------------------------------------------------
section("3. a module whose forward updates its own parameter in place")


class DecayingScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        self.scale.mul_(0.5)   # decay the parameter on every call
        return x * self.scale


model = DecayingScale()
attempt("eager", lambda: model(torch.full((3,), 3.0)))


class HandRewrite(DecayingScale):
    def forward(self, x):
        self.scale = self.scale * 0.5   # a plain tensor onto a Parameter attribute
        return x * self.scale


attempt("hand rewrite `self.scale = self.scale * 0.5`",
        lambda: HandRewrite()(torch.full((3,), 3.0)))

model = DecayingScale()
with torch.no_grad():
    purified = fxpurify.purify_module(model, torch.full((3,), 3.0))
out = purified(torch.full((3,), 3.0))
out.sum().backward()
print(f"fxpurify: out={out.tolist()}, scale now {model.scale.detach().tolist()} (the module's "
      f"own Parameter, updated), scale.grad={model.scale.grad.tolist()}")
print(fxpurify.report_of(purified.graph_module).table())
print("\nOK: classic in-place cases")
