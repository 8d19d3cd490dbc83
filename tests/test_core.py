"""Differential tests of the core pass against eager, plus structural purity checks."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import fxpurify
from fxpurify.verify import clone_inputs, compare_with_eager

from core_cases import CASES

aten = torch.ops.aten


def trace(fn, inputs, mode="fake"):
    with torch.random.fork_rng():
        return make_fx(fn, tracing_mode=mode)(*clone_inputs(inputs).inputs)


def write_backs(gm):
    return [n for n in gm.graph.nodes if n.target is aten.copy_.default]


def assert_no_dead_nodes(gm):
    from fxpurify.ops import has_side_effect
    dead = [n for n in gm.graph.nodes if not n.users and not has_side_effect(n)]
    assert not dead, f"dead nodes: {dead}"


@pytest.mark.parametrize("mode", ["fake", "real", "symbolic"])
@pytest.mark.parametrize("name,fn,make_inputs", CASES, ids=[c[0] for c in CASES])
def test_matches_eager(name, fn, make_inputs, mode):
    inputs = make_inputs()
    if name == "no_grad_write_to_leaf":
        pytest.skip("needs grad-mode nodes in the graph: covered by test_no_grad_write_to_leaf (pre_dispatch)")
    gm = trace(fn, inputs, mode)
    before = gm.print_readable(print_output=False)
    pure = fxpurify.purify(gm)
    assert gm.print_readable(print_output=False) == before, "purify modified the graph it was given"
    fxpurify.check_pure(pure)
    assert_no_dead_nodes(pure)
    placeholders = [n for n in pure.graph.nodes if n.op == "placeholder"]
    targets = [n.args[0] for n in write_backs(pure)]
    assert len(targets) == len(set(targets)), "more than one write-back into an input"
    assert all(t in placeholders for t in targets)
    if name == "sigmoid_then_mul_inplace":
        # Eager autograd rejects the in-place program; the reference is its out-of-place form.
        compare_with_eager(lambda x: x.sigmoid() * 2, pure, inputs)
    else:
        compare_with_eager(fn, pure, inputs)


def test_copies_only_where_aliasing_demands():
    def f(x, y, z):
        a = x.clone()
        a.add_(1)          # intermediate: no copy
        y.mul_(2)          # input: one copy
        y.add_(1)          # ... still one
        return a + z       # z untouched: no copy
    inputs = [torch.randn(3), torch.randn(3), torch.randn(3)]
    pure = fxpurify.purify(trace(f, inputs))
    (copy_node,) = write_backs(pure)
    assert copy_node.args[0].name == "y_1"
    compare_with_eager(f, pure, inputs)


def test_one_scatter_for_several_writes_to_one_view():
    def f(x):
        a = x.clone()
        v = a[1:3]
        v.add_(1)
        v.mul_(2)
        v.sub_(3)
        return a
    pure = fxpurify.purify(trace(f, [torch.randn(4, 4)]))
    scatters = [n for n in pure.graph.nodes if n.target is aten.slice_scatter.default]
    assert len(scatters) == 1


def test_self_copy_disappears():
    def f(x):
        x[1] += 1
        return x
    pure = fxpurify.purify(trace(f, [torch.randn(3, 2)]))
    assert not [n for n in pure.graph.nodes if n.target in (aten.copy.default,)]
    assert len(write_backs(pure)) == 1
    kinds = fxpurify.report_of(pure).counts()
    assert kinds.get("copy-removed") == 1


def test_output_aliasing_input_stays_alias():
    def f(x):
        x.mul_(2)
        return x[0], x.t()
    x = torch.randn(3, 3)
    pure = fxpurify.purify(trace(f, [x]))
    x2 = x.clone()
    a, b = pure(x2)
    assert a.untyped_storage().data_ptr() == x2.untyped_storage().data_ptr()
    assert b.untyped_storage().data_ptr() == x2.untyped_storage().data_ptr()
    x2.zero_()
    assert a.abs().sum() == 0 and b.abs().sum() == 0


def test_fresh_output_does_not_alias_input():
    def f(x):
        y = torch.empty(3)
        y.copy_(x)          # forwarding src must not make the output alias the input
        return y
    x = torch.randn(3)
    pure = fxpurify.purify(trace(f, [x]))
    out = pure(x)
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


def test_batch_norm_hidden_write_is_explicit():
    bn = torch.nn.BatchNorm1d(4).train()
    params = dict(bn.named_parameters())
    buffers = dict(bn.named_buffers())

    def f(x, weight, bias, running_mean, running_var):
        return torch.ops.aten.native_batch_norm.default(x, weight, bias, running_mean, running_var,
                                                        True, 0.1, 1e-5)[0]
    inputs = [torch.randn(8, 4), params["weight"].detach(), params["bias"].detach(),
              buffers["running_mean"], buffers["running_var"]]
    pure = fxpurify.purify(trace(f, inputs))
    fxpurify.check_pure(pure)
    assert {n.args[0].name for n in write_backs(pure)} == {"running_mean_1", "running_var_1"}
    assert fxpurify.report_of(pure).counts().get("hidden-write") == 1
    compare_with_eager(f, pure, inputs)


def test_batchnorm_cnn_module_training():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)).train()
    x = torch.randn(2, 3, 8, 8)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    names = list(state)

    def f(x, *tensors):
        out = torch.func.functional_call(model, dict(zip(names, tensors)), (x,))
        out += 1
        return out.relu_()

    inputs = [x] + [t.detach().clone().requires_grad_(t.requires_grad) for t in state.values()]
    pure = fxpurify.purify(trace(f, inputs))
    fxpurify.check_pure(pure)
    written = {n.args[0].name for n in write_backs(pure)}
    # per BatchNorm: running_mean, running_var (hidden writes) and num_batches_tracked (add_)
    assert len(written) == 6
    compare_with_eager(f, pure, inputs)


def test_custom_op_with_mutates_args():
    @torch.library.custom_op("fxpurify_test::scale_", mutates_args={"x"})
    def scale_(x: torch.Tensor, s: float) -> None:
        x.mul_(s)

    @scale_.register_fake
    def _(x, s):
        return None

    def f(x):
        a = x.clone()
        torch.ops.fxpurify_test.scale_(a, 3.0)
        torch.ops.fxpurify_test.scale_(x, 2.0)
        return a
    inputs = [torch.randn(4)]
    pure = fxpurify.purify(trace(f, inputs))
    fxpurify.check_pure(pure)
    compare_with_eager(f, pure, inputs)


def test_symbolic_shapes_keep_sym_nodes():
    def f(x):
        x.view(-1).add_(1)
        return x.sum(0)
    gm = trace(f, [torch.randn(5, 3)], mode="symbolic")
    pure = fxpurify.purify(gm)
    for n in pure.graph.nodes:   # no SymInt objects baked into arguments
        for a in torch.fx.node.map_aggregate((n.args, n.kwargs), lambda a: a):
            assert not isinstance(a, torch.SymInt)
    for shape in [(5, 3), (7, 2)]:
        compare_with_eager(f, pure, [torch.randn(*shape)])


def test_aot_graph_without_functionalization():
    from functorch.compile import aot_function, make_boxed_func
    graphs = []

    def grab(gm, _):
        graphs.append(gm)
        return make_boxed_func(gm)

    def f(x, y):
        x.mul_(2)
        return x + y
    x, y = torch.randn(3), torch.randn(3)
    aot_function(f, fw_compiler=grab, disable_functionalization=True)(x.clone(), y)
    pure = fxpurify.purify(graphs[0])
    fxpurify.check_pure(pure)
    assert len(write_backs(pure)) == 1
    a, b = x.clone(), x.clone()
    mutated_x, out_pure = pure(a, y)      # AOT graphs return mutated inputs first
    torch.testing.assert_close(out_pure, f(b, y))
    assert mutated_x is a
    torch.testing.assert_close(a, b)


def test_export_graph_with_buffer_mutation():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros(3))

        def forward(self, x):
            self.count.add_(1)
            x = x.clone()
            x[0].mul_(2)
            return x + self.count

    m = M()
    ep = torch.export.export(M(), (torch.randn(3, 3),))
    gm = ep.graph_module
    pure = fxpurify.purify(gm)
    fxpurify.check_pure(pure)
    x = torch.randn(3, 3)
    count = torch.zeros(3)
    out = pure(count, x)
    ref = m(x)
    torch.testing.assert_close(out[0] if isinstance(out, (tuple, list)) else out, ref)
    torch.testing.assert_close(count, m.count)


def test_given_graph_is_never_modified_deep():
    def f(x):
        a = x.clone()
        a.t_()
        a[0].add_(1)
        x.mul_(2)
        return a
    gm = trace(f, [torch.randn(3, 3)])
    snapshot = [(n.name, n.op, n.target, copy.copy(n.args), dict(n.meta)) for n in gm.graph.nodes]
    vals = [tuple(n.meta["val"].shape) for n in gm.graph.nodes if "val" in n.meta and isinstance(n.meta["val"], torch.Tensor)]
    fxpurify.purify(gm)
    assert snapshot == [(n.name, n.op, n.target, copy.copy(n.args), dict(n.meta)) for n in gm.graph.nodes]
    assert vals == [tuple(n.meta["val"].shape) for n in gm.graph.nodes if "val" in n.meta and isinstance(n.meta["val"], torch.Tensor)]


def test_report_and_annotations():
    def f(x):
        y = x.clone()
        y.add_(1)
        x.mul_(2)
        return y
    pure = fxpurify.purify(trace(f, [torch.randn(3)]))
    report = fxpurify.report_of(pure)
    assert report.counts()["functionalized"] == 2
    assert report.counts()["write-back"] == 1
    assert report.bytes_copied == 3 * 4
    assert "aten.add.Tensor" in report.table()
    data = report.to_dict()
    assert data["nodes_out"] == len(pure.graph.nodes)
    text = pure.print_readable(print_output=False, additional_meta=["fxpurify"])
    assert "was aten.add_.Tensor" in text


def test_check_pure_lists_impure_nodes():
    def f(x):
        y = x.clone()
        y.add_(1)
        return y
    gm = trace(f, [torch.randn(3)])
    with pytest.raises(fxpurify.ImpureGraphError, match="add_"):
        fxpurify.check_pure(gm)
    assert [n.name for n in fxpurify.impure_nodes(gm)] == ["add_"]


def test_no_grad_write_to_leaf_then_read():
    """An optimizer-style update under no_grad, then a read with grad on: gradients must reach
    the leaf itself, as in eager (needs the grad-mode nodes of a pre_dispatch trace)."""
    def f(w, g):
        with torch.no_grad():
            w.mul_(0.9).add_(g)
        return w * 2
    inputs = [torch.randn(3, 3, requires_grad=True), torch.randn(3)]
    with torch.random.fork_rng():
        gm = make_fx(f, pre_dispatch=True)(*clone_inputs(inputs).inputs)
    pure = fxpurify.purify(gm)
    fxpurify.check_pure(pure)
    compare_with_eager(f, pure, inputs)


def test_optimizer_step_on_leaves():
    """A plain SGD-with-momentum step: parameters (leaves requiring grad) written under no_grad."""
    def step(p, grad, buf):
        with torch.no_grad():
            buf.mul_(0.9).add_(grad)
            p.add_(buf, alpha=-0.1)
    inputs = [torch.randn(4, requires_grad=True), torch.randn(4), torch.randn(4)]
    for pre_dispatch in (False, True):
        with torch.random.fork_rng():
            gm = make_fx(step, pre_dispatch=pre_dispatch)(*clone_inputs(inputs).inputs)
        pure = fxpurify.purify(gm)
        assert len(write_backs(pure)) == 2
        compare_with_eager(step, pure, inputs, grads=False)
