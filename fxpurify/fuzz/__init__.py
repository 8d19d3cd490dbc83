"""Differential fuzzer for ``fxpurify.purify``.

Beside the pipeline, not inside it. Stages, one module each:

    generate (random mutating program, as Python source, in-place and out-of-place forms;
              statement templates in templates.py, shapes in shapes.py)
      → runner (exec → make_fx with mutations kept → purify → check_pure → compare_with_eager)
      → reduce (delta debugging over statements, for failures only)
      → __main__ (the ``python -m fxpurify.fuzz --seed S --count N`` command and its summary)

:func:`run` drives a batch and returns :class:`FuzzStats`; the test suite runs a bounded slice
of it and asserts no wrong result and no crash.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import re
import time
from typing import Callable

from .generate import Program, generate
from .runner import FAILURES, Outcome, check_functions, check_program

log = logging.getLogger(__name__)

__all__ = ["run", "FuzzStats", "Failure", "generate", "check_program", "check_functions",
           "Program", "Outcome"]


@dataclasses.dataclass
class Failure:
    seed: int
    outcome: Outcome
    program: Program          # reduced when reduction was on
    original_statements: int
    reduced: bool = True

    def reproducer(self) -> str:
        header = (f"fxpurify fuzz reproducer: seed {self.seed}, outcome {self.outcome.kind}"
                  f" (reduced from {self.original_statements} to "
                  f"{len(self.program.stmts)} statements)\n"
                  f"re-run: python this_file.py   (or: python -m fxpurify.fuzz --seed "
                  f"{self.seed} --count 1)\n\n" + self.outcome.detail)
        return self.program.source(oop=True, header=header, main=True)


@dataclasses.dataclass
class FuzzStats:
    programs: int = 0
    seconds: float = 0.0
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    refusals: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    oop_references: int = 0
    families: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failures: list[Failure] = dataclasses.field(default_factory=list)
    failure_classes: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)

    @property
    def rate(self) -> float:
        return self.programs / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.outcomes[k] for k in FAILURES)

    def to_dict(self) -> dict:
        return {"programs": self.programs, "seconds": round(self.seconds, 1),
                "programs_per_second": round(self.rate, 1), "outcomes": dict(self.outcomes),
                "refusals": dict(self.refusals), "skipped": dict(self.skipped),
                "failure_classes": dict(self.failure_classes),
                "failing_seeds": [f.seed for f in self.failures],
                "oop_references": self.oop_references}

    def summary(self) -> str:
        lines = [f"programs: {self.programs} in {self.seconds:.1f} s ({self.rate:.1f} programs/s)",
                 "outcomes: " + ", ".join(f"{k}={self.outcomes[k]}" for k in
                                          ("ok", "refused", "WRONG", "crash", "impure",
                                           "skipped")),
                 f"compared against the out-of-place form (eager backward rejects the "
                 f"in-place one): {self.oop_references}"]
        if self.refusals:
            lines.append("refusals by kind:")
            lines += [f"  {v:6d}  {k}" for k, v in self.refusals.most_common()]
        if self.failure_classes:
            lines.append("failures by class:")
            lines += [f"  {v:6d}  {k}" for k, v in self.failure_classes.most_common()]
        if self.skipped:
            lines.append("skipped (not the pass's business) by reason:")
            lines += [f"  {v:6d}  {k}" for k, v in self.skipped.most_common(10)]
        return "\n".join(lines)


def _reason(detail: str) -> str:
    return detail.split(":")[0] if detail else "?"


def failure_class(out: Outcome) -> str:
    """A coarse bucket for a failure: kind, exception type and the first mismatch line with
    numbers blanked, so a long run reduces a few examples of each bug, not every instance."""
    lines = [ln.strip() for ln in out.detail.splitlines()
             if ln.strip().startswith("- ") or "Error" in ln]
    first = lines[0] if lines else out.detail.strip().splitlines()[0] if out.detail else ""
    first = re.sub(r"\(Mismatched.*", "", re.sub(r"\d+", "N", first))
    return f"{out.kind} {out.exc_type} {first[:120]}".strip()


@contextlib.contextmanager
def _quiet_torch():
    """Fake-tensor dispatch logs every failed meta kernel at ERROR level; a refusal or a crash
    we classify is not worth a traceback on stderr per program."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(seed: int = 0, count: int = 100, *, time_budget: float | None = None,
        reduce: bool = True, save_failures: str | None = None, max_stmts: int | None = None,
        check: Callable[[Program], Outcome] | None = None,
        progress: Callable[[FuzzStats], None] | None = None,
        reduce_per_class: int = 3) -> FuzzStats:
    """Check programs ``seed, seed+1, …`` (``count`` of them, or until ``time_budget`` s).

    Program ``k`` depends only on ``k``, so ``--seed k --count 1`` replays one program.
    Failures are reduced (and saved) for the first ``reduce_per_class`` of each
    :func:`failure_class`; the rest are counted and kept unreduced.
    """
    with _quiet_torch():
        return _run(seed, count, time_budget, reduce, save_failures, max_stmts,
                    check or check_program, progress, reduce_per_class)


def _run(seed, count, time_budget, reduce, save_failures, max_stmts, check, progress,
         reduce_per_class) -> FuzzStats:
    from .reduce import reduce_program
    stats = FuzzStats()
    per_class: collections.Counter = collections.Counter()
    start = time.perf_counter()
    for k in range(seed, seed + count):
        if time_budget is not None and time.perf_counter() - start > time_budget:
            break
        prog = generate(k, max_stmts=max_stmts)
        out = check(prog)
        stats.programs += 1
        stats.outcomes[out.kind] += 1
        stats.families.update(prog.families())
        stats.oop_references += out.oop_reference
        if out.kind == "refused":
            stats.refusals[out.refusal] += 1
        elif out.kind == "skipped":
            stats.skipped[_reason(out.detail)] += 1
        elif out.is_failure:
            log.info("fuzz: program %d: %s", k, out.kind)
            cls = failure_class(out)
            stats.failure_classes[cls] += 1
            per_class[cls] += 1
            if per_class[cls] > reduce_per_class:
                stats.failures.append(Failure(k, out, prog, len(prog.stmts), reduced=False))
                continue
            small = reduce_program(prog, out, check) if reduce else prog
            fail = Failure(k, check(small) if reduce else out, small, len(prog.stmts),
                           reduced=reduce)
            stats.failures.append(fail)
            if save_failures:
                os.makedirs(save_failures, exist_ok=True)
                path = os.path.join(save_failures, f"fuzz_{k}_{out.kind}.py")
                with open(path, "w") as f:
                    f.write(fail.reproducer())
        if progress is not None:
            progress(stats)
    stats.seconds = time.perf_counter() - start
    return stats
