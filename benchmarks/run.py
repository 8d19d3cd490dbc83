"""Entry point: ``python benchmarks/run.py [--quick] [--workloads ...] [--out DIR]``.

Also reachable as ``fxpurify bench`` (``fxpurify/bench_cli.py``). Runs every selected workload
in one process — pass time, graph sizes, then each run variant — prints the tables with the
machine, torch version, thread count and command, and writes JSON, CSV, Markdown and PNG plots
to ``--out``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `fxpurify` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

import torch  # noqa: E402

from benchmarks import harness, report  # noqa: E402
from benchmarks.workloads import build_workloads  # noqa: E402
from fxpurify.bench_cli import add_arguments  # noqa: E402

log = logging.getLogger("fxpurify.bench")


def run(args: argparse.Namespace, command: str | None = None) -> dict:
    """Run the benchmark as ``args`` says; returns the results dict (also written to --out)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = tuple(args.variants or harness.ALL_VARIANTS)
    bad = [v for v in variants if v not in harness.ALL_VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; valid: {', '.join(harness.ALL_VARIANTS)}")
    if args.quick or args.no_compile:
        variants = tuple(v for v in variants if v not in harness.COMPILE_VARIANTS)
    s = harness.Settings(quick=args.quick, variants=variants)
    if args.quick:
        s = harness.Settings(quick=True, variants=variants, pass_repeats=1, anchor_repeats=1,
                             min_step_reps=2, max_step_reps=5, step_budget_s=0.05)
    env = report.environment(command)
    print(report.header(env), flush=True)
    pass_results, run_results = [], []
    t_start = time.perf_counter()
    for w in build_workloads(args.workloads, quick=args.quick):
        t0 = time.perf_counter()
        gm = harness.trace(w)
        pr, pure, anchor = harness.measure_pass(w, gm, s)
        pass_results.append(pr)
        if w.group == "model" or not args.quick:
            run_results.extend(harness.measure_runs(w, pure, anchor, s))
        print(f"  {w.name}: {pr.nodes_in} nodes, {time.perf_counter() - t0:.1f}s"
              + (f"  [{pr.error}]" if pr.error else ""), flush=True)
    targets = report.targets(pass_results, run_results)
    tables = [
        "## Pass time (CPU s, median of repeats; s/1k = per 1k input nodes)",
        report.pass_table(pass_results, args.format),
        "## Runs (step = fwd+bwd for training workloads; peak = live tensor bytes of one step)",
        report.run_table(run_results, args.format),
        "## Targets of issue 4",
        report.targets_table(targets, args.format),
    ]
    print()
    print(report.header(env))
    for t in tables:
        print(t if not t.startswith("##") else "\n" + t + "\n")
    files = report.write_outputs(args.out, env, pass_results, run_results, targets)
    print(f"\nwrote {', '.join(files.values())} in {time.perf_counter() - t_start:.0f}s")
    return {"environment": env, "pass": pass_results, "runs": run_results, "targets": targets,
            "files": files}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    cmd = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    run(args, cmd.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
