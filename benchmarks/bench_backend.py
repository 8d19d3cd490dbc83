"""torch.compile(backend="purify") against the stock backends, on the built-in real models.

    python benchmarks/bench_backend.py                     # all models, CPU, 1 thread
    python benchmarks/bench_backend.py --models cnn gpt2 --repeats 5 --steps 30
    python benchmarks/bench_backend.py --device cuda       # on a GPU machine

Two tables, medians side by side from one run (runs of the backends are interleaved, so load on
the machine hits them alike):

1. **first call** (Dynamo capture + backend compile + one step) of ``purify`` (inner eager)
   vs ``aot_eager``, and ``purify`` with ``inner="inductor"`` vs ``inductor``. Inductor's and
   AOTAutograd's on-disk caches are switched off so every repeat really compiles.
   Goal (issue 3): purify within 1.2x of aot_eager.
2. **steady-state step** after warm-up, the four backends taking turns step by step.
   Goal: purify+inductor within 1.05x of inductor.

Training workloads (``cnn``, ``gpt2``) time forward + backward; decode workloads
(``kv_block``, ``llama_decode``) time one no-grad step that writes the KV cache in place.
Threads are pinned (``--threads``, default 1) and printed with the machine and torch version.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from tabulate import tabulate

from fxpurify import models

BACKENDS = {
    # label: (backend, options)
    "aot_eager": ("aot_eager", None),
    "purify": ("purify", {"inner": "eager", "log_report": False}),
    "inductor": ("inductor", None),
    "purify+inductor": ("purify", {"inner": "inductor", "log_report": False}),
}
TRAINING = {"cnn", "gpt2"}
DEFAULT_MODELS = ["cnn", "kv_block", "gpt2", "llama_decode"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(name: str, device: str):
    """(model, step(model_or_compiled), reset()) for a built-in model.

    ``step`` runs one workload step; ``reset`` (untimed) puts the buffers back to their initial
    values, so decode steps can repeat without running off the end of a static KV cache.
    """
    built = models.build(name)
    model = built.fn.to(device)
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x
                   for x in built.example_inputs)
    initial = {k: v.detach().clone() for k, v in model.named_buffers()}

    def reset():
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(initial[k])
    if name in TRAINING:
        def step(fn):
            out = fn(*inputs)
            out = out.logits if hasattr(out, "logits") else out
            out.float().square().mean().backward()
    else:
        def step(fn):
            with torch.no_grad():
                fn(*inputs)
    return model, step, reset


def compile_with(model, label: str):
    backend, options = BACKENDS[label]
    return torch.compile(model, backend=backend, options=options)


def time_first_call(name: str, label: str, device: str) -> float:
    torch._dynamo.reset()
    model, step, _ = make_step(name, device)
    compiled = compile_with(model, label)
    _sync(device)
    t0 = time.perf_counter()
    step(compiled)
    _sync(device)
    return time.perf_counter() - t0


def time_steady(name: str, labels, device: str, steps: int, warmup: int = 3) -> dict[str, float]:
    """Median step time per backend; the backends take turns step by step, so a burst of load
    on the machine lands on all of them rather than on whichever ran during it."""
    runs = {}
    for label in labels:
        model, step, reset = make_step(name, device)
        compiled = compile_with(model, label)  # each its own model: compiled code is not shared
        for _ in range(warmup):
            reset()
            step(compiled)
        runs[label] = (step, reset, compiled)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(steps):
        for label, (step, reset, compiled) in runs.items():
            reset()
            _sync(device)
            t0 = time.perf_counter()
            step(compiled)
            _sync(device)
            times[label].append(time.perf_counter() - t0)
    return {label: statistics.median(v) for label, v in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"built-in models (default: {' '.join(DEFAULT_MODELS)} where available)")
    parser.add_argument("--repeats", type=int, default=3, help="first-call repeats per backend")
    parser.add_argument("--steps", type=int, default=20, help="timed steady-state steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the medians to this file")
    parser.add_argument("--skip-steady", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    # every repeat must compile for real: no on-disk FX graph / autograd caches
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    names = args.models or [m for m in DEFAULT_MODELS if m in models.MODELS]

    print(f"torch {torch.__version__}, {platform.machine()} {platform.processor() or ''}, "
          f"device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
          + f", threads {torch.get_num_threads()}, repeats {args.repeats}, steps {args.steps}")

    # one untimed first call per backend: one-time costs (imports, Inductor's C++ toolchain
    # probe) must not land on whichever backend happens to run first
    for label in BACKENDS:
        time_first_call(names[0], label, args.device)
    first: dict[str, dict[str, list[float]]] = {n: {b: [] for b in BACKENDS} for n in names}
    for name in names:
        for _ in range(args.repeats):
            for label in BACKENDS:  # interleaved
                first[name][label].append(time_first_call(name, label, args.device))
    med = {n: {b: statistics.median(v) for b, v in d.items()} for n, d in first.items()}
    rows = [(n, f"{m['aot_eager']:.3f}", f"{m['purify']:.3f}", f"{m['purify'] / m['aot_eager']:.2f}x",
             f"{m['inductor']:.3f}", f"{m['purify+inductor']:.3f}",
             f"{m['purify+inductor'] / m['inductor']:.2f}x") for n, m in med.items()]
    print("\nfirst call (s, median): Dynamo capture + backend compile + one step")
    print(tabulate(rows, headers=["model", "aot_eager", "purify", "purify/aot_eager",
                                  "inductor", "purify+inductor", "ratio"], tablefmt="github"))

    result = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
              "first_call_s": med}
    if not args.skip_steady:
        steady = {}
        for name in names:
            torch._dynamo.reset()
            steady[name] = time_steady(name, list(BACKENDS), args.device, args.steps)
        rows = [(n, f"{m['aot_eager'] * 1e3:.3f}", f"{m['purify'] * 1e3:.3f}",
                 f"{m['purify'] / m['aot_eager']:.2f}x", f"{m['inductor'] * 1e3:.3f}",
                 f"{m['purify+inductor'] * 1e3:.3f}", f"{m['purify+inductor'] / m['inductor']:.2f}x")
                for n, m in steady.items()]
        print("\nsteady-state step (ms, median)")
        print(tabulate(rows, headers=["model", "aot_eager", "purify", "purify/aot_eager",
                                      "inductor", "purify+inductor", "ratio"], tablefmt="github"))
        result["steady_step_s"] = steady
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
