"""A custom op that declares the argument it mutates, for the fuzzer's programs.

``torch.library.custom_op(..., mutates_args=...)`` ops reach the pass as opaque mutable ops that
must be auto-functionalized (issue 2, coverage list). Programs that use it import this module,
which registers the op once per process. Autograd is not registered: a mutable custom op has
none, and eager then silently ignores its write for gradients — so the fuzzer only applies it to
tensors that do not require grad.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["axpy_"]


@torch.library.custom_op("fxpurify_fuzz::axpy_", mutates_args=("y",))
def axpy_(y: Tensor, x: Tensor, a: float) -> None:
    """``y += a * x`` (``x`` broadcast to ``y``)."""
    y.add_(x, alpha=a)


@axpy_.register_fake
def _(y: Tensor, x: Tensor, a: float) -> None:
    return None
