"""Shrink a failing program to a minimal reproducer (delta debugging over statements).

A program "still fails" when re-checking it gives the same ``Outcome.signature()`` (same outcome
kind, and for crashes the same exception type): otherwise reduction would happily wander from a
wrong result to an unrelated crash. Removing a statement another statement needs makes eager fail
(``NameError``), which is classified ``skipped`` and so simply rejected — the reducer needs no
def-use bookkeeping. Zeller's ddmin over statements first, then single statements until nothing
more can go, then the returned values.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Callable

from .generate import Program
from .runner import Outcome

log = logging.getLogger(__name__)

__all__ = ["reduce_program"]


def reduce_program(prog: Program, outcome: Outcome, check: Callable[[Program], Outcome], *,
                   max_checks: int = 300) -> Program:
    target = outcome.signature()
    budget = [max_checks]

    def still(p: Program) -> bool:
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        return check(p).signature() == target

    stmts, rets = list(prog.stmts), list(prog.returns)

    def drop_returns():
        nonlocal rets
        for r in list(rets):
            if len(rets) > 1:
                cand = [x for x in rets if x != r]
                if still(dataclasses.replace(prog, stmts=stmts, returns=cand)):
                    rets = cand

    # Fewer returned values first: each one pins the statements that compute it.
    drop_returns()
    n = 2
    while len(stmts) >= 2 and budget[0] > 0:
        chunk = max(1, -(-len(stmts) // n))
        for i in range(0, len(stmts), chunk):
            cand = stmts[:i] + stmts[i + chunk:]
            if still(dataclasses.replace(prog, stmts=cand, returns=rets)):
                stmts = cand
                n = max(n - 1, 2)
                break
        else:
            if n >= len(stmts):
                break
            n = min(len(stmts), 2 * n)
    changed = True
    while changed and budget[0] > 0:
        changed = False
        for i in range(len(stmts)):
            cand = stmts[:i] + stmts[i + 1:]
            if still(dataclasses.replace(prog, stmts=cand, returns=rets)):
                stmts, changed = cand, True
                break
    drop_returns()
    reduced = dataclasses.replace(prog, stmts=stmts, returns=rets)
    reduced = _drop_unused_inputs(reduced, still)
    log.debug("reduced program %d from %d to %d statements (%d checks)", prog.seed,
              len(prog.stmts), len(stmts), max_checks - budget[0])
    return reduced


def _uses(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def _drop_unused_inputs(prog: Program, still: Callable[[Program], bool]) -> Program:
    """Remove inputs the remaining statements never mention (with the lines making them, and a
    shared base nobody else uses). Values of later inputs change (one generator feeds them all),
    so each removal is re-checked like any other."""
    body = "\n".join(st.src for st in prog.stmts) + "\n" + ", ".join(prog.returns)
    for name in list(prog.input_names):
        if _uses(body, name) or len(prog.input_names) == 1:
            continue
        lines = [ln for ln in prog.inputs if not ln.startswith(f"{name} =")]
        bases = {ln.split(" =")[0] for ln in lines if ln.startswith("b")}
        lines = [ln for ln in lines if not (ln.split(" =")[0] in bases and
                                            not any(_uses(o.split("=", 1)[1], ln.split(" =")[0])
                                                    for o in lines if o is not ln))]
        cand = dataclasses.replace(prog, inputs=lines,
                                   input_names=[n for n in prog.input_names if n != name])
        if still(cand):
            prog = cand
    return prog
