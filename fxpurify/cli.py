"""The ``fxpurify`` command line (also ``python -m fxpurify``). Beside the pipeline, not in it.

Usage::

    fxpurify                         # trace + purify + verify the default built-in models
    fxpurify --model cnn             # one built-in (repeatable); `fxpurify models` lists them
    fxpurify path/to/file.py:name    # your own code (convention below)
    fxpurify run ... --print-graphs  # `run` is the default subcommand; also prints both graphs
    fxpurify models                  # list the built-in models

The ``file.py:name`` convention: ``name`` is a callable in ``file.py`` taking no arguments and
returning ``(fn_or_module, example_inputs)`` — a function or ``nn.Module`` and a tuple of its
positional inputs — optionally with a third element, a dict of ``fxpurify.trace`` options
(``{"tracing_mode": "fake"}`` for Hugging Face models). Example::

    # mymodel.py
    def build():
        model = MyNet().train()
        return model, (torch.randn(8, 3, 32, 32),)

For each target it traces the program (mutations kept), purifies it, checks the result against
eager execution with :mod:`fxpurify.verify` (outputs, final state of inputs, parameters and
buffers, gradients) and prints graph sizes before/after and the rewrite report. The exit status
is 0 when every target verified, 1 when one failed (purification refused or results differ),
2 for a usage error (bad ``file:name``).

Subcommands: other modules add theirs with :func:`register_subcommand` (``bench`` is wired
lazily from ``fxpurify.bench_cli.add_bench_subcommand`` when that module exists).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

__all__ = ["main", "register_subcommand", "load_target", "run_target", "graph_stats"]

#: name -> add_parser_fn(subparsers). The function adds its parser and calls
#: ``parser.set_defaults(func=handler)``, where ``handler(args) -> int`` is the exit status.
_SUBCOMMANDS: dict[str, Callable[[Any], None]] = {}


def register_subcommand(name: str, add_parser_fn: Callable[[Any], None]) -> None:
    """Add a subcommand: ``add_parser_fn(subparsers)`` creates it and sets ``func`` (see above)."""
    if name in _SUBCOMMANDS or name in ("run", "models"):
        raise ValueError(f"fxpurify subcommand {name!r} is already registered")
    _SUBCOMMANDS[name] = add_parser_fn


class UsageError(Exception):
    """A bad command line (exit status 2)."""


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------

class Target:
    """What to trace: a program, its example inputs and trace options."""

    def __init__(self, name: str, fn: Callable, example_inputs: tuple, trace_kwargs: dict,
                 description: str = ""):
        self.name, self.fn, self.example_inputs = name, fn, tuple(example_inputs)
        self.trace_kwargs, self.description = dict(trace_kwargs), description


def _builtin_target(name: str, seed: int) -> Target:
    from . import models

    if name not in models.MODELS:
        raise UsageError(f"unknown built-in model {name!r}; available: {', '.join(models.MODELS)}")
    bm = models.build(name, seed=seed)
    return Target(bm.name, bm.fn, bm.example_inputs, bm.trace_kwargs, bm.description)


def load_target(spec: str) -> Target:
    """Load ``path/to/file.py:name`` (see the module docstring for the convention)."""
    path, sep, attr = spec.rpartition(":")
    if not sep or not path or not attr:
        raise UsageError(f"{spec!r}: expected path/to/file.py:name, where name() returns "
                         "(fn_or_module, example_inputs)")
    if not os.path.isfile(path):
        raise UsageError(f"{spec!r}: no such file {path!r}")
    mod_name = "_fxpurify_user_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"{spec!r}: cannot import {path!r} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # its sibling imports
    try:
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n])]
        raise UsageError(f"{spec!r}: {path} has no attribute {attr!r}; callables there: "
                         f"{', '.join(names) or '(none)'}")
    builder = getattr(module, attr)
    if not callable(builder):
        raise UsageError(f"{spec!r}: {attr} is a {type(builder).__name__}, not a callable "
                         "returning (fn_or_module, example_inputs)")
    result = builder()
    if not (isinstance(result, (tuple, list)) and len(result) in (2, 3)):
        raise UsageError(f"{spec!r}: {attr}() returned {type(result).__name__}; expected "
                         "(fn_or_module, example_inputs) or (fn_or_module, example_inputs, "
                         "trace_options)")
    fn, inputs = result[0], result[1]
    options = dict(result[2]) if len(result) == 3 else {}
    if not callable(fn):
        raise UsageError(f"{spec!r}: the first element {attr}() returned is not callable")
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)  # a single tensor: the obvious intent
    return Target(f"{os.path.basename(path)}:{attr}", fn, tuple(inputs), options)


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------

def _is_mutating(node) -> bool:
    import torch

    t = node.target
    return node.op == "call_function" and isinstance(t, torch._ops.OpOverload) and t._schema.is_mutable


def graph_stats(gm) -> dict:
    """Sizes the CLI prints: nodes, mutating nodes, ``copy_`` nodes.

    "Mutating" counts ops whose schema is mutable; where ``fxpurify.check.impure_nodes`` exists
    it is used instead, so hidden mutators (train-mode ``batch_norm``) count too.
    """
    import torch

    nodes = list(gm.graph.nodes)
    try:
        from .check import impure_nodes
        mutating = len(impure_nodes(gm))
    except ImportError:
        mutating = sum(_is_mutating(n) for n in nodes)
    copies = sum(n.op == "call_function" and n.target is torch.ops.aten.copy_.default for n in nodes)
    return {"nodes": len(nodes), "mutating": mutating, "copies": copies}


def _purify_target(target: Target, model):
    import torch

    from .module import purify_function, purify_module

    if isinstance(model, torch.nn.Module):
        return purify_module(model, *target.example_inputs, **target.trace_kwargs)
    return purify_function(model, *target.example_inputs, **target.trace_kwargs)


def _verify(target: Target):
    """Run the differential oracle; return ``(purified, comparison)``; raises on a difference."""
    import torch

    from . import verify

    holder = {}
    if isinstance(target.fn, torch.nn.Module):
        def make(model_copy):
            holder["p"] = _purify_target(target, model_copy)
            return holder["p"]
        cmp = verify.compare_module_with_eager(target.fn, make, target.example_inputs)
    else:
        holder["p"] = _purify_target(target, target.fn)
        cmp = verify.compare_with_eager(target.fn, holder["p"], target.example_inputs)
    return holder["p"], cmp


def run_target(target: Target, *, do_verify: bool = True, print_graphs: bool = False,
               out=None, record: dict | None = None) -> int:
    """Trace, purify, verify and print one target; return its exit status (0 or 1).

    ``record``, when given, receives the same facts as data (for ``--json``).
    """
    record = {} if record is None else record
    record.update(name=target.name, status="error")
    from tabulate import tabulate

    from .errors import FxPurifyError

    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"== {target.name}" + (f": {target.description}" if target.description else ""))
    t0 = time.perf_counter()
    try:
        if do_verify:
            from .verify import VerificationError
            try:
                purified, cmp = _verify(target)
            except VerificationError as e:
                p(f"VERIFICATION FAILED for {target.name}:\n{e}")
                record.update(status="verification-failed", mismatches=e.mismatches)
                return 1
        else:
            fn = copy.deepcopy(target.fn) if hasattr(target.fn, "state_dict") else target.fn
            purified, cmp = _purify_target(target, fn), None
    except FxPurifyError as e:
        p(f"PURIFY FAILED for {target.name}: {type(e).__name__}: {e}")
        record.update(status="purify-failed", error=f"{type(e).__name__}: {e}")
        return 1
    before, after = graph_stats(purified.original_graph), graph_stats(purified.graph_module)
    p(tabulate([["original (make_fx)", *before.values()], ["purified", *after.values()]],
               headers=["graph", "nodes", "mutating ops", "copy_ nodes"], tablefmt="github"))
    try:
        report = purified.report
    except KeyError:  # a purify_fn that attaches no report
        report = None
    if report is not None:
        p("")
        p(report.summary())
        p(report.table())
    if print_graphs:
        p("\n-- original graph --")
        p(purified.original_graph.print_readable(print_output=False))
        p("-- purified graph --")
        p(purified.graph_module.print_readable(print_output=False, additional_meta=["fxpurify"]))
    if cmp is not None:
        p(f"\nverified against eager: {cmp}")
    record.update(status="verified" if cmp is not None else "purified", before=before, after=after,
                  report=report.to_dict() if report is not None else None,
                  comparison=str(cmp) if cmp is not None else None)
    p(f"({time.perf_counter() - t0:.2f} s)\n")
    return 0


# --------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------

def _cmd_run(args) -> int:
    import torch

    from . import models

    torch.manual_seed(args.seed)
    targets = []
    try:
        for spec in args.targets:
            targets.append(load_target(spec))
        for name in args.model or []:
            targets.append(_builtin_target(name, args.seed))
        if not targets:
            targets = [_builtin_target(n, args.seed) for n in models.DEFAULT_MODELS]
    except UsageError as e:
        print(f"fxpurify: error: {e}", file=sys.stderr)
        return 2
    for t in targets:  # command-line trace options win over the target's own
        if args.tracing_mode:
            t.trace_kwargs["tracing_mode"] = args.tracing_mode
        if args.pre_dispatch:
            t.trace_kwargs["pre_dispatch"] = True
    status, records = 0, []
    for t in targets:
        records.append({})
        status = max(status, run_target(t, do_verify=not args.no_verify,
                                        print_graphs=args.print_graphs, record=records[-1]))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"status": status, "targets": records}, f, indent=1, default=str)
    if len(targets) > 1:
        what = "purified" if args.no_verify else "verified against eager"
        print(f"{len(targets)} targets {what}" if status == 0 else "FAILED: see above")
    return status


def _cmd_models(args) -> int:
    from . import models

    for name in models.MODELS:
        bm = models.build(name)
        default = " (default)" if name in models.DEFAULT_MODELS else ""
        print(f"{name:16s}{bm.description}{default}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fxpurify",
        description="Remove in-place ops from ATen-level torch.fx graphs, verified against eager.",
        epilog="With no subcommand, `run` is assumed. file.py:name: name() returns "
               "(fn_or_module, example_inputs[, trace_options]).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="{run,models,...}")

    run = sub.add_parser("run", help="trace, purify, verify and report (default)")
    run.add_argument("targets", nargs="*", metavar="FILE.py:NAME",
                     help="your code: NAME() returns (fn_or_module, example_inputs[, trace_options])")
    run.add_argument("--model", action="append", metavar="NAME",
                     help="a built-in model (repeatable; see `fxpurify models`)")
    run.add_argument("--print-graphs", action="store_true",
                     help="also print the original and the purified graph")
    run.add_argument("--no-verify", action="store_true", help="skip the comparison with eager")
    run.add_argument("--tracing-mode", choices=("real", "fake", "symbolic"),
                     help="override the trace mode (Hugging Face models need fake)")
    run.add_argument("--pre-dispatch", action="store_true",
                     help="trace with pre_dispatch=True (keeps no_grad regions in the graph)")
    run.add_argument("--seed", type=int, default=0, help="seed for models and inputs (default 0)")
    run.add_argument("--json", metavar="PATH",
                     help="also write sizes, report and verification result per target as JSON")
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("models", help="list the built-in models")
    lst.set_defaults(func=_cmd_models)

    try:  # the bench subcommand lives in bench_cli.py (bench owner); optional
        from .bench_cli import add_bench_subcommand
    except ImportError:
        add_bench_subcommand = None
    if add_bench_subcommand is not None and "bench" not in _SUBCOMMANDS:
        add_bench_subcommand(sub)
    for add in _SUBCOMMANDS.values():
        add(sub)
    return parser


def _known_commands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `run` is the default: `fxpurify`, `fxpurify x.py:f`, `fxpurify --model cnn`.
    first = next((a for a in argv if a not in ("-v", "--verbose")), None)
    if first is None or (first not in _known_commands(parser) and first not in ("-h", "--help")):
        i = argv.index(first) if first is not None else len(argv)
        argv.insert(i, "run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
