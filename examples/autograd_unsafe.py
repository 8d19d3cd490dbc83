"""The program eager autograd rejects, under every backend, and under backend="purify".

    python examples/autograd_unsafe.py

``y = x.sigmoid(); y.mul_(2)``: sigmoid's backward needs its output ``y``, which ``mul_``
overwrites. Eager raises "modified by an inplace operation" at backward; ``aot_eager`` and
``inductor`` trace autograd over the same mutating program and fail to compile. The purify
backend removes the mutation *before* autograd sees the program, so it runs and gives the
gradients of the out-of-place program ``y = x.sigmoid() * 2``.
"""
import logging
import warnings

import torch

# aot_eager's failure also prints autograd's anomaly traceback as a warning; the line above is enough
warnings.filterwarnings("ignore", message="Error detected in")


def f(x):
    y = x.sigmoid()
    y.mul_(2)
    return y


def run(label, fn):
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    try:
        fn(x).sum().backward()
    except Exception as exc:  # noqa: BLE001 - showing the error is the point
        msg = str(exc)
        why = "modified by an inplace operation" if "modified by an inplace" in msg else msg[:80]
        print(f"{label:28s} FAILS: {type(exc).__name__}: ... {why} ...")
        return None
    print(f"{label:28s} runs:  x.grad = {[round(v, 4) for v in x.grad.tolist()]}")
    return x.grad


run("eager", f)
for backend in ("aot_eager", "inductor"):
    torch._dynamo.reset()
    run(f'torch.compile("{backend}")', torch.compile(f, backend=backend))

# the report of each compiled graph goes to the "fxpurify.backend" logger (TORCH_LOGS="fxpurify")
logging.basicConfig(format="%(message)s")
logging.getLogger("fxpurify.backend").setLevel(logging.INFO)
grads = {}
for inner in ("eager", "inductor"):
    torch._dynamo.reset()
    grads[inner] = run(f'purify, inner="{inner}"',
                       torch.compile(f, backend="purify", options={"inner": inner}))

x = torch.linspace(-2, 2, 5, requires_grad=True)
(x.sigmoid() * 2).sum().backward()
print(f"{'out-of-place reference':28s} x.grad = {[round(v, 4) for v in x.grad.tolist()]}")
for inner, g in grads.items():
    torch.testing.assert_close(g, x.grad)
print("OK: purify gives the gradients of the out-of-place program with both inner compilers")
