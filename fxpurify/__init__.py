"""fxpurify: graph-level functionalization for ``torch.fx``.

Pipeline (see ``pipeline.py``): capture → analyze (ops, aliases) → rewrite (functionalize,
views, copies) → clean up → emit → report.
"""
from .errors import FxPurifyError, ImpureGraphError, MissingMetadataError, UnsupportedError
from .pipeline import purify
from .check import check_pure, impure_nodes
from .report import Report, report_of

__all__ = [
    "purify", "check_pure", "impure_nodes", "Report", "report_of", "trace", "purify_module", "purify_function",
    "FxPurifyError", "ImpureGraphError", "MissingMetadataError", "UnsupportedError",
]


def __getattr__(name):
    # Lazy: capture/module pull in make_fx and friends; keep `import fxpurify` cheap.
    if name == "trace":
        from .capture import trace
        return trace
    if name in ("purify_module", "purify_function"):
        from . import module
        return getattr(module, name)
    raise AttributeError(f"module 'fxpurify' has no attribute {name!r}")
