"""Offline API on an nn.Module: purify it, print the pure graph and the report.

    python examples/offline_module.py

A residual CNN in training mode: BatchNorm updates its running statistics (a mutation its ATen
schema does not even declare), ReLU(inplace=True) and `out += identity` write in place. The
purified module computes the same thing with no in-place op left except one write-back per
buffer the model really mutates — into the model's *own* buffers.
"""
import copy

import torch

import fxpurify
from fxpurify.models import TinyCNN

torch.manual_seed(0)
model = TinyCNN().train()
x = torch.randn(4, 3, 8, 8)
reference = copy.deepcopy(model)          # an eager twin, to check against

pure = fxpurify.purify_module(model, x)   # traces (on clones), purifies; state is shared

# The pure graph: nodes annotated with what they were ("was aten.relu_.default", ...).
pure.graph_module.print_readable(additional_meta=["fxpurify"])

# What the pass did, line by line, with the source line in TinyCNN that caused it.
print(pure.report)
fxpurify.check_pure(pure.graph_module)    # raises, listing them, if any mutation were left

# Same outputs as eager; running statistics land in `model`'s own buffers; gradients reach
# `model`'s own parameters.
out, expected = pure(x), reference(x)
torch.testing.assert_close(out, expected)
torch.testing.assert_close(model.bn1.running_mean, reference.bn1.running_mean)
out.square().mean().backward()
expected.square().mean().backward()
torch.testing.assert_close(model.stem.weight.grad, reference.stem.weight.grad)
print("\nmatches eager (outputs, running stats, grads); model.bn1.running_mean[:3] =",
      model.bn1.running_mean[:3].tolist())
