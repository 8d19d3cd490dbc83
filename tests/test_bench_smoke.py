"""CI smoke test of the benchmarks: `--quick` runs end to end and produces its tables, JSON, CSV
and plots. No timing is asserted — only that the outputs exist, are well formed, and that the
memory-recovery variants agree with eager."""
import argparse
import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_tables_are_printed_with_context(quick_run):
    _, stdout = quick_run
    assert "machine:" in stdout and "torch " in stdout and "threads: 1" in stdout
    assert "command: `python benchmarks/run.py --quick" in stdout
    for title in ("## Pass time", "## Runs", "## Targets of issue 4"):
        assert title in stdout
    assert "| workload" in stdout and "|---" in stdout  # github tables
    assert stdout.count("machine:") >= 2  # before the progress lines and with the tables


def test_json_csv_and_markdown(quick_run):
    out, _ = quick_run
    data = json.loads((out / "results.json").read_text())
    assert {"environment", "pass", "runs", "targets"} <= set(data)
    assert data["environment"]["threads"] == 1
    names = {p["workload"] for p in data["pass"]}
    assert {"kv_decode", "cnn_train", "adam", "synthetic_1k"} <= names
    for p in data["pass"]:
        assert p["nodes_in"] > 0 and p["floor"]["median"] > 0
    syn = next(p for p in data["pass"] if p["workload"] == "synthetic_1k")
    assert 700 <= syn["nodes_in"] <= 1500
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["runs"]) > 0
    with open(out / "pass.csv") as f:
        assert len(list(csv.DictReader(f))) == len(data["pass"])
    md = (out / "results.md").read_text()
    assert "## Pass time" in md and "## Targets" in md


def test_plots(quick_run):
    pytest.importorskip("matplotlib")  # the `bench` extra; plots are skipped without it
    out, _ = quick_run
    for png in ("pass_scaling.png", "tradeoff.png"):
        assert (out / png).stat().st_size > 1000
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_recovery_variants_match_eager(quick_run):
    out, _ = quick_run
    runs = json.loads((out / "results.json").read_text())["runs"]
    by = {(r["workload"], r["variant"]): r for r in runs}
    for wl in ("kv_decode", "adam"):
        for v in ("eager", "fxpurify+writeback", "fxpurify+scatter", "fxpurify+recover"):
            r = by[(wl, v)]
            assert r["ok"] is True, (wl, v, r["error"])
            assert r["peak_bytes"] is not None and r["step_ms"] > 0
    # the KV cache write really ran in place, the Adam write-backs really moved
    assert int(by[("kv_decode", "fxpurify+scatter")]["rewrites"]) >= 1
    assert int(by[("adam", "fxpurify+writeback")]["rewrites"]) >= 1
    assert by[("kv_decode", "fxpurify+recover")]["peak_bytes"] < by[("kv_decode", "fxpurify")][
        "peak_bytes"]
    assert by[("adam", "fxpurify+recover")]["peak_bytes"] < by[("adam", "fxpurify")]["peak_bytes"]


def test_cli_subcommand_parses_and_runs(tmp_path):
    from fxpurify.bench_cli import add_bench_subcommand

    parser = argparse.ArgumentParser(prog="fxpurify")
    sub = parser.add_subparsers(dest="command")
    add_bench_subcommand(sub)
    args = parser.parse_args(["bench", "--quick", "--workloads", "kv_decode", "--variants",
                              "eager", "fxpurify+recover", "--out", str(tmp_path)])
    assert args.quick and args.workloads == ["kv_decode"]
    assert args.func(args) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in data["runs"]] == ["eager", "fxpurify+recover"]
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--workloads", "no_such_workload"])


def test_cli_names_match_the_harness():
    sys.path.insert(0, REPO)
    from benchmarks import harness, workloads
    from fxpurify import bench_cli

    assert bench_cli.VARIANTS == harness.ALL_VARIANTS
    assert set(bench_cli.WORKLOADS) == set(workloads.WORKLOAD_NAMES)
