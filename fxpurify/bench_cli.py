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
    _import_run().add_arguments(p)
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
