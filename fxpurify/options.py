"""Options of the ``torch.compile(backend="purify")`` backend.

This module sits beside the pipeline, not inside it: it turns what ``torch.compile`` hands a
backend (``options=`` a dict, or ``mode=`` a string, never both) into one frozen
:class:`BackendOptions`. Nothing is dropped silently: an unknown key, a value of the wrong type
or an unknown choice raises ``ValueError`` naming the valid ones (hidet's ``process_options`` is
the model; Torch-TensorRT's ``parse_dynamo_kwargs``, which ignores what it does not know, is the
counter-example). There is no global mutable configuration: every compiled graph carries the
options it was compiled with.

Usage::

    torch.compile(model, backend="purify", options={"inner": "inductor", "strict": True})
    torch.compile(model, backend="purify", mode="max-autotune")   # inner="inductor" + autotune
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

__all__ = ["BackendOptions", "parse_backend_options", "MODES", "VALID_KEYS"]

_INNER = ("eager", "inductor")
_INPUT_MUTATIONS = ("copy_back", "error")


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """How ``backend="purify"`` compiles each graph Dynamo captures.

    Attributes:
        inner: what runs the pure graph. ``"eager"`` (default) runs the pure ATen graph on ATen
            kernels, so the graph a user inspects is exactly what runs, and autograd (from eager
            execution) only ever sees out-of-place ops. ``"inductor"`` hands the pure graph to
            ``torch._inductor.compile_fx.compile_fx``, whose AOTAutograd then traces autograd
            over the *pure* program (this is why programs that eager autograd rejects compile).
        input_mutations: ``"copy_back"`` (default) keeps the semantics of the program: mutated
            parameters, buffers and inputs are written back once at the end of the graph.
            ``"error"`` refuses any graph that mutates a parameter, buffer or user input and
            lists each one with the source line that mutates it: for users who want a guarantee
            that their model is free of side effects.
        strict: ``False`` (default): a graph that cannot be purified runs unpurified (the
            original graph for ``inner="eager"``, plain Inductor for ``inner="inductor"``) after
            one warning per distinct reason. ``True``: the error propagates.
        report_dir: a folder; when set, each compiled graph leaves ``<id>.before.txt`` (the
            ATen graph with its mutations), ``<id>.after.txt`` (the pure graph),
            ``<id>.report.txt`` (the table) and ``<id>.report.json`` there.
        log_report: log each graph's report table at INFO on ``fxpurify.backend`` (visible with
            ``TORCH_LOGS="fxpurify"``); a one-line summary is always logged at DEBUG.
        inductor_config: Inductor config patches (``compile_fx(config_patches=...)``) for
            ``inner="inductor"``, as sorted ``(key, value)`` pairs so the object stays hashable.
            Filled from ``mode=``; may also be given as a dict in ``options``.
    """

    inner: str = "eager"
    input_mutations: str = "copy_back"
    strict: bool = False
    report_dir: str | None = None
    log_report: bool = True
    inductor_config: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        # Validate here too, so that BackendOptions(...) built by hand is as safe as parsed ones.
        _check_choice("inner", self.inner, _INNER)
        _check_choice("input_mutations", self.input_mutations, _INPUT_MUTATIONS)
        for key in ("strict", "log_report"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(
                    f"fxpurify backend option {key!r} must be True or False, "
                    f"got {getattr(self, key)!r}"
                )
        if self.report_dir is not None and not isinstance(self.report_dir, str):
            raise ValueError(
                f"fxpurify backend option 'report_dir' must be a path or None, "
                f"got {self.report_dir!r}"
            )
        if self.inductor_config and self.inner != "inductor":
            raise ValueError(
                "fxpurify backend option 'inductor_config' only applies to inner='inductor' "
                f"(inner is {self.inner!r})"
            )

    def config_patches(self) -> dict[str, Any]:
        """The Inductor config patches as the dict ``compile_fx`` takes."""
        return dict(self.inductor_config)


VALID_KEYS = tuple(f.name for f in dataclasses.fields(BackendOptions))

# mode= → options. Each row says why; anything else raises. "default" never reaches a backend
# (torch.compile drops it) but is accepted for callers that pass it through by hand.
MODES: dict[str, dict[str, Any]] = {
    # The backend's own default: the pure graph runs on ATen kernels.
    "default": {},
    # These three are Inductor's modes; they only mean something to Inductor, so they select
    # inner="inductor" and forward Inductor's own patches for that mode (list_mode_options).
    "reduce-overhead": {"inner": "inductor"},
    "max-autotune": {"inner": "inductor"},
    "max-autotune-no-cudagraphs": {"inner": "inductor"},
}


def _check_choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(
            f"fxpurify backend option {key!r} got {value!r}; valid values: "
            + ", ".join(repr(v) for v in valid)
        )


def _mode_options(mode: str) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(
            f"fxpurify backend: unknown mode {mode!r}; valid modes: "
            + ", ".join(repr(m) for m in MODES)
            + " (or pass options={...} instead)"
        )
    opts = dict(MODES[mode])
    if opts.get("inner") == "inductor":
        import torch._inductor

        patches = torch._inductor.list_mode_options(mode)
        opts["inductor_config"] = tuple(sorted(patches.items()))
    return opts


def parse_backend_options(
    options: Mapping[str, Any] | BackendOptions | None = None, mode: str | None = None
) -> BackendOptions:
    """Parse the ``options=`` / ``mode=`` that ``torch.compile`` forwards into BackendOptions.

    Raises ``ValueError`` for an unknown key (naming the valid keys), an invalid value (naming
    the valid values), an unknown mode (naming the valid modes), or both ``options`` and
    ``mode`` (``torch.compile`` itself refuses that combination; a direct caller gets the same
    answer rather than a silent precedence rule).
    """
    if options is not None and mode is not None:
        raise ValueError(
            "fxpurify backend: pass either mode= or options=, not both "
            f"(got mode={mode!r} and options={options!r})"
        )
    if isinstance(options, BackendOptions):
        return options
    if mode is not None:
        return BackendOptions(**_mode_options(mode))
    if options is None:
        return BackendOptions()
    if not isinstance(options, Mapping):
        raise ValueError(
            f"fxpurify backend: options must be a dict, got {type(options).__name__}"
        )
    unknown = sorted(set(options) - set(VALID_KEYS))
    if unknown:
        raise ValueError(
            f"fxpurify backend: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(VALID_KEYS)}"
        )
    kwargs = dict(options)
    if isinstance(kwargs.get("report_dir"), os.PathLike):
        kwargs["report_dir"] = os.fspath(kwargs["report_dir"])
    patches = kwargs.get("inductor_config")
    if isinstance(patches, Mapping):
        kwargs["inductor_config"] = tuple(sorted(patches.items()))
    elif patches is not None and not isinstance(patches, tuple):
        raise ValueError(
            "fxpurify backend option 'inductor_config' must be a dict of Inductor config "
            f"patches, got {patches!r}"
        )
    return BackendOptions(**kwargs)
