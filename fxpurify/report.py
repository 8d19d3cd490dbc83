"""Report: a readable record of every rewrite the pass made.

Each entry names the original node and op, the user's source line, what replaced it and why —
so a user can check any line of the pure graph against their code. ``Report.table()`` prints it
with tabulate; ``Report.to_dict()`` gives the same as data.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch.fx

from .errors import source_line

REPORT_KEY = "fxpurify_report"


@dataclass(frozen=True)
class Rewrite:
    kind: str            # functionalized, copy-forwarded, copy-removed, hidden-write, view-inverse,
                         # metadata-view, write-back, metadata-epilogue, clone
    node: str            # original node name ("-" for nodes the pass added)
    op: str              # original op
    replacement: str     # what stands in its place
    source: str          # user's file:line
    reason: str
    bytes: Optional[int] = None   # bytes copied, where the rewrite copies


@dataclass
class Report:
    rewrites: list = field(default_factory=list)
    nodes_in: int = 0
    nodes_out: int = 0
    seconds: float = 0.0

    def add(self, kind: str, node: Optional[torch.fx.Node], replacement: str, reason: str, nbytes=None):
        self.rewrites.append(Rewrite(
            kind, node.name if node is not None else "-", str(node.target) if node is not None else "-",
            replacement, source_line(node) if node is not None else "-", reason, nbytes))

    def counts(self) -> dict:
        return dict(Counter(r.kind for r in self.rewrites))

    @property
    def write_backs(self) -> list:
        return [r for r in self.rewrites if r.kind == "write-back"]

    @property
    def bytes_copied(self) -> int:
        return sum(r.bytes or 0 for r in self.rewrites)

    def to_dict(self) -> dict:
        return {"nodes_in": self.nodes_in, "nodes_out": self.nodes_out, "seconds": self.seconds,
                "counts": self.counts(), "bytes_copied": self.bytes_copied,
                "rewrites": [asdict(r) for r in self.rewrites]}

    def table(self, tablefmt: str = "github", kinds=None) -> str:
        from tabulate import tabulate
        rows = [(r.kind, r.node, r.op, r.replacement, r.source, r.bytes if r.bytes is not None else "", r.reason)
                for r in self.rewrites if kinds is None or r.kind in kinds]
        return tabulate(rows, headers=["rewrite", "node", "was", "now", "source", "bytes", "why"],
                        tablefmt=tablefmt)

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts().items())) or "no rewrites"
        return (f"fxpurify: {self.nodes_in} nodes in, {self.nodes_out} out, {len(self.write_backs)} "
                f"write-backs ({self.bytes_copied} bytes copied), {counts}; {self.seconds * 1e3:.1f} ms")

    def __str__(self) -> str:
        return self.summary() + "\n" + self.table()


def report_of(gm: torch.fx.GraphModule) -> Report:
    """The report of a graph returned by ``fxpurify.purify``."""
    try:
        return gm.meta[REPORT_KEY]
    except (AttributeError, KeyError):
        raise KeyError("this GraphModule was not produced by fxpurify.purify (no report attached)") from None
