"""Tables (tabulate), JSON/CSV and PNG plots from the harness results, plus the target check.

Every table is printed under a header naming the machine, torch version, thread count and the
command, so a number never travels without its context (STYLE.md §10).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import platform
import sys
from typing import Any

import torch
from tabulate import tabulate

from fxpurify.memory import format_bytes

from .harness import PassResult, RunResult

__all__ = ["environment", "header", "pass_table", "run_table", "targets_table", "write_outputs"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(command: str | None = None) -> dict[str, Any]:
    dev = "cpu"
    if torch.cuda.is_available():
        dev = f"cuda ({torch.cuda.get_device_name(0)})"
    return {
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
                   f"{platform.machine()}",
        "device": dev,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": command or " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def header(env: dict[str, Any]) -> str:
    return (f"machine: {env['machine']} | device: {env['device']} | torch {env['torch']} | "
            f"threads: {env['threads']} | {env['date']}\ncommand: `{env['command']}`")


def _s(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.{digits}f}x"


def _per_k(t, nodes: int) -> float | None:
    return None if t is None or not nodes else t.median / nodes * 1000


def pass_table(results: list[PassResult], fmt: str = "github") -> str:
    rows = []
    for r in results:
        fx_k, an_k, fl_k = (_per_k(r.fxpurify, r.nodes_in), _per_k(r.anchor, r.nodes_in),
                            _per_k(r.floor, r.nodes_in))
        rows.append([
            r.workload, r.nodes_in,
            "n/a" if r.fxpurify is None else
            f"{r.fxpurify.median:.3f} ({r.fxpurify.min:.3f}–{r.fxpurify.max:.3f})",
            _s(fx_k), _s(an_k), _ratio(an_k, fx_k, 1), _s(fl_k), _ratio(fx_k, fl_k, 1),
            f"{_n(r.fxpurify_nodes)} / {_n(r.anchor_nodes)}",
            f"{_n(r.fxpurify_copies)} / {_n(r.anchor_copies)}",
            f"{_n(r.fxpurify_dead)} / {_n(r.anchor_dead)}",
            "n/a" if r.extra_bytes is None else format_bytes(r.extra_bytes),
            r.error[:80],
        ])
    cols = ["workload", "nodes in", "fxpurify s (min–max)", "fxpurify s/1k", "anchor s/1k",
            "anchor ÷ fxpurify", "floor s/1k", "fxpurify ÷ floor", "nodes out fxp / anchor",
            "copies fxp / anchor", "dead fxp / anchor", "extra bytes (pure)", "error"]
    return tabulate(rows, cols, tablefmt=fmt, disable_numparse=True)


def _n(x: Any) -> str:
    return "n/a" if x is None else str(x)


def run_table(results: list[RunResult], fmt: str = "github") -> str:
    eager = {r.workload: r for r in results if r.variant == "eager"}
    rows = []
    for r in results:
        e = eager.get(r.workload)
        rows.append([
            r.workload, r.variant, {True: "yes", False: "NO", None: "n/a"}[r.ok],
            _s(r.fwd_ms), "n/a" if r.step_ms is None else
            f"{r.step_ms:.3f} ({r.step_min_ms:.3f}–{r.step_max_ms:.3f})",
            _ratio(r.step_ms, e.step_ms if e else None),
            "n/a" if r.peak_bytes is None else format_bytes(r.peak_bytes),
            _ratio(r.peak_bytes, e.peak_bytes if e else None) if (
                e and e.peak_bytes) else ("n/a" if r.peak_bytes is None or not e
                                          else f"+{format_bytes(r.peak_bytes - (e.peak_bytes or 0))}"),
            _s(r.compile_s, 2), r.rewrites, r.error[:70],
        ])
    cols = ["workload", "variant", "matches eager", "fwd ms", "step ms (min–max)",
            "step ÷ eager", "peak live", "peak ÷ eager", "first call s", "rewrites", "error"]
    return tabulate(rows, cols, tablefmt=fmt, disable_numparse=True)


# ----------------------------------------------------------------------------- targets

def targets(pass_results: list[PassResult], run_results: list[RunResult]) -> list[dict]:
    """Evaluate issue 4's targets on these results: one row per target, met or not, and why."""
    out = []

    def add(name, met, detail):
        out.append({"target": name, "met": met, "detail": detail})

    ok = [r for r in pass_results if r.fxpurify and r.anchor]
    if ok:
        worst = min(ok, key=lambda r: r.anchor.median / r.fxpurify.median)
        sp = worst.anchor.median / worst.fxpurify.median
        add("pass time ≥10x below anchor (every workload)", sp >= 10,
            f"worst {worst.workload}: {sp:.1f}x")
    fl = [r for r in pass_results if r.fxpurify and r.floor]
    if fl:
        worst = max(fl, key=lambda r: r.fxpurify.median / r.floor.median)
        add("pass time ≤3x walk+recompile floor", worst.fxpurify.median / worst.floor.median <= 3,
            f"worst {worst.workload}: {worst.fxpurify.median / worst.floor.median:.1f}x")
    sc = [r for r in pass_results if r.workload.startswith("synthetic") and r.fxpurify]
    if len(sc) >= 2:
        per = [r.fxpurify.median / r.nodes_in * 1000 for r in sc]
        add("per-1k pass time flat within 1.5x (1k→50k)", max(per) / min(per) <= 1.5,
            f"{min(per):.3f}–{max(per):.3f} s/1k ({max(per) / min(per):.2f}x)")
    dead = [r for r in pass_results if r.fxpurify_dead is not None]
    if dead:
        bad = [r.workload for r in dead if r.fxpurify_dead]
        add("zero dead nodes out", not bad, "dead in: " + (", ".join(bad) or "none"))
    cmp_ = [r for r in pass_results if r.fxpurify_nodes is not None and r.anchor_nodes]
    if cmp_:
        bad = [r.workload for r in cmp_ if r.fxpurify_nodes > r.anchor_nodes]
        add("never more nodes than the anchor", not bad, "more in: " + (", ".join(bad) or "none"))
    by = {}
    for r in run_results:
        by.setdefault(r.workload, {})[r.variant] = r
    mem_bad, time_bad, mem_detail = [], [], []
    for wl, vs in by.items():
        e, rec = vs.get("eager"), vs.get("fxpurify+recover")
        if not (e and rec and rec.peak_bytes is not None and e.peak_bytes is not None):
            continue
        mr = rec.peak_bytes / e.peak_bytes if e.peak_bytes else (1.0 if not rec.peak_bytes
                                                                  else float("inf"))
        mem_detail.append(f"{wl} {mr:.2f}x")
        if mr > 1.10:
            mem_bad.append(wl)
        if rec.step_ms and e.step_ms and rec.step_ms / e.step_ms > 1.10:
            time_bad.append(f"{wl} {rec.step_ms / e.step_ms:.2f}x")
    if mem_detail:
        add("recovered peak ≤1.10x eager (every workload)", not mem_bad, "; ".join(mem_detail))
        add("recovered step time ≤1.10x eager (every workload)", not time_bad,
            "over: " + (", ".join(time_bad) or "none"))
    ind = [(wl, vs["purify[inductor]"], vs["inductor"]) for wl, vs in by.items()
           if "purify[inductor]" in vs and "inductor" in vs
           and vs["purify[inductor]"].step_ms and vs["inductor"].step_ms]
    if ind:
        rs = [(wl, a.step_ms / b.step_ms) for wl, a, b in ind]
        add("purify[inductor] step ≤1.05x inductor", all(x <= 1.05 for _, x in rs),
            "; ".join(f"{wl} {x:.2f}x" for wl, x in rs))
    ce = [(wl, vs["purify[eager]"], vs["aot_eager"]) for wl, vs in by.items()
          if "purify[eager]" in vs and "aot_eager" in vs
          and vs["purify[eager]"].compile_s and vs["aot_eager"].compile_s]
    if ce:
        rs = [(wl, a.compile_s / b.compile_s) for wl, a, b in ce]
        add("purify[eager] first call ≤1.2x aot_eager", all(x <= 1.2 for _, x in rs),
            "; ".join(f"{wl} {x:.2f}x" for wl, x in rs))
    wrong = [f"{r.workload}/{r.variant}" for r in run_results if r.ok is False]
    add("every variant matches eager", not wrong, "mismatch: " + (", ".join(wrong) or "none"))
    return out


def targets_table(rows: list[dict], fmt: str = "github") -> str:
    return tabulate([[r["target"], "met" if r["met"] else "NOT met", r["detail"]] for r in rows],
                    ["target (issue 4)", "status", "measured"], tablefmt=fmt,
                    disable_numparse=True)


# ----------------------------------------------------------------------------- files

def _plots(out_dir: str, pass_results: list[PassResult], run_results: list[RunResult]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    files = []
    sc = sorted([r for r in pass_results if r.workload.startswith("synthetic")],
                key=lambda r: r.nodes_in)
    if sc:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, attr in (("fxpurify", "fxpurify"), ("anchor make_fx(functionalize)", "anchor"),
                            ("walk+recompile floor", "floor")):
            pts = [(r.nodes_in, getattr(r, attr).median / r.nodes_in * 1000) for r in sc
                   if getattr(r, attr) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input graph nodes")
        ax.set_ylabel("CPU seconds per 1k nodes")
        ax.set_title("pass time scaling (1 thread)")
        ax.legend()
        fig.tight_layout()
        p = os.path.join(out_dir, "pass_scaling.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)
    eager = {r.workload: r for r in run_results if r.variant == "eager"}
    pts = [(r, eager[r.workload]) for r in run_results
           if r.workload in eager and r.variant != "eager" and r.peak_bytes is not None
           and r.step_ms and eager[r.workload].step_ms and eager[r.workload].peak_bytes]
    if pts:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        variants = sorted({r.variant for r, _ in pts})
        workloads = sorted({r.workload for r, _ in pts})
        colors = dict(zip(variants, plt.get_cmap("tab10").colors))
        markers = dict(zip(workloads, "osD^v<>pPX*h"))
        for r, e in pts:
            ax.scatter(r.step_ms / e.step_ms, r.peak_bytes / e.peak_bytes, s=36,
                       color=colors[r.variant], marker=markers[r.workload], alpha=0.85)
        from matplotlib.lines import Line2D

        handles = ([Line2D([], [], ls="", marker="o", color=colors[v], label=v) for v in variants]
                   + [Line2D([], [], ls="", marker=markers[w], color="grey", label=w)
                      for w in workloads])
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step time ÷ eager")
        ax.set_ylabel("peak live memory ÷ eager")
        ax.set_title("price of purity: time vs memory (eager = 1, 1; lower left is better)")
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        p = os.path.join(out_dir, "tradeoff.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)
    return files


def replot(json_path: str, out_dir: str) -> list[str]:
    """Redraw the PNGs from a results.json (no re-measuring)."""
    from .harness import Timing

    with open(json_path) as f:
        data = json.load(f)

    def timing(d):
        return Timing(**d) if d else None

    passes = [PassResult(**{**d, **{k: timing(d[k]) for k in ("fxpurify", "anchor", "floor")}})
              for d in data["pass"]]
    runs = [RunResult(**d) for d in data["runs"]]
    return _plots(out_dir, passes, runs)


def write_outputs(out_dir: str, env: dict, pass_results: list[PassResult],
                  run_results: list[RunResult], target_rows: list[dict]) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    data = {"environment": env,
            "pass": [dataclasses.asdict(r) for r in pass_results],
            "runs": [dataclasses.asdict(r) for r in run_results],
            "targets": target_rows}
    files["json"] = os.path.join(out_dir, "results.json")
    with open(files["json"], "w") as f:
        json.dump(data, f, indent=1)
    files["pass_csv"] = os.path.join(out_dir, "pass.csv")
    with open(files["pass_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workload", "nodes_in", "fxpurify_s", "fxpurify_min_s", "fxpurify_max_s",
                    "anchor_s", "floor_s", "fxpurify_nodes", "anchor_nodes", "fxpurify_copies",
                    "anchor_copies", "fxpurify_dead", "anchor_dead", "extra_bytes", "error"])
        for r in pass_results:
            w.writerow([r.workload, r.nodes_in,
                        *(getattr(r.fxpurify, k, None) for k in ("median", "min", "max")),
                        getattr(r.anchor, "median", None), getattr(r.floor, "median", None),
                        r.fxpurify_nodes, r.anchor_nodes, r.fxpurify_copies, r.anchor_copies,
                        r.fxpurify_dead, r.anchor_dead, r.extra_bytes, r.error])
    files["runs_csv"] = os.path.join(out_dir, "runs.csv")
    with open(files["runs_csv"], "w", newline="") as f:
        fields = [x.name for x in dataclasses.fields(RunResult)]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in run_results:
            w.writerow(dataclasses.asdict(r))
    md = [f"# fxpurify benchmark\n\n{header(env)}\n", "## Pass time\n", pass_table(pass_results),
          "\n## Runs\n", run_table(run_results), "\n## Targets\n", targets_table(target_rows)]
    files["markdown"] = os.path.join(out_dir, "results.md")
    with open(files["markdown"], "w") as f:
        f.write("\n".join(md) + "\n")
    for p in _plots(out_dir, pass_results, run_results):
        files[os.path.splitext(os.path.basename(p))[0]] = p
    return files
