"""Capture stage: fxpurify.trace / trace_module, lower_dynamo_graph, ensure_fake_metadata,
is_torch_level_graph. Behaviour is checked against eager execution of the same program."""
import inspect

import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.experimental.proxy_tensor import make_fx
from torch.multiprocessing.reductions import StorageWeakRef

from fxpurify import errors
from fxpurify.capture import (ensure_fake_metadata, is_torch_level_graph, lower_dynamo_graph,
                              needs_fake_metadata, torch_level_nodes, trace, trace_module)

HERE = __file__


def _line_of(fn, text):
    src, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(src) if text in line)


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _tensor_nodes_have_fake_val(gm):
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "call_function", "get_attr") and n.target not in (
                torch._C._set_grad_enabled,):
            val = n.meta.get("val")
            vals = val if isinstance(val, (list, tuple)) else [val]
            if isinstance(n.target, torch._ops.OpOverload) and not n.target._schema.returns:
                continue
            assert val is not None, f"{n.name} has no meta['val']"
            for v in vals:
                if isinstance(v, torch.Tensor):
                    assert isinstance(v, FakeTensor), f"{n.name}: {type(v)}"


def _scale(y):
    y.mul_(2)
    return y


def _prog(x, cache):
    y = x.sin()
    x.add_(1)
    cache[0].copy_(y)
    return _scale(y), cache


# ---------------------------------------------------------------------------------- trace


def test_trace_keeps_mutations_and_matches_eager():
    torch.manual_seed(0)
    x, cache = torch.randn(3), torch.randn(2, 3)
    gm = trace(_prog, x, cache)
    targets = _targets(gm)
    assert torch.ops.aten.add_.Tensor in targets
    assert torch.ops.aten.copy_.default in targets
    assert torch.ops.aten.mul_.Tensor in targets
    _tensor_nodes_have_fake_val(gm)
    ex, ec = x.clone(), cache.clone()
    gx, gc = x.clone(), cache.clone()
    e_out = _prog(ex, ec)
    g_out = gm(gx, gc)
    torch.testing.assert_close(g_out[0], e_out[0])
    torch.testing.assert_close(gx, ex)  # the input mutation happens when the graph runs
    torch.testing.assert_close(gc, ec)


def test_trace_stack_traces_for_code_without_a_file():
    ns = {}
    exec(compile("def g(x):\n    x.mul_(3)\n    return x\n", "<string>", "exec"), ns)
    gm = trace(ns["g"], torch.randn(2))
    node = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.mul_.Tensor)
    assert 'File "<string>", line 2, in g' in node.meta["stack_trace"]


def test_trace_does_not_mutate_caller_inputs_in_real_mode():
    x, cache = torch.zeros(3), torch.zeros(2, 3)
    trace(_prog, x, cache)
    assert torch.equal(x, torch.zeros(3)) and torch.equal(cache, torch.zeros(2, 3))


@pytest.mark.parametrize("options", [{}, {"pre_dispatch": True}, {"tracing_mode": "fake"},
                                     {"tracing_mode": "symbolic"}])
def test_trace_stack_traces_point_at_user_lines_including_helpers(options):
    gm = trace(_prog, torch.randn(3), torch.randn(2, 3), **options)
    by_target = {n.target: n.meta.get("stack_trace", "") for n in gm.graph.nodes}
    add_trace = by_target[torch.ops.aten.add_.Tensor]
    assert f'File "{HERE}", line {_line_of(_prog, "x.add_(1)")}, in _prog' in add_trace
    mul_trace = by_target[torch.ops.aten.mul_.Tensor]
    # caller frame first, innermost (the helper's mul_) last
    assert mul_trace.index("in _prog") < mul_trace.index("in _scale")
    assert mul_trace.rstrip().endswith("y.mul_(2)")
    # no torch or fxpurify machinery frames
    assert "site-packages/torch" not in add_trace and "fxpurify/capture.py" not in add_trace
    assert add_trace.count('File "') == 1
    assert errors.source_line(next(n for n in gm.graph.nodes if n.target is torch.ops.aten.add_.Tensor)) \
        == f"{HERE}:{_line_of(_prog, 'x.add_(1)')} in _prog"


def test_trace_preserves_aliasing_between_inputs():
    base = torch.randn(4, 4)
    a, b = base[0], base[:, 0]  # share storage

    def f(a, b):
        a.add_(1)
        return b * 2

    gm = trace(f, a, b)
    va, vb = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
    assert StorageWeakRef(va.untyped_storage()) == StorageWeakRef(vb.untyped_storage())
    assert vb.stride() == b.stride() and vb.storage_offset() == b.storage_offset()
    assert torch.equal(base[0], a)  # untouched by tracing


@pytest.mark.parametrize("mode", ["real", "fake", "symbolic"])
def test_trace_metadata_shows_aliasing_in_every_mode(mode):
    # make_fx(tracing_mode="real") alone gives every node its own fake mode (no shared storage).
    def f(a):
        v = a.view(-1)
        a.add_(1)
        return v, a.clone()

    gm = trace(f, torch.randn(2, 2), tracing_mode=mode)
    vals = {n.name: n.meta["val"] for n in gm.graph.nodes if n.op != "output"}
    key = lambda name: StorageWeakRef(vals[name].untyped_storage())  # noqa: E731
    assert key("a") == key("add_") == key("view")
    assert key("clone") != key("a")
    assert len({id(v.fake_mode) for v in vals.values()}) == 1


def test_trace_real_mode_data_dependent_shape_keeps_one_fake_mode():
    def f(x):
        y = x[x > 0]  # nonzero: the size depends on the data
        y.mul_(2)
        x.add_(1)
        return y.sum()

    gm = trace(f, torch.randn(5))
    modes = {id(n.meta["val"].fake_mode) for n in gm.graph.nodes
             if isinstance(n.meta.get("val"), torch.Tensor)}
    assert len(modes) == 1
    x = torch.randn(5)
    xe = x.clone()
    torch.testing.assert_close(gm(x), f(xe))
    torch.testing.assert_close(x, xe)


def test_trace_kwargs_and_nested_inputs_and_readable_names():
    def f(x, caches, *, scale):
        caches[1].add_(x)
        return x * scale

    x = torch.randn(3)
    caches = [torch.zeros(3), torch.zeros(3)]
    gm = trace(f, x, caches, scale=torch.tensor(2.0))
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert names == ["x", "caches_0", "caches_1", "scale"]
    c = [torch.zeros(3), torch.zeros(3)]
    out = gm(x, *c, torch.tensor(2.0))
    torch.testing.assert_close(out, x * 2)
    torch.testing.assert_close(c[1], x)


def test_trace_symbolic_mode_gives_symbolic_sizes():
    def f(x):
        x.add_(1)
        return x.view(-1)

    gm = trace(f, torch.randn(3, 4), tracing_mode="symbolic")
    val = next(n for n in gm.graph.nodes if n.op == "placeholder").meta["val"]
    assert isinstance(val.shape[0], torch.SymInt)
    out = gm(torch.zeros(5, 2))  # a different shape runs
    assert out.shape == (10,)


def test_trace_pre_dispatch_records_grad_mode_changes():
    def f(w, g):
        with torch.no_grad():
            w.sub_(g)
        return w * 1

    w = torch.randn(3, requires_grad=True)
    gm = trace(f, w, torch.randn(3), pre_dispatch=True)
    targets = _targets(gm)
    assert targets.count(torch._C._set_grad_enabled) == 2
    assert torch.ops.aten.sub_.Tensor in targets
    assert not trace(f, w, torch.randn(3)).graph.find_nodes(
        op="call_function", target=torch._C._set_grad_enabled)


def test_trace_rejects_unknown_tracing_mode():
    with pytest.raises(ValueError, match="tracing_mode"):
        trace(lambda x: x + 1, torch.randn(2), tracing_mode="bogus")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        y = self.lin(x)
        y.relu_()
        return self.bn(y)


def test_trace_module_binds_get_attr_to_the_models_own_tensors():
    torch.manual_seed(0)
    m = _Net().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(6, 4)
    gm = trace(m, x)
    for k, v in m.state_dict().items():  # tracing ran on clones
        assert torch.equal(v, before[k]), k
    attrs = {n.target: getattr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    own = {id(t) for t in [*m.parameters(), *m.buffers()]}
    assert {id(t) for t in attrs.values()} == own
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    relu = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.relu_.default)
    assert f'line {_line_of(_Net.forward, "y.relu_()")}, in forward' in relu.meta["stack_trace"]
    _tensor_nodes_have_fake_val(gm)
    # Running the mutating graph updates the model's own running stats exactly like eager.
    ref = _Net().train()
    ref.load_state_dict(before)
    torch.testing.assert_close(gm(x), ref(x))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, msg=k)


def test_trace_module_lifts_state_to_placeholders():
    m = _Net().train()
    cap = trace_module(m, torch.randn(6, 4))
    names = [n.name for n in cap.graph_module.graph.nodes if n.op == "placeholder"]
    assert cap.param_names == ["lin.weight", "lin.bias", "bn.weight", "bn.bias"]
    assert cap.buffer_names == ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert names == ["p_lin_weight", "p_lin_bias", "p_bn_weight", "p_bn_bias",
                     "b_bn_running_mean", "b_bn_running_var", "b_bn_num_batches_tracked", "x"]
    assert not any(n.op == "get_attr" for n in cap.graph_module.graph.nodes)


def test_trace_module_fake_mode_on_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids):
            return self.out(self.emb(ids))

    m = Tied()
    cap = trace_module(m, torch.tensor([[1, 2, 3]]), tracing_mode="fake")
    assert cap.param_names == ["emb.weight"]  # tied: one input
    out = cap.graph_module(m.emb.weight, torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(out, m(torch.tensor([[1, 2, 3]])))


# ---------------------------------------------------------------------- ensure_fake_metadata


def _stripped():
    def f(x):
        y = x.clone()
        y.add_(1)
        return y

    gm = make_fx(f)(torch.randn(3))
    for n in gm.graph.nodes:
        n.meta.pop("val", None)
        n.meta.pop("tensor_meta", None)
    return gm


def test_ensure_fake_metadata_returns_a_copy_and_leaves_input_alone():
    gm = _stripped()
    code = gm.code
    out = ensure_fake_metadata(gm, [torch.randn(3)])
    assert out is not gm
    assert needs_fake_metadata(gm) and not needs_fake_metadata(out)
    assert all("val" not in n.meta for n in gm.graph.nodes)
    assert gm.code == code
    _tensor_nodes_have_fake_val(out)
    torch.testing.assert_close(out(torch.ones(3)), torch.full((3,), 2.0))


def test_ensure_fake_metadata_is_identity_when_metadata_present():
    gm = make_fx(lambda x: x.add_(1))(torch.randn(3))
    assert ensure_fake_metadata(gm, None) is gm


def test_ensure_fake_metadata_without_inputs_names_what_is_needed():
    with pytest.raises(errors.MissingMetadataError, match="example_inputs"):
        ensure_fake_metadata(_stripped(), None)


def test_ensure_fake_metadata_shares_module_state():
    m = nn.Linear(3, 3)
    gm = torch.fx.symbolic_trace(m)
    aten = make_fx(lambda x: m(x))(torch.randn(2, 3))
    for n in aten.graph.nodes:
        n.meta.pop("val", None)
    out = ensure_fake_metadata(aten, [torch.randn(2, 3)])
    consts = [n.target for n in out.graph.nodes if n.op == "get_attr"]
    assert consts and all(getattr(out, c) is getattr(aten, c) for c in consts)
    assert gm is not None


# ---------------------------------------------------------------------- lower_dynamo_graph


class _DynNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.lin(x)
        y.add_(1)
        with torch.no_grad():
            z = y * 2
        return self.relu(self.bn(y)) + z


def _compile_and_lower(model, x, dynamic):
    records = []

    def backend(gm, example_inputs):
        records.append((gm, list(example_inputs), lower_dynamo_graph(gm, example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    try:
        torch.compile(model, backend=backend, dynamic=dynamic, fullgraph=True)(x)
    finally:
        torch._dynamo.reset()
    assert len(records) == 1
    return records[0]


@pytest.mark.parametrize("dynamic", [False, True])
def test_lower_dynamo_graph_add_relu_inplace_batchnorm(dynamic):
    torch.manual_seed(0)
    model = _DynNet().train()
    x = torch.randn(3, 4)
    gm, example_inputs, low = _compile_and_lower(model, x, dynamic)
    assert is_torch_level_graph(gm) and not is_torch_level_graph(low)
    targets = _targets(low)
    assert torch.ops.aten.add_.Tensor in targets
    assert torch.ops.aten.relu_.default in targets
    assert any("batch_norm" in str(t) for t in targets)
    assert targets.count(torch._C._set_grad_enabled) == 2  # the no_grad region is recorded
    assert all(isinstance(t, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
               or t is torch._C._set_grad_enabled for t in targets)
    # placeholders keep Dynamo's names and order: same calling convention
    assert ([n.name for n in low.graph.nodes if n.op == "placeholder"]
            == [n.name for n in gm.graph.nodes if n.op == "placeholder"])
    add_ = next(n for n in low.graph.nodes if n.target is torch.ops.aten.add_.Tensor)
    assert f'line {_line_of(_DynNet.forward, "y.add_(1)")}, in forward' in add_.meta["stack_trace"]
    _tensor_nodes_have_fake_val(low)
    if dynamic:
        syms = [n for n in low.graph.nodes if n.op == "placeholder"
                and isinstance(n.meta.get("val"), torch.SymInt)]
        assert syms, "dynamic=True should keep a SymInt placeholder"
        xval = next(n.meta["val"] for n in low.graph.nodes if n.name.startswith("l_x"))
        assert isinstance(xval.shape[0], torch.SymInt)
    # the lowered (still mutating) graph computes what Dynamo's graph computes
    def run(g):
        ins = [e.detach().clone() if isinstance(e, torch.Tensor) else e for e in example_inputs]
        return g(*ins), ins
    (ref,), ref_ins = run(gm)
    (got,), got_ins = run(low)
    torch.testing.assert_close(got, ref)
    for a, b in zip(got_ins, ref_ins):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b)  # running stats / num_batches_tracked


def test_lower_dynamo_graph_outside_a_backend_specialises():
    model = _DynNet().train()
    gm, example_inputs, _ = _compile_and_lower(model, torch.randn(3, 4), True)
    low = lower_dynamo_graph(gm, example_inputs)  # no tracing context now
    assert not is_torch_level_graph(low)
    for n in low.graph.nodes:
        if n.op == "placeholder":
            assert not isinstance(n.meta.get("val"), torch.SymInt)


# ---------------------------------------------------------------------- is_torch_level_graph


def test_is_torch_level_graph():
    class M(nn.Module):
        def forward(self, x):
            x.add_(1)
            return torch.relu(x) + 1

    assert is_torch_level_graph(torch.fx.symbolic_trace(M()))
    names = [n.name for n in torch_level_nodes(torch.fx.symbolic_trace(M()))]
    assert names == ["add_", "relu", "add"]  # call_method, torch.relu, operator.add on a tensor
    assert is_torch_level_graph(torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(inplace=True))))
    assert not is_torch_level_graph(trace(M(), torch.randn(3)))
    assert not is_torch_level_graph(trace(lambda x: x.split(2), torch.randn(4)))  # getitem
    assert not is_torch_level_graph(trace(lambda x: x.view(x.shape[0] // 2, 2), torch.randn(4),
                                          tracing_mode="symbolic"))  # SymInt arithmetic


def test_trace_module_then_purify_updates_the_models_buffers():
    import copy

    import fxpurify

    torch.manual_seed(0)
    m = _Net().train()
    ref = copy.deepcopy(m)
    x = torch.randn(6, 4)
    pure = fxpurify.purify(trace(m, x))  # get_attr form: state is the model's own tensors
    fxpurify.check_pure(pure)
    for _ in range(2):
        with torch.no_grad():
            torch.testing.assert_close(pure(x), ref(x))
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(m.state_dict()[k], v, msg=k)


def test_trace_hf_gpt2_in_fake_mode():
    from fxpurify import models

    if not models.has_transformers():
        pytest.skip("transformers not installed")
    bm = models.build("gpt2")
    model, (ids,) = bm
    gm = trace(model, ids, tracing_mode="fake")
    _tensor_nodes_have_fake_val(gm)
    traces = [n.meta.get("stack_trace", "") for n in gm.graph.nodes if n.op == "call_function"]
    assert any("modeling_gpt2.py" in t for t in traces)
    out = gm(ids)  # flattened ModelOutput: logits first
    with torch.no_grad():
        torch.testing.assert_close(out[0], model(ids).logits)
    assert gm.meta["fxpurify_capture"]["out_spec"] is not None


def test_real_mode_value_read_gets_an_actionable_error():
    def f(x):
        if x.sum() > 0:  # data-dependent branch: needs the value
            x.add_(1)
        return x

    with pytest.raises(errors.UnsupportedError, match="tracing_mode='fake'") as e:
        trace(f, torch.ones(3))
    assert f"{HERE}:{_line_of(f, 'if x.sum() > 0')}" in str(e.value)


def test_lower_dynamo_graph_keeps_autocast_regions():
    def f(x, w):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = x @ w
        y = y.float()
        y.relu_()
        return y

    records = []

    def backend(gm, example_inputs):
        records.append((list(example_inputs), lower_dynamo_graph(gm, example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    try:
        torch.compile(f, backend=backend, fullgraph=True)(torch.randn(4, 4), torch.randn(4, 4))
    finally:
        torch._dynamo.reset()
    (example_inputs, low), = records
    names = [getattr(t, "__name__", "") for t in _targets(low)]
    assert "_enter_autocast" in names and "_exit_autocast" in names
    assert torch.ops.aten.relu_.default in _targets(low)
    assert not is_torch_level_graph(low)
    (got,) = low(*[e.clone() for e in example_inputs])
    torch.testing.assert_close(got, f(*example_inputs))


def test_closed_over_module_state_is_mutated_once_not_twice():
    # Real mode runs the program, so state reached through a closure (not an input) changes
    # exactly as one eager call would change it; re-deriving fake metadata must not add a
    # second update (a fake mode that allows real inputs runs all-real ops for real).
    bn = nn.BatchNorm1d(3).train()
    gm = trace(lambda x: bn(x), torch.randn(4, 3))
    assert int(bn.num_batches_tracked) == 1
    consts = [getattr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"]
    assert any(c is bn.num_batches_tracked for c in consts)  # make_fx keeps the object itself
    before = bn.num_batches_tracked.clone()
    ensure_fake_metadata(_strip_vals(gm), [torch.randn(4, 3)])
    assert torch.equal(bn.num_batches_tracked, before)


def _strip_vals(gm):
    import copy as _copy

    out = torch.fx.GraphModule(gm, _copy.deepcopy(gm.graph))
    for n in out.graph.nodes:
        n.meta.pop("val", None)
    return out
