"""``fxpurify bench``: the benchmark suite behind the console script.

Sits beside the pipeline, never inside it. ``fxpurify/cli.py`` imports this lazily and calls
:func:`add_bench_subcommand` on its subparsers; the work is done by ``benchmarks/run.py``,
which lives in the repository (not in the installed package: it is development tooling, and an
editable install — ``pip install -e .`` — is what makes it reachable from the console script).
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_bench_subcommand", "main"]


def _import_run():
    try:
        from benchmarks import run
    except ImportError:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.isfile(os.path.join(repo, "benchmarks", "run.py")):
            raise SystemExit(
                "fxpurify bench needs the repository's benchmarks/ folder: run it from a clone "
                "with an editable install (pip install -e .), or `python benchmarks/run.py`")
        sys.path.insert(0, repo)
        from benchmarks import run
    return run


# Kept here, not in benchmarks/, so that building the `fxpurify` parser never imports the
# benchmark code (torch.compile, transformers): `fxpurify --help` stays fast and works from a
# non-editable install. Names must match benchmarks.workloads / benchmarks.harness.
WORKLOADS = ("kv_decode", "llama_decode", "cnn_train", "gpt2_train", "adam", "adam_foreach",
             "adamw", "adamw_foreach", "synthetic_1k", "synthetic_5k", "synthetic_20k",
             "synthetic_50k")
VARIANTS = ("eager", "fxpurify", "fxpurify+writeback", "fxpurify+scatter", "fxpurify+recover",
            "anchor", "aot_eager", "inductor", "purify[eager]", "purify[inductor]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fxpurify bench`` and ``python benchmarks/run.py``."""
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, 1k-node scaling only, no torch.compile variants (CI smoke)")
    p.add_argument("--workloads", nargs="+", metavar="NAME", choices=WORKLOADS,
                   help=f"subset of: {', '.join(WORKLOADS)}")
    p.add_argument("--variants", nargs="+", metavar="NAME", choices=VARIANTS,
                   help=f"subset of: {', '.join(VARIANTS)}")
    p.add_argument("--out", default="bench-out", help="folder for JSON/CSV/Markdown/PNG")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    p.add_argument("--format", default="github", choices=["github", "pipe"],
                   help="table format")


def _run_command(args: argparse.Namespace) -> int:
    run = _import_run()
    argv = [a for a in sys.argv[1:]]
    run.run(args, "fxpurify " + " ".join(argv))
    return 0


def add_bench_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` on ``subparsers`` (from ``ArgumentParser.add_subparsers()``).

    The parser's ``func`` default is the command to call with the parsed namespace; it returns
    the process exit code.
    """
    p = subparsers.add_parser(
        "bench", help="measure the price of purity: pass time, step time, peak memory",
        description="Benchmarks fxpurify against eager, torch.compile backends and "
                    "make_fx(torch.func.functionalize) on built-in workloads.")
    add_arguments(p)
    p.set_defaults(func=_run_command)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone ``python -m fxpurify.bench_cli [options]``."""
    parser = argparse.ArgumentParser(prog="fxpurify")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_subcommand(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
