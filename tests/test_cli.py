"""The fxpurify command line: default job, built-ins, file.py:name targets, exit codes, hooks."""
import os
import subprocess
import sys
import textwrap

import pytest

from fxpurify import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_file(tmp_path, body, name="prog.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_no_arguments_runs_and_verifies_the_default_models(capsys):
    from fxpurify.models import DEFAULT_MODELS

    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in DEFAULT_MODELS:
        assert f"== {name}" in out
    assert out.count("verified against eager:") == len(DEFAULT_MODELS)
    assert "| graph" in out and "mutating ops" in out and "copy_ nodes" in out
    assert "write-back" in out  # the report table
    assert "VERIFICATION FAILED" not in out


def test_model_option_and_print_graphs(capsys):
    assert cli.main(["--model", "cnn", "--print-graphs"]) == 0
    out = capsys.readouterr().out
    assert "== cnn" in out and "== kv_block" not in out
    assert "-- original graph --" in out and "-- purified graph --" in out
    assert "aten.relu_.default" in out  # the original still mutates
    stats = {row.split("|")[1].strip(): row for row in out.splitlines() if row.startswith("| ")}
    purified_row = [c.strip() for c in stats["purified"].split("|")[1:-1]]
    assert purified_row[2] == "0"  # no mutating op left


def test_graph_stats_counts():
    import torch
    from fxpurify.capture import trace

    def f(x):
        x.add_(1)
        y = x.clone()
        y.copy_(x)
        return y

    s = cli.graph_stats(trace(f, torch.randn(3)))
    assert s["mutating"] == 2 and s["copies"] == 1 and s["nodes"] >= 5


def test_user_file_target(tmp_path, capsys):
    path = _user_file(tmp_path, """
        import torch
        def step(x, acc):
            acc.add_(x)
            return acc * 2
        def build():
            return step, (torch.randn(4), torch.zeros(4))
    """)
    assert cli.main([f"{path}:build"]) == 0
    out = capsys.readouterr().out
    assert "== prog.py:build" in out and "verified against eager" in out
    assert "prog.py:4" in out  # the report names the user's line of acc.add_


def test_user_file_module_with_trace_options(tmp_path, capsys):
    path = _user_file(tmp_path, """
        import torch
        def build():
            m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).train()
            return m, (torch.randn(4, 3),), {"tracing_mode": "fake"}
    """)
    assert cli.main(["run", f"{path}:build"]) == 0
    assert "verified against eager" in capsys.readouterr().out


@pytest.mark.parametrize("spec_fmt, message", [
    ("{missing}:build", "no such file"),
    ("{path}", "expected path/to/file.py:name"),
    ("{path}:nope", "has no attribute 'nope'"),
    ("{path}:NOT_CALLABLE", "not a callable"),
    ("{path}:wrong_shape", "expected (fn_or_module, example_inputs)"),
])
def test_bad_targets_exit_2_with_a_clear_message(tmp_path, capsys, spec_fmt, message):
    path = _user_file(tmp_path, """
        NOT_CALLABLE = 3
        def build():
            return (lambda x: x), (1,)
        def wrong_shape():
            return 42
    """)
    spec = spec_fmt.format(path=path, missing=str(tmp_path / "missing.py"))
    assert cli.main([spec]) == 2
    err = capsys.readouterr().err
    assert message in err
    if "nope" in spec:
        assert "build" in err  # lists what is there


def test_unknown_builtin_exits_2(capsys):
    assert cli.main(["--model", "no_such_model"]) == 2
    assert "available:" in capsys.readouterr().err


def test_verification_failure_exits_1(tmp_path, capsys):
    # Python state read at trace time is baked into the graph; eager reads it again. The
    # oracle must catch the difference and the exit status must say so.
    path = _user_file(tmp_path, """
        import torch
        calls = [0]
        def f(x):
            calls[0] += 1
            x.mul_(calls[0])
            return x + 1
        def build():
            return f, (torch.ones(3),)
    """)
    assert cli.main([f"{path}:build"]) == 1
    assert "VERIFICATION FAILED" in capsys.readouterr().out


def test_purify_refusal_exits_1(tmp_path, capsys):
    path = _user_file(tmp_path, """
        import torch
        def f(x, y):
            x.set_(y)
            return x + 1
        def build():
            return f, (torch.randn(3), torch.randn(3))
    """)
    assert cli.main([f"{path}:build"]) == 1
    out = capsys.readouterr().out
    assert "PURIFY FAILED" in out and "UnsupportedError" in out and "set_" in out


def test_models_subcommand_lists_builtins(capsys):
    from fxpurify.models import MODELS

    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        assert name in out
    assert "(default)" in out


def test_register_subcommand(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_SUBCOMMANDS", {})

    def add(sub):
        p = sub.add_parser("hello")
        p.add_argument("--code", type=int, default=0)
        p.set_defaults(func=lambda args: print("hi") or args.code)

    cli.register_subcommand("hello", add)
    assert cli.main(["hello", "--code", "3"]) == 3
    assert "hi" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already registered"):
        cli.register_subcommand("hello", add)


def test_bench_subcommand_is_wired():
    pytest.importorskip("fxpurify.bench_cli")
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0


def test_python_dash_m_entry_point():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "fxpurify", "--model", "adam"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "== adam" in r.stdout and "verified against eager" in r.stdout


def test_json_output(tmp_path, capsys):
    import json

    path = tmp_path / "out.json"
    assert cli.main(["--model", "kv_block", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["status"] == 0
    (t,) = data["targets"]
    assert t["name"] == "kv_block" and t["status"] == "verified"
    assert t["after"]["mutating"] == 0 and t["before"]["mutating"] > 0
    assert t["report"]["counts"]["write-back"] == 3  # k_cache, v_cache, n_tokens


def test_trace_option_flags_override(tmp_path, capsys):
    import json

    path = _user_file(tmp_path, """
        import torch
        def f(x):
            y = x * 2
            y.add_(x.shape[0])
            return y
        def build():
            return f, (torch.randn(4),)
    """)
    out = tmp_path / "o.json"
    assert cli.main([f"{path}:build", "--tracing-mode", "symbolic", "--pre-dispatch",
                     "--json", str(out)]) == 0
    assert json.loads(out.read_text())["targets"][0]["status"] == "verified"
    with pytest.raises(SystemExit):
        cli.main([f"{path}:build", "--tracing-mode", "bogus"])
