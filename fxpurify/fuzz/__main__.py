"""``python -m fxpurify.fuzz --seed 0 --count 200 [--time-budget S] [--save-failures DIR]``.

Prints programs/s, counts by outcome, refusals by kind, and every failure as a reduced Python
reproducer. Exit status 1 when any program gave a wrong result, a crash or an impure graph.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fxpurify.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="first program seed (default 0)")
    ap.add_argument("--count", type=int, default=200, help="number of programs (default 200)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="stop after this many seconds even if --count is not reached")
    ap.add_argument("--save-failures", metavar="DIR", default=None,
                    help="write each failure as a runnable reproducer file into DIR")
    ap.add_argument("--no-reduce", action="store_true", help="print failures unreduced")
    ap.add_argument("--max-stmts", type=int, default=None,
                    help="statements per program (default: random 3..12)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (default 1, so rates are comparable)")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="also write the figures (counts, rate, failing seeds) as JSON")
    ap.add_argument("--show", type=int, default=20,
                    help="print at most this many reduced reproducers (default 20)")
    args = ap.parse_args(argv)

    from . import run
    torch.set_num_threads(args.threads)
    last = [time.perf_counter()]

    def progress(stats):
        if args.quiet or time.perf_counter() - last[0] < 10:
            return
        last[0] = time.perf_counter()
        print(f"  ... {stats.programs} programs, "
              + ", ".join(f"{k}={v}" for k, v in sorted(stats.outcomes.items())), flush=True)

    print(f"fxpurify fuzz: seeds {args.seed}..{args.seed + args.count - 1}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    stats = run(args.seed, args.count, time_budget=args.time_budget, reduce=not args.no_reduce,
                save_failures=args.save_failures, max_stmts=args.max_stmts, progress=progress)
    print(stats.summary())
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(stats.to_dict() | {"seed": args.seed, "count": args.count,
                                         "torch": torch.__version__,
                                         "threads": torch.get_num_threads()}, f, indent=1)
    shown = [f for f in stats.failures if f.reduced or args.no_reduce]
    for f in shown[:args.show]:
        print(f"\n===== program {f.seed}: {f.outcome.kind} =====")
        print(f.reproducer())
    if len(stats.failures) > len(shown[:args.show]):
        print(f"\n({len(stats.failures) - len(shown[:args.show])} more failing programs: "
              f"seeds {', '.join(str(f.seed) for f in stats.failures if f not in shown[:args.show])})")
    if stats.failed:
        print(f"\nFAILED: {stats.failed} program(s) with a wrong result, crash or impure graph")
        return 1
    print("\nno wrong results, no crashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
