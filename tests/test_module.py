"""purify_module / purify_function: state sharing, buffer updates, gradients, call checks.

The oracle is eager execution of an identical copy of the model (``copy.deepcopy`` before any
call), compared after each call on outputs, every parameter and buffer, and gradients.
"""
import copy

import pytest
import torch
import torch.nn as nn

from fxpurify import check_pure, errors, models
from fxpurify.module import PurifiedModule, purify_function, purify_module


def _assert_state_equal(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


class _Res(nn.Module):
    """Linear + relu_ + residual ``+=``: in-place ops on activations, grads to every param."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        h = self.a(x)
        h.relu_()
        out = self.b(h)
        out += x
        return out


class _BN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        return self.bn(self.lin(x)).relu_()


def test_purify_module_shares_parameters_and_buffers():
    torch.manual_seed(0)
    m = _BN().train()
    pm = purify_module(m, torch.randn(5, 4))
    assert isinstance(pm, PurifiedModule) and pm.model is m
    own = {id(t) for t in [*m.parameters(), *m.buffers()]}
    assert {id(t) for t in pm.parameters()} <= own
    assert {id(t) for t in pm.buffers()} >= {id(b) for b in m.buffers()}
    # the graph takes state as inputs; nothing tensor-valued is stored on it that shadows state
    assert not any(t.data_ptr() in {o.data_ptr() for o in [*m.parameters(), *m.buffers()]}
                   for t in pm.graph_module.buffers())


def test_purify_module_construction_changes_no_state():
    torch.manual_seed(0)
    m = _BN().train()
    before = copy.deepcopy(m)
    purify_module(m, torch.randn(5, 4))
    _assert_state_equal(m, before)


def test_batchnorm_running_stats_update_like_eager():
    torch.manual_seed(0)
    m = _BN().train()
    ref = copy.deepcopy(m)
    xs = [torch.randn(5, 4) for _ in range(3)]
    pm = purify_module(m, xs[0])
    check_pure(pm.graph_module)
    rm = m.bn.running_mean
    for x in xs:
        with torch.no_grad():
            torch.testing.assert_close(pm(x), ref(x))
        _assert_state_equal(m, ref)
    assert m.bn.running_mean is rm  # updated in place, not rebound
    assert int(m.bn.num_batches_tracked) == 3


def test_gradients_reach_the_models_own_parameters():
    torch.manual_seed(0)
    m = _Res()
    ref = copy.deepcopy(m)
    x = torch.randn(3, 6, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    pm = purify_module(m, x)
    check_pure(pm.graph_module)
    out, eout = pm(x), ref(xr)
    torch.testing.assert_close(out, eout)
    (out * torch.arange(6.0)).sum().backward()
    (eout * torch.arange(6.0)).sum().backward()
    for (name, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    torch.testing.assert_close(x.grad, xr.grad)
    # an optimizer over the original model's parameters sees these grads
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    _assert_state_equal(m, ref)


def test_batchnorm_train_mode_gradients_like_eager():
    torch.manual_seed(0)
    m = _BN().train()
    ref = copy.deepcopy(m)
    x = torch.randn(5, 4)
    pm = purify_module(m, x)
    pm(x).pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    _assert_state_equal(m, ref)
    for (name, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_kv_cache_writes_land_in_the_models_buffers():
    bm = models.build("kv_block")
    m, (x, pos) = bm
    ref = copy.deepcopy(m)
    k_cache = m.k_cache
    pm = purify_module(m, x, pos)
    check_pure(pm.graph_module)
    torch.testing.assert_close(pm(x, pos), ref(x, pos))
    _assert_state_equal(m, ref)
    assert m.k_cache is k_cache
    # the next decode position, same graph (positions are tensors, not constants)
    x2, pos2 = torch.randn(1, 2, 32), torch.tensor([5, 6])
    torch.testing.assert_close(pm(x2, pos2), ref(x2, pos2))
    _assert_state_equal(m, ref)
    assert int(m.n_tokens) == 3 + 2 + 2


def test_train_eval_switch_traces_a_graph_per_mode():
    torch.manual_seed(0)
    m = _BN().train()
    ref = copy.deepcopy(m)
    x = torch.randn(5, 4)
    pm = purify_module(m, x)
    train_graph = pm.graph_module
    with torch.no_grad():
        pm(x), ref(x)
    pm.eval(), ref.eval()
    assert not m.training
    with torch.no_grad():
        torch.testing.assert_close(pm(x), ref(x))
    assert pm.graph_module is not train_graph
    _assert_state_equal(m, ref)  # eval: running stats untouched by both


def test_attributes_graph_original_report():
    m = _Res()
    pm = purify_module(m, torch.randn(2, 6))
    targets = [n.target for n in pm.original_graph.graph.nodes]
    assert torch.ops.aten.relu_.default in targets
    assert torch.ops.aten.relu_.default not in [n.target for n in pm.graph_module.graph.nodes]
    rep = pm.report
    assert rep.nodes_in == len(pm.original_graph.graph.nodes)
    assert "relu_" in rep.table()


def test_call_with_a_different_structure_is_refused():
    pm = purify_module(_Res(), torch.randn(2, 6))
    with pytest.raises(errors.FxPurifyError, match="structure|keyword"):
        pm(torch.randn(2, 6), extra=torch.randn(1))
    with pytest.raises(errors.FxPurifyError, match="structure"):
        pm((torch.randn(2, 6),))


def test_baked_in_constants_are_checked():
    class Scale(nn.Module):
        def forward(self, x, k):
            return x * k

    pm = purify_module(Scale(), torch.ones(2), 3)
    torch.testing.assert_close(pm(torch.ones(2), 3), torch.full((2,), 3.0))
    with pytest.raises(errors.FxPurifyError, match="baked in"):
        pm(torch.ones(2), 4)


def test_purify_module_rejects_functions():
    with pytest.raises(TypeError, match="purify_function|fxpurify.purify"):
        purify_module(lambda x: x, torch.ones(1))


@pytest.mark.parametrize("name", ["adam", "adamw_foreach"])
def test_purify_function_optimizer_step_like_eager(name):
    bm = models.build(name)
    step, _ = bm
    pure = purify_function(step, *bm.fresh_inputs(), **bm.trace_kwargs)
    check_pure(pure.graph_module)
    ref_in, got_in = bm.fresh_inputs(), bm.fresh_inputs()
    assert step(*ref_in) is None and pure(*got_in) is None
    for r, g in zip(ref_in, got_in):
        for a, b in zip(r, g):
            torch.testing.assert_close(b, a)
    params = got_in[0]
    assert all(p.is_leaf and p.requires_grad for p in params)


@pytest.mark.skipif(not models.has_transformers(), reason="transformers not installed")
def test_purify_module_hf_llama_static_cache_fake_mode():
    bm = models.build("llama_decode")
    m, (ids, pos) = bm
    ref = copy.deepcopy(m)
    pm = purify_module(m, ids, pos, **bm.trace_kwargs)
    check_pure(pm.graph_module)
    with torch.no_grad():
        torch.testing.assert_close(pm(ids, pos), ref(ids, pos))
        _assert_state_equal(m, ref)
        nxt, pos2 = torch.tensor([[7]]), torch.tensor([[5]])
        torch.testing.assert_close(pm(nxt, pos2), ref(nxt, pos2))
    _assert_state_equal(m, ref)
    assert int(m.len0) == 6  # prefill 4 + two decode steps, written into the model's buffer


def test_offline_module_example_runs(capsys):
    import os
    import runpy

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "offline_module.py")
    runpy.run_path(path, run_name="__main__")
    out = capsys.readouterr().out
    assert "class TinyCNN" in out and "was aten.relu_.default" in out
    assert "hidden-write" in out and "matches eager" in out


@pytest.mark.parametrize("options", [{"pre_dispatch": True}, {"tracing_mode": "symbolic"},
                                     {"tracing_mode": "fake"}])
def test_purify_module_tracing_options_like_eager(options):
    bm = models.build("cnn")
    m, (x,) = bm
    ref = copy.deepcopy(m)
    pm = purify_module(m, x, **options)
    check_pure(pm.graph_module)
    torch.testing.assert_close(pm(x), ref(x))
    _assert_state_equal(m, ref)
    if options.get("tracing_mode") == "symbolic":  # another batch size, same graph
        graph = pm.graph_module
        x2 = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(pm(x2), ref(x2))
        _assert_state_equal(m, ref)
        assert pm.graph_module is graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["cnn", "kv_block"])
def test_purify_module_on_cuda_like_eager(name):
    bm = models.build(name)
    m, ex = bm
    m = m.cuda()
    ex = tuple(x.cuda() for x in ex)
    ref = copy.deepcopy(m)
    pm = purify_module(m, *ex)
    check_pure(pm.graph_module)
    for _ in range(2):
        torch.testing.assert_close(pm(*ex), ref(*ex))
        _assert_state_equal(m, ref)
    assert all(t.is_cuda for t in m.buffers())


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_builtin_models_are_deterministic(name):
    a, b = models.build(name, seed=1), models.build(name, seed=1)
    if isinstance(a.fn, nn.Module):
        _assert_state_equal(a.fn, b.fn)
    for x, y in zip(torch.utils._pytree.tree_leaves(a.example_inputs),
                    torch.utils._pytree.tree_leaves(b.example_inputs)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_builtin_model_purifies_and_verifies(name):
    from fxpurify.cli import Target, _verify

    bm = models.build(name)
    purified, cmp = _verify(Target(name, bm.fn, bm.example_inputs, bm.trace_kwargs))
    check_pure(purified.graph_module)
    assert cmp.outputs >= 1 and cmp.inputs_state >= 1


def test_build_unknown_model_names_the_available_ones():
    with pytest.raises(KeyError, match="available: .*cnn"):
        models.build("nope")
    assert len(models.build("adam", n_params=6).example_inputs[0]) == 6


def test_module_that_mutates_its_inputs_and_takes_kwargs():
    class Acc(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, caches, *, scale):
            caches[0].add_(self.lin(x).detach())
            x.mul_(scale)
            return {"y": x.sum(-1), "c": caches[1]}

    torch.manual_seed(0)
    m = Acc()
    x, caches, scale = torch.randn(2, 3), [torch.zeros(2, 3), torch.ones(2)], torch.tensor(2.0)
    pm = purify_module(m, x, caches, scale=scale)
    check_pure(pm.graph_module)
    xe, ce = x.clone(), [c.clone() for c in caches]
    out, ref = pm(x, caches, scale=scale), m(xe, ce, scale=scale)
    assert set(out) == {"y", "c"}
    torch.testing.assert_close(out["y"], ref["y"])
    torch.testing.assert_close(x, xe)
    torch.testing.assert_close(caches[0], ce[0])
    assert out["c"] is caches[1]  # an output that was an input is that input


def test_dtype_change_of_the_model_retraces():
    torch.manual_seed(0)
    m = _BN().train()
    ref = copy.deepcopy(m)
    x = torch.randn(5, 4)
    pm = purify_module(m, x)
    first = pm.graph_module
    m.double(), ref.double()
    xd = x.double()
    with torch.no_grad():
        out = pm(xd)
        torch.testing.assert_close(out, ref(xd))
    assert out.dtype == torch.float64 and pm.graph_module is not first
    _assert_state_equal(m, ref)
