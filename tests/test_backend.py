"""torch.compile(backend="purify"): registration, training, options, Dynamo realities.

Every test compares against eager (outputs, gradients, final parameter/buffer/input state).
Inner "eager" is the default and fast; "inductor" cases are kept few and tiny (CPU C++ compiles).
"""
import copy
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn as nn
from torch._dynamo.exc import BackendCompilerFailed
from torch._dynamo.utils import counters

import fxpurify.backend as backend_mod
from fxpurify.errors import UnsupportedError

INNERS = ["eager", "inductor"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()


def compiled(fn, inner="eager", **kw):
    options = kw.pop("options", {})
    return torch.compile(fn, backend="purify", options={"inner": inner, **options}, **kw)


def sigmoid_mul_(x):
    y = x.sigmoid()
    y.mul_(2)  # eager autograd: sigmoid's backward needs y, which this overwrites
    return y


class Stateful(nn.Module):
    """Parameters, a buffer updated in place and in-place activations."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("ema", torch.zeros(6))

    def forward(self, x):
        h = self.lin(x)
        h.relu_()
        self.count.add_(1)
        self.ema.mul_(0.9).add_(h.detach().mean(0), alpha=0.1)
        h = h * 2
        h.add_(self.ema)
        return h.tanh_()


def _train(model, step_fn, xs):
    outs, grads = [], []
    for x in xs:
        for p in model.parameters():
            p.grad = None
        out = step_fn(x)
        out.square().sum().backward()
        outs.append(out.detach().clone())
        grads.append([p.grad.clone() for p in model.parameters()])
    return outs, grads


def assert_same_training(inner, device="cpu", steps=2):
    ref = Stateful().to(device)
    model = copy.deepcopy(ref)
    xs = [torch.randn(4, 6, device=device) for _ in range(steps)]
    ref_outs, ref_grads = _train(ref, ref, xs)
    outs, grads = _train(model, compiled(model, inner), xs)
    torch.testing.assert_close(outs, ref_outs)
    torch.testing.assert_close(grads, ref_grads)
    torch.testing.assert_close(dict(model.named_buffers()), dict(ref.named_buffers()))
    assert model.count.item() == steps


# -------------------------------------------------------------------------------------------
# registration


def _run_python(code, **env):
    # cwd outside the checkout: the package must come from the installation, not from ./fxpurify
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env},
                          cwd=os.path.dirname(os.path.dirname(os.__file__)))


def test_registered_through_entry_point_without_import():
    proc = _run_python("""
        import sys, torch
        assert "fxpurify" not in sys.modules
        assert "purify" in torch.compiler.list_backends()
        x = torch.randn(5, requires_grad=True)
        y = torch.compile(lambda t: t.sigmoid().mul_(2), backend="purify")(x)
        y.sum().backward()
        assert "fxpurify.backend" in sys.modules
        torch.testing.assert_close(x.grad, 2 * x.sigmoid() * (1 - x.sigmoid()))
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_importing_the_backend_does_not_register_a_duplicate_and_torch_logs_works():
    # An entry point plus register_backend under one name raises "duplicate name" on lookup.
    proc = _run_python("""
        import torch, fxpurify, fxpurify.backend
        from torch._dynamo.backends.registry import lookup_backend
        assert lookup_backend("purify") is fxpurify.backend.purify_backend
        print(torch.compile(lambda t: t.mul_(2), backend="purify")(torch.ones(2)).tolist())
    """, TORCH_LOGS="+fxpurify")
    assert proc.returncode == 0, proc.stderr
    assert "[2.0, 2.0]" in proc.stdout
    assert "fxpurify report for graph" in proc.stderr  # TORCH_LOGS="+fxpurify" shows the report


# -------------------------------------------------------------------------------------------
# training: the headline and gradients


def test_eager_and_aot_backends_reject_the_headline_program():
    # The status quo this backend fixes (torch 2.13): autograd over the mutating program fails.
    x = torch.randn(8, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        sigmoid_mul_(x).sum().backward()
    with pytest.raises(BackendCompilerFailed, match="modified by an inplace operation"):
        torch.compile(sigmoid_mul_, backend="aot_eager")(x).sum().backward()


@pytest.mark.parametrize("inner", INNERS)
def test_headline_gives_gradients_of_the_out_of_place_program(inner):
    x = torch.randn(8, requires_grad=True)
    out = compiled(sigmoid_mul_, inner)(x)
    out.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (x_ref.sigmoid() * 2).sum().backward()
    torch.testing.assert_close(out, x_ref.sigmoid() * 2)
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("inner", INNERS)
def test_training_matches_eager(inner):
    assert_same_training(inner)


def test_user_input_mutation_is_copied_back():
    def f(x, y):
        x.add_(1)
        y[1:].mul_(3)
        return x * y

    x, y = torch.randn(4), torch.randn(4)
    xr, yr = x.clone(), y.clone()
    out = compiled(f)(x, y)
    ref = f(xr, yr)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close((x, y), (xr, yr))


def test_output_aliasing_an_input_still_aliases_it():
    def f(x):
        x.mul_(2)
        return x[:2]

    x = torch.ones(4)
    out = compiled(f)(x)
    assert out.tolist() == [2.0, 2.0] and x.tolist() == [2.0] * 4
    x.fill_(5)  # the caller sees through the view, as in eager
    assert out.tolist() == [5.0, 5.0]


@pytest.mark.parametrize("inner", INNERS)
def test_inputs_aliased_at_call_time_are_refused_not_miscomputed(inner):
    # Dynamo does not recompile when two inputs start sharing memory (views of one base), so
    # the pure graph's call-time guard is what stands between the user and a wrong result.
    from fxpurify.errors import AliasedInputsError

    def f(a, b):
        a.add_(1)
        return b * 2

    fn = compiled(f, inner)
    a, b = torch.zeros(4), torch.zeros(4)
    torch.testing.assert_close(fn(a, b), torch.zeros(4))
    assert a.tolist() == [1.0] * 4
    base = torch.zeros(8)
    with pytest.raises(AliasedInputsError, match="share memory"):
        fn(base[:4], base[:4])


class NoGradRegion(nn.Module):
    """An EMA of the activations updated in place under no_grad inside forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("ema", torch.zeros(4))

    def forward(self, x):
        h = self.lin(x).sigmoid()
        with torch.no_grad():
            self.ema.mul_(0.5).add_(h.mean(0), alpha=0.5)
        h.mul_(2)  # autograd-unsafe: sigmoid saved h
        return h + self.ema


def test_no_grad_region_inside_forward():
    ref = NoGradRegion()
    model = copy.deepcopy(ref)
    step = compiled(model, options={"strict": True})
    for _ in range(2):
        x = torch.randn(3, 4)
        out = step(x)
        out.sum().backward()
        # reference: the out-of-place program (eager rejects the original)
        h = ref.lin(x).sigmoid()
        with torch.no_grad():
            ref.ema.mul_(0.5).add_(h.mean(0), alpha=0.5)
        out_ref = h * 2 + ref.ema
        out_ref.sum().backward()
        torch.testing.assert_close(out, out_ref)
        assert not model.ema.requires_grad
    torch.testing.assert_close(model.ema, ref.ema)
    torch.testing.assert_close(model.lin.weight.grad, ref.lin.weight.grad)


class Autocast(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.lin(x)
        return h.float().relu_()


def test_autocast_region_and_inference_mode():
    ref = Autocast()
    model = copy.deepcopy(ref)
    step = compiled(model, options={"strict": True})
    x = torch.randn(3, 4)
    out = step(x)
    assert out.dtype == torch.float32
    out.sum().backward()
    out_ref = ref(x)
    out_ref.sum().backward()
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(model.lin.weight.grad, ref.lin.weight.grad)
    torch._dynamo.reset()
    with torch.inference_mode():
        torch.testing.assert_close(step(x), ref(x))
    assert model.calls.item() == ref.calls.item() == 2


def test_no_grad_inference_updates_buffers():
    ref = Stateful().eval()
    model = copy.deepcopy(ref)
    x = torch.randn(4, 6)
    with torch.no_grad():
        out = compiled(model)(x)
        out_ref = ref(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(dict(model.named_buffers()), dict(ref.named_buffers()))


OPTIMIZERS = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=False),
    "adam-foreach": lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=True),
}


@pytest.mark.parametrize("opt_name,inner", [
    ("sgd-momentum", "eager"), ("adam-foreach", "eager"), ("adam-foreach", "inductor")])
def test_compiled_optimizer_step_matches_eager(opt_name, inner):
    # strict: the step (parameters and state are graph attributes, written in place under
    # no_grad) must really be purified, not fall back
    make_opt = OPTIMIZERS[opt_name]
    ref = nn.Linear(5, 3)
    model = copy.deepcopy(ref)
    opt_ref, opt = make_opt(ref.parameters()), make_opt(model.parameters())
    step = compiled(opt.step, inner, options={"strict": True})
    for _ in range(3):
        x = torch.randn(7, 5)
        for m, o, s in ((ref, opt_ref, opt_ref.step), (model, opt, step)):
            o.zero_grad()
            m(x).square().mean().backward()
            s()
        torch.testing.assert_close(dict(model.named_parameters()), dict(ref.named_parameters()))
    assert counters["stats"]["unique_graphs"] >= 1  # the step really went through a backend


# -------------------------------------------------------------------------------------------
# options


def test_input_mutations_error_lists_each_input_with_its_source_line():
    model = Stateful()
    with pytest.raises(BackendCompilerFailed) as info:
        compiled(model, options={"input_mutations": "error"})(torch.randn(2, 6))
    msg = str(info.value)
    assert "InputMutationError" in msg and "input_mutations='error'" in msg
    for buf in ("count", "ema"):
        assert f"_buffers['{buf}']" in msg
    assert f"{os.path.basename(__file__)}:" in msg  # the user's file:line


def test_input_mutations_error_sees_hidden_batch_norm_writes():
    # train-mode batch_norm writes running stats without (a!) in its schema (pytorch#73050)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(inplace=True))
    with pytest.raises(BackendCompilerFailed) as info:
        compiled(model, options={"input_mutations": "error"})(torch.randn(3, 4))
    msg = str(info.value)
    for buf in ("running_mean", "running_var", "num_batches_tracked"):
        assert f"_buffers['{buf}']" in msg
    assert "BatchNorm1d" in msg  # where: Dynamo records no line inside torch.nn, so the module
    torch._dynamo.reset()
    model.eval()  # eval mode writes nothing: accepted
    out = compiled(model, options={"input_mutations": "error"})(torch.randn(3, 4))
    assert out.shape == (3, 4)


def test_input_mutations_error_accepts_side_effect_free_graphs():
    def f(x):
        y = x * 2
        y.relu_()
        return y

    x = torch.randn(5)
    out = compiled(f, options={"input_mutations": "error"})(x)
    torch.testing.assert_close(out, (x * 2).relu())


def _refuse(*args, **kwargs):
    raise UnsupportedError("cannot purify this on purpose", hint="nothing")


def test_non_strict_falls_back_and_warns_once(monkeypatch):
    monkeypatch.setattr(backend_mod, "_purify", _refuse)
    monkeypatch.setattr(backend_mod, "_warned", set())

    def f(x):
        y = x.cos()
        y.add_(1)
        torch._dynamo.graph_break()
        y.mul_(2)
        return y

    x = torch.randn(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(f)(x)
    torch.testing.assert_close(out, (x.cos() + 1) * 2)
    msgs = [str(w.message) for w in caught if "fxpurify backend" in str(w.message)]
    assert len(msgs) == 1, msgs  # two graphs, one reason: one warning
    assert "runs unpurified" in msgs[0] and "cannot purify this on purpose" in msgs[0]


def test_non_strict_fallback_with_inner_inductor_is_plain_inductor(monkeypatch):
    monkeypatch.setattr(backend_mod, "_purify", _refuse)
    monkeypatch.setattr(backend_mod, "_warned", set())
    x = torch.randn(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(lambda t: t.cos().add_(1), "inductor")(x)
    torch.testing.assert_close(out, x.cos() + 1)
    assert any("plain Inductor" in str(w.message) for w in caught)


class Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def body(self, x):
        return self.lin(x).sigmoid() * 2

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.body, x, use_reentrant=False).relu_()


@pytest.mark.parametrize("inner", INNERS)
def test_activation_checkpointing_purified_and_trains_like_eager(inner):
    ref = Checkpointed()
    model = copy.deepcopy(ref)
    x = torch.randn(3, 4)
    out = compiled(model, inner, options={"strict": True})(x)
    out.sum().backward()
    out_ref = ref(x)
    out_ref.sum().backward()
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(model.lin.weight.grad, ref.lin.weight.grad)


def test_strict_raises(monkeypatch):
    monkeypatch.setattr(backend_mod, "_purify", _refuse)
    with pytest.raises(BackendCompilerFailed, match="cannot purify this on purpose"):
        compiled(lambda t: t.add_(1), options={"strict": True})(torch.randn(3))


def _overlapping_write(x):
    y = x * 1
    y.as_strided((2, 3), (0, 1)).fill_(1.0)  # several elements of the view share memory
    return y + 1


def test_real_refusal_falls_back_with_its_reason(monkeypatch):
    monkeypatch.setattr(backend_mod, "_warned", set())
    x = torch.zeros(6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(_overlapping_write)(x)
    torch.testing.assert_close(out, _overlapping_write(x))
    msgs = [str(w.message) for w in caught if "fxpurify backend" in str(w.message)]
    assert len(msgs) == 1 and "UnsupportedError" in msgs[0] and "overlap" in msgs[0]
    assert "internal error" not in msgs[0]  # a typed refusal, not a crash


def test_real_refusal_strict_names_op_and_line():
    with pytest.raises(BackendCompilerFailed, match="overlap") as info:
        compiled(_overlapping_write, options={"strict": True})(torch.zeros(6))
    assert "aten.fill_" in str(info.value)
    assert f"{os.path.basename(__file__)}:" in str(info.value)


def test_unknown_option_fails_the_compile():
    with pytest.raises(BackendCompilerFailed, match="unknown option"):
        torch.compile(lambda t: t + 1, backend="purify", options={"bogus": 1})(torch.randn(2))


def test_report_is_logged_and_written(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fxpurify.backend")
    x = torch.randn(8)
    compiled(sigmoid_mul_, options={"report_dir": str(tmp_path)})(x)
    assert any("fxpurify report for graph" in r.getMessage() for r in caplog.records)
    names = sorted(os.listdir(tmp_path))
    stems = {n.split(".")[0] for n in names}
    assert len(stems) == 1
    for suffix in ("dynamo.txt", "before.txt", "after.txt", "report.txt", "report.json"):
        assert any(n.endswith(suffix) for n in names), names
    stem = stems.pop()
    before = (tmp_path / f"{stem}.before.txt").read_text()
    after = (tmp_path / f"{stem}.after.txt").read_text()
    assert "aten.mul_" in before and "aten.mul_" not in after and "aten.mul.Tensor" in after


def test_log_report_false_stays_quiet(caplog):
    caplog.set_level(logging.INFO, logger="fxpurify.backend")
    compiled(sigmoid_mul_, options={"log_report": False})(torch.randn(3))
    assert not any("fxpurify report" in r.getMessage() for r in caplog.records)


def test_mode_reaches_the_backend(caplog):
    with pytest.raises(BackendCompilerFailed, match="unknown mode"):
        torch.compile(lambda t: t + 1, backend="purify", mode="fast")(torch.randn(2))
    torch._dynamo.reset()
    # an Inductor mode selects inner="inductor" (cudagraphs only matter on CUDA)
    caplog.set_level(logging.DEBUG, logger="fxpurify.backend")
    x = torch.randn(8, requires_grad=True)
    out = torch.compile(sigmoid_mul_, backend="purify", mode="reduce-overhead")(x)
    torch.testing.assert_close(out, x.sigmoid() * 2)
    assert any("inner=inductor" in r.getMessage() for r in caplog.records)


# -------------------------------------------------------------------------------------------
# Dynamo realities


def test_graph_breaks_each_graph_purified_and_reported(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fxpurify.backend")

    def f(x):
        y = x.sigmoid()
        y.mul_(2)
        print("graph break")  # noqa: T201 - forces a break
        z = y.exp()
        z.add_(1)
        return z

    x = torch.randn(6, requires_grad=True)
    out = compiled(f, options={"report_dir": str(tmp_path)})(x)
    out.sum().backward()
    xr = x.detach().clone().requires_grad_()
    ((xr.sigmoid() * 2).exp() + 1).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    reports = [r for r in caplog.records if "fxpurify report for graph" in r.getMessage()]
    assert len(reports) == 2
    afters = sorted(p for p in os.listdir(tmp_path) if p.endswith(".after.txt"))
    assert len(afters) == 2
    for a in afters:
        assert "_.Tensor" not in (tmp_path / a).read_text()  # no in-place overload left


@pytest.mark.parametrize("inner", INNERS)
def test_dynamic_shapes_no_extra_recompiles(inner):
    def run(backend, **kw):
        torch._dynamo.reset()
        counters.clear()
        f = torch.compile(sigmoid_mul_, backend=backend, dynamic=True, **kw)
        grad = backend == "purify"  # the "eager" backend runs the mutating program: no backward
        for n in (3, 5, 9, 17):
            x = torch.randn(n, requires_grad=grad)
            out = f(x)
            torch.testing.assert_close(out, x.sigmoid() * 2)
            if grad:
                out.sum().backward()
                torch.testing.assert_close(x.grad, 2 * x.sigmoid() * (1 - x.sigmoid()))
        return counters["stats"]["unique_graphs"]

    purify_graphs = run("purify", options={"inner": inner})
    assert purify_graphs == 1
    assert purify_graphs == run("eager")  # the backend adds no recompiles of its own


def test_dynamic_shapes_module_training():
    ref = Stateful()
    model = copy.deepcopy(ref)
    step = torch.compile(model, backend="purify", dynamic=True)
    xs = [torch.randn(n, 6) for n in (2, 3, 5)]
    outs, grads = _train(model, step, xs)
    ref_outs, ref_grads = _train(ref, ref, xs)
    torch.testing.assert_close(outs, ref_outs)
    torch.testing.assert_close(grads, ref_grads)
    assert counters["stats"]["unique_graphs"] == 1


def test_static_shapes_recompile_like_eager_backend():
    counts = {}
    for be in ("purify", "eager"):
        torch._dynamo.reset()
        counters.clear()
        f = torch.compile(sigmoid_mul_, backend=be)
        for n in (3, 3, 4, 5, 4):
            f(torch.randn(n))
        counts[be] = counters["stats"]["unique_graphs"]
    assert counts["purify"] == counts["eager"]


# -------------------------------------------------------------------------------------------
# devices


@CUDA
@pytest.mark.parametrize("inner", INNERS)
def test_cuda_headline(inner):
    x = torch.randn(8, device="cuda", requires_grad=True)
    out = compiled(sigmoid_mul_, inner)(x)
    out.sum().backward()
    xr = x.detach().clone().requires_grad_()
    (xr.sigmoid() * 2).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


@CUDA
@pytest.mark.parametrize("inner", INNERS)
def test_cuda_training_matches_eager(inner):
    assert_same_training(inner, device="cuda")


def test_dropout_training_is_bit_identical_to_eager_under_the_same_seed():
    # inner="eager" runs the pure graph's random ops on ATen kernels in program order, so the
    # RNG is consumed exactly as eager consumes it
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.2, batch_first=True).train()
    model = copy.deepcopy(ref)
    x = torch.randn(2, 5, 16)
    step = compiled(model, options={"strict": True})
    for i in range(2):
        torch.manual_seed(10 + i)
        out = step(x)
        out.sum().backward()
        torch.manual_seed(10 + i)
        out_ref = ref(x)
        out_ref.sum().backward()
        assert torch.equal(out, out_ref)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)


def _square_then_bump(x):
    y = x * x  # autograd saves x ...
    x.add_(1)  # ... which this overwrites: a graph *input* that requires grad
    return y


@pytest.mark.parametrize("inner", INNERS)
def test_autograd_unsafe_mutation_of_an_input(inner):
    # with inner="inductor" this needs the backend to clone the entry value outside the compiled
    # graph (AOTAutograd would otherwise save the input itself, which the write-back changes)
    a = torch.randn(3, requires_grad=True)
    x = a * 1  # non-leaf input that requires grad
    y = compiled(_square_then_bump, inner, options={"strict": True})(x)
    y.sum().backward()
    torch.testing.assert_close(a.grad, 2 * a.detach())  # gradient of the out-of-place program
    torch.testing.assert_close(x.detach(), a.detach() + 1)  # and the caller sees the write


def test_autograd_unsafe_across_a_graph_break_fails_like_eager():
    # Known limit: the tensor autograd saved (sigmoid's output) leaves the first graph and the
    # second graph must write the caller-visible tensor back; no per-graph rewrite can avoid
    # that write, so backward fails exactly as eager's does (rather than computing wrong grads).
    def f(x):
        y = x.sigmoid()
        torch._dynamo.graph_break()
        y.mul_(2)
        return y

    x = torch.randn(3, requires_grad=True)
    out = compiled(f, options={"strict": True})(x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
