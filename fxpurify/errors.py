"""Typed errors. Every error a user can reach names the node, the op, the user's source line
and what to do instead; never an ``assert``."""
from __future__ import annotations

from typing import Optional

import torch.fx


def source_line(node: Optional[torch.fx.Node]) -> str:
    """The user's ``file:line`` for ``node`` (last frame of its stack trace), or ``"<unknown>"``."""
    if node is None:
        return "<unknown>"
    trace = node.meta.get("stack_trace") or ""
    frames = [line.strip() for line in trace.strip().splitlines() if line.strip().startswith("File ")]
    if not frames:
        return "<unknown source line: trace with fxpurify.trace() to record it>"
    # 'File "x.py", line 3, in f' -> 'x.py:3 in f'
    last = frames[-1]
    try:
        path = last.split('"')[1]
        rest = last.split('", line ')[1]
        line, _, where = rest.partition(", in ")
        return f"{path}:{line} in {where}" if where else f"{path}:{line}"
    except IndexError:
        return last


def describe(node: Optional[torch.fx.Node]) -> str:
    if node is None:
        return "<graph>"
    return f"node '{node.name}' ({node.target}) at {source_line(node)}"


class FxPurifyError(RuntimeError):
    """Base class of every error fxpurify raises on purpose."""

    kind = "error"

    def __init__(self, message: str, node: Optional[torch.fx.Node] = None, hint: str = ""):
        self.node = node
        self.hint = hint
        text = message if node is None else f"{describe(node)}: {message}"
        if hint:
            text += f"\n  what to do: {hint}"
        super().__init__(text)


class UnsupportedError(FxPurifyError):
    """A construct the pass cannot express purely with certainty; refused rather than guessed."""

    kind = "unsupported"

    def __init__(self, message: str, node: Optional[torch.fx.Node] = None, hint: str = "",
                 pattern: str = "unsupported"):
        self.pattern = pattern
        super().__init__(message, node, hint)


class MissingMetadataError(FxPurifyError):
    """The graph carries no fake-tensor metadata and no example inputs were given."""

    kind = "missing-metadata"


class InvalidGraphError(FxPurifyError):
    """The graph is not an ATen-level graph (e.g. torch-level ``symbolic_trace`` output)."""

    kind = "invalid-graph"


class ImpureGraphError(FxPurifyError):
    """``check_pure`` found mutations left in a graph."""

    kind = "impure"


class AliasedInputsError(FxPurifyError):
    """At call time, inputs share storage in a way the traced graph did not assume."""

    kind = "aliased-inputs"
