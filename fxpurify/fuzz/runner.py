"""Run one generated program through trace → purify → check_pure → compare, and classify it.

This module is the fuzzer's back end. The reference semantics is the *traced* graph (what
``purify`` is handed), which is eager's semantics except where ``make_fx`` itself differs from
eager; the runner tells those two apart so a tracer quirk is never blamed on the pass.

Outcomes (``Outcome.kind``):

- ``ok``       — purified graph is pure and equivalent to eager (outputs, input state, grads,
                 output aliasing);
- ``refused``  — ``purify`` or the emitted graph at call time raised an ``FxPurifyError``: an
                 honest refusal, counted by ``kind:pattern``;
- ``WRONG``    — the purified graph computed something observably different (a bug);
- ``crash``    — any other exception from ``purify``, from the emitted graph, or the input graph
                 was modified (a bug);
- ``impure``   — ``check_pure`` rejected the result (a bug);
- ``skipped``  — not the pass's business: eager or ``make_fx`` failed, or the tracer disagrees
                 with eager and the purified graph agrees with the tracer (``detail`` says which).

Programs that eager autograd rejects in backward are compared, gradients included, against the
out-of-place form of the same program (see ``generate``).
"""
from __future__ import annotations

import dataclasses
import linecache
import traceback
import warnings
from typing import Callable

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ..verify import VerificationError, clone_inputs, compare_with_eager
from .generate import PROGRAM_FN, Program

__all__ = ["Outcome", "check_program", "check_functions", "load_source", "FAILURES"]

FAILURES = ("WRONG", "crash", "impure")


@dataclasses.dataclass
class Outcome:
    kind: str
    detail: str = ""
    refusal: str = ""          # "kind:pattern" of a refusal
    exc_type: str = ""         # exception class name for crashes
    oop_reference: bool = False

    @property
    def is_failure(self) -> bool:
        return self.kind in FAILURES

    def signature(self) -> tuple[str, str]:
        """What a reduced program must keep reproducing."""
        return (self.kind, self.exc_type)


def load_source(src: str, filename: str) -> dict:
    """Exec ``src`` as if it were the file ``filename``.

    Registered with ``linecache`` so stack traces recorded by ``make_fx`` (and so the errors and
    reports of fxpurify) show the program's own lines.
    """
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    ns: dict = {"__name__": "fxpurify_fuzz_program"}
    exec(compile(src, filename, "exec"), ns)
    return ns


def _default_pass():
    import fxpurify
    return fxpurify.purify, fxpurify.check_pure, fxpurify.FxPurifyError


def _refusal_name(e: BaseException) -> str:
    kind = getattr(e, "kind", type(e).__name__)
    pattern = getattr(e, "pattern", "")
    return f"{kind}:{pattern}" if pattern and pattern != kind else str(kind)


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"


def check_program(prog: Program, *, purify: Callable | None = None,
                  check_pure: Callable | None = None,
                  refusal_types: tuple[type, ...] | None = None) -> Outcome:
    """Run one program end to end and classify it (see the module docstring)."""
    if purify is None:
        purify, check_pure_d, err = _default_pass()
        check_pure = check_pure or check_pure_d
        refusal_types = refusal_types or (err,)
    refusal_types = refusal_types or ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _check(prog, purify, check_pure, refusal_types)


def _check(prog: Program, purify, check_pure, refusal_types) -> Outcome:
    fname = f"fuzz_program_{prog.seed}.py"
    try:
        ns = load_source(prog.source(oop=True), fname)
    except Exception as e:
        return Outcome("skipped", f"program does not compile: {_first_line(e)}")
    return _check_fns(ns["make_inputs"], ns[PROGRAM_FN], ns[PROGRAM_FN + "_oop"], purify,
                      check_pure, refusal_types, **prog.trace_options())


def check_functions(make_inputs: Callable, fn: Callable, fn_oop: Callable | None = None, *,
                    filename: str | None = None, with_example_inputs: bool = True,
                    pre_dispatch: bool = False, tracing_mode: str = "real",
                    purify: Callable | None = None,
                    check_pure: Callable | None = None,
                    refusal_types: tuple[type, ...] | None = None) -> Outcome:
    """The same check for hand-written functions (what a saved reproducer's ``__main__`` runs)."""
    if purify is None:
        purify, check_pure_d, err = _default_pass()
        check_pure = check_pure or check_pure_d
        refusal_types = refusal_types or (err,)
    if filename is not None:  # so recorded stack traces can show the lines
        linecache.updatecache(filename)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _check_fns(make_inputs, fn, fn_oop or fn, purify, check_pure, refusal_types or (),
                          with_example_inputs=with_example_inputs, pre_dispatch=pre_dispatch,
                          tracing_mode=tracing_mode)


def _check_fns(make_inputs, fn, fn_oop, purify, check_pure, refusal_types, *,
               with_example_inputs: bool, pre_dispatch: bool, tracing_mode: str = "real") -> Outcome:
    """``with_example_inputs``: the graph already carries ``meta["val"]``, so ``purify`` needs no
    inputs; passing them or not exercises both entry paths. ``pre_dispatch``: see
    ``Program.trace_options``."""
    try:
        inputs = make_inputs()
        fn(*clone_inputs(inputs).inputs)
    except Exception as e:
        return Outcome("skipped", f"eager forward fails: {_first_line(e)}")
    try:
        gm = make_fx(fn, record_stack_traces=True, pre_dispatch=pre_dispatch,
                     tracing_mode=tracing_mode)(*clone_inputs(inputs).inputs)
    except Exception as e:
        return Outcome("skipped", f"make_fx fails: {_first_line(e)}")
    code_before = str(gm.graph)
    try:
        example = clone_inputs(inputs).inputs if with_example_inputs else None
        gm2 = purify(gm, example_inputs=example)
    except refusal_types as e:
        return Outcome("refused", _first_line(e), refusal=_refusal_name(e))
    except Exception as e:
        return Outcome("crash", "purify raised: " + traceback.format_exc(limit=-3),
                       exc_type=type(e).__name__)
    if str(gm.graph) != code_before:
        return Outcome("crash", "purify modified the graph it was given",
                       exc_type="ModifiedInput")
    if check_pure is not None:
        try:
            check_pure(gm2)
        except Exception as e:
            return Outcome("impure", _first_line(e), exc_type=type(e).__name__)
    return _compare(fn, fn_oop, gm, gm2, inputs, refusal_types)


def _compare(fn, fn_oop, gm, gm2, inputs, refusal_types, aliasing: bool = True) -> Outcome:
    try:
        s = compare_with_eager(fn, gm2, inputs, check_aliasing=aliasing)
    except VerificationError as e:
        # Is it the tracer rather than the pass? Then the traced graph is the reference.
        try:
            compare_with_eager(fn, gm, inputs)
        except VerificationError:
            try:
                compare_with_eager(gm, gm2, inputs)
            except VerificationError as e2:
                return Outcome("WRONG", "vs the traced graph (which itself differs from eager):"
                               f"\n{e2}")
            except Exception as e2:
                return Outcome("skipped", f"traced graph differs from eager and fails: "
                               f"{_first_line(e2)}")
            return Outcome("skipped", "make_fx differs from eager; purified graph matches the "
                           "traced graph")
        except Exception:
            pass
        return Outcome("WRONG", str(e))
    except refusal_types as e:
        return Outcome("refused", "at call time: " + _first_line(e),
                       refusal="call-time " + _refusal_name(e))
    except Exception as e:
        return Outcome("crash", "purified graph raised: " + traceback.format_exc(limit=-3),
                       exc_type=type(e).__name__)
    if s.reference_backward_error is None:
        return Outcome("ok")
    # Eager autograd rejects the program: gradients come from its out-of-place form.
    try:
        compare_with_eager(fn, fn_oop, inputs, grads=False)
    except Exception as e:  # the generator's two forms disagree: our bug, not the pass's
        return Outcome("skipped", f"out-of-place form differs (generator): {_first_line(e)}")
    try:
        s2 = compare_with_eager(fn_oop, gm2, inputs)
    except VerificationError as e:
        return Outcome("WRONG", "vs the out-of-place program (eager backward rejects the "
                       f"in-place one):\n{e}", oop_reference=True)
    except Exception as e:
        return Outcome("crash", "purified graph raised: " + _first_line(e),
                       exc_type=type(e).__name__, oop_reference=True)
    if s2.reference_backward_error is not None:
        return Outcome("skipped", "out-of-place form also fails backward (generator): "
                       + s2.reference_backward_error.splitlines()[0])
    return Outcome("ok", "grads vs the out-of-place form", oop_reference=True)


