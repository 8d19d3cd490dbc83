"""fxpurify.recover: each memory-recovery transform is exactly equivalent to eager (outputs, final
input state, grads) and refuses the patterns where running in place would be wrong."""
import operator

import pytest
import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

from fxpurify.memory import measure_peak
from fxpurify.recover import allocated_bytes, extra_bytes, records_of, recover_memory

aten = torch.ops.aten
MiB = 1 << 20


def _functionalize(fn, *args):
    return make_fx(torch.func.functionalize(fn, remove="mutations_and_views"))(*args)


def _fxpurify(fn, *args):
    import fxpurify

    return fxpurify.purify(make_fx(fn)(*args))


def _have_core():
    try:
        import fxpurify

        return callable(getattr(fxpurify, "purify", None))
    except Exception:
        return False


PURIFIERS = [
    pytest.param(_functionalize, id="functionalize"),
    pytest.param(_fxpurify, id="fxpurify",
                 marks=pytest.mark.skipif(not _have_core(), reason="fxpurify.purify not landed")),
]


def _clone(args):
    return [a.clone() if isinstance(a, torch.Tensor) else [t.clone() for t in a] for a in args]


def _check_equiv(fn, gm, args, *, grad_idx=()):
    """Run eager fn and gm on fresh copies; compare outputs, final inputs, grads."""
    ea, ga = _clone(args), _clone(args)
    for i in grad_idx:
        ea[i].requires_grad_(True)
        ga[i].requires_grad_(True)
    eo, go = fn(*ea), gm(*ga)
    torch.testing.assert_close(go, eo)
    for a, b in zip(ga, ea):
        torch.testing.assert_close(a.detach() if isinstance(a, torch.Tensor) else a,
                                   b.detach() if isinstance(b, torch.Tensor) else b)
    if grad_idx:
        (sum(o.sum() for o in eo) if isinstance(eo, (tuple, list)) else eo.sum()).backward()
        (sum(o.sum() for o in go) if isinstance(go, (tuple, list)) else go.sum()).backward()
        for i in grad_idx:
            torch.testing.assert_close(ga[i].grad, ea[i].grad)


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _kv_args():
    torch.manual_seed(0)
    return [torch.randn(2, 4, 16, 8), torch.randn(2, 4, 1, 8), torch.tensor([5])]


def kv_index_copy(cache, k, pos):
    cache.index_copy_(2, pos, k)
    return (cache * 2).sum(-1)


def kv_slice_assign(cache, k, pos):
    cache[:, :, 3:4] = k
    return cache.sum(-1)


def kv_select_assign(cache, k, pos):
    cache[:, :, 7] = k[:, :, 0] * 3
    return cache.mean(-1)


def kv_index_put(cache, k, pos):
    cache[:, :, pos] = k
    return cache.amax(-1)


# ----------------------------------------------------------------------------- in-place scatter

@pytest.mark.parametrize("purifier", PURIFIERS)
@pytest.mark.parametrize("fn", [kv_index_copy, kv_slice_assign, kv_select_assign, kv_index_put])
def test_inplace_scatter_kv_cache(purifier, fn):
    args = _kv_args()
    pure = purifier(fn, *_clone(args))
    before = pure.code
    rec = recover_memory(pure, early_writeback=False)
    assert pure.code == before, "recover_memory must not modify its input"
    kinds = [r.kind for r in records_of(rec)]
    assert kinds == ["inplace_scatter"], rec.code
    # the whole-cache copy back is gone
    cache_ph = next(iter(n for n in rec.graph.nodes if n.op == "placeholder"))
    assert not any(n.target is aten.copy_.default and n.args[0] is cache_ph
                   for n in rec.graph.nodes)
    _check_equiv(fn, rec, args)


def test_inplace_scatter_saves_memory_and_time_shape():
    """KV-cache case by hand: the recovered program allocates no cache-sized buffer."""
    cache = torch.zeros(4, 8, 256, 64)  # 2 MiB
    k, pos = torch.randn(4, 8, 1, 64), torch.tensor([3])

    def step(cache, k, pos):
        cache.index_copy_(2, pos, k)
        return cache[:, :, :4].sum()

    pure = _functionalize(step, cache.clone(), k, pos)
    rec = recover_memory(pure)
    _, st_pure = measure_peak(pure, cache.clone(), k, pos)
    _, st_rec = measure_peak(rec, cache.clone(), k, pos)
    _, st_eager = measure_peak(step, cache.clone(), k, pos)
    assert st_pure.peak >= 2 * MiB
    # eager reads a view (4 bytes: the sum); the stand-in graph materialises slice_copy (32 KiB)
    assert st_eager.peak <= st_rec.peak < 64 * 1024
    assert extra_bytes(pure) >= 2 * MiB
    assert extra_bytes(rec) == 0
    orig = make_fx(step)(cache.clone(), k, pos)
    assert extra_bytes(pure, orig) >= 2 * MiB
    assert allocated_bytes(rec) <= allocated_bytes(orig) + 64 * 1024  # dead slice_copy aside


def test_inplace_scatter_with_grads():
    def f(cache, k, pos, w):
        cache.index_copy_(2, pos, k * 2)
        return (cache * w).sum(-1)

    args = _kv_args() + [torch.randn(8)]
    pure = _functionalize(f, *_clone(args))
    rec = recover_memory(pure)
    assert [r.kind for r in records_of(rec)] == ["inplace_scatter"]
    _check_equiv(f, rec, args, grad_idx=(1, 3))


def _graph(build):
    """Hand-built pure graphs: shapes the stand-in purifier never emits (real views)."""
    g = fx.Graph()
    out = build(g)
    g.output(out)
    return fx.GraphModule(torch.nn.Module(), g)


def test_inplace_scatter_refuses_overlapping_operand():
    # s = index_copy(p, 0, idx, p[0:2]) ; copy_(p, s): the source is a view of p, so running
    # index_copy_ in place would read what it writes (DESIGN pitfall 13).
    def build(g):
        p, idx = g.placeholder("p"), g.placeholder("idx")
        v = g.call_function(aten.slice.Tensor, (p, 0, 0, 2))
        s = g.call_function(aten.index_copy.default, (p, 0, idx, v))
        r = g.call_function(aten.sum.default, (s,))
        g.call_function(aten.copy_.default, (p, s))
        return r

    gm = _graph(build)
    p, idx = torch.randn(6, 3), torch.tensor([1, 2])
    _prop(gm, p, idx)
    rec = recover_memory(gm, early_writeback=False)
    assert records_of(rec) == []
    assert aten.index_copy.default in _targets(rec)
    a, b = p.clone(), p.clone()
    torch.testing.assert_close(rec(a, idx), gm(b, idx))
    expected = p.clone()
    expected.index_copy_(0, idx, p[0:2].clone())
    torch.testing.assert_close(a, expected)


def _prop(gm, *args):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    FakeTensorProp(gm, mode).propagate(*[a.clone() for a in args])


def test_inplace_scatter_placed_after_late_old_read():
    # s = index_fill(p), then r = p * 2 reads the OLD p, then u = s + 1 reads the new value.
    def build(g):
        p, idx = g.placeholder("p"), g.placeholder("idx")
        s = g.call_function(aten.index_fill.int_Scalar, (p, 0, idx, 7.0))
        r = g.call_function(aten.mul.Tensor, (p, 2))
        u = g.call_function(aten.add.Tensor, (s, 1))
        g.call_function(aten.copy_.default, (p, s))
        return (r, u)

    gm = _graph(build)
    p, idx = torch.randn(5, 2), torch.tensor([0, 3])
    _prop(gm, p, idx)
    rec = recover_memory(gm)
    assert [r.kind for r in records_of(rec)] == ["inplace_scatter"]
    names = [n.target for n in rec.graph.nodes]
    assert names.index(aten.index_fill_.int_Scalar) > names.index(aten.mul.Tensor)
    a, b = p.clone(), p.clone()
    torch.testing.assert_close(rec(a, idx), gm(b, idx))
    torch.testing.assert_close(a, b)


def test_inplace_scatter_refuses_new_value_read_before_old():
    # u reads the new value before r reads the old one: no single point works.
    def build(g):
        p, idx = g.placeholder("p"), g.placeholder("idx")
        s = g.call_function(aten.index_fill.int_Scalar, (p, 0, idx, 7.0))
        u = g.call_function(aten.add.Tensor, (s, 1))
        r = g.call_function(aten.mul.Tensor, (p, 2))
        g.call_function(aten.copy_.default, (p, s))
        return (r, u)

    gm = _graph(build)
    p, idx = torch.randn(5, 2), torch.tensor([0, 3])
    _prop(gm, p, idx)
    rec = recover_memory(gm, early_writeback=False)
    assert records_of(rec) == []
    a, b = p.clone(), p.clone()
    torch.testing.assert_close(rec(a, idx), gm(b, idx))
    torch.testing.assert_close(a, b)


def test_inplace_scatter_refuses_returned_value():
    def f(cache, k, pos):
        cache.index_copy_(2, pos, k)
        return cache * 1, cache.sum()

    def g(cache, k, pos):  # the pure graph returns the scatter result itself
        cache.index_copy_(2, pos, k)
        return cache

    for fn in (f, g):
        args = _kv_args()
        pure = _functionalize(fn, *_clone(args))
        rec = recover_memory(pure)
        out_node = next(n for n in rec.graph.nodes if n.op == "output")
        placeholders = {n for n in rec.graph.nodes if n.op == "placeholder"}
        outs = torch.utils._pytree.tree_leaves(out_node.args[0])
        assert not any(a in placeholders for a in outs if isinstance(a, fx.Node))
        _check_equiv(fn, rec, args)
        out = rec(*_clone(args))
        assert all(o.untyped_storage().data_ptr() != args[0].untyped_storage().data_ptr()
                   for o in (out if isinstance(out, tuple) else (out,)))


def test_inplace_scatter_refuses_layout_change():
    # p is a transposed (non-contiguous) input; the functional scatter result is contiguous,
    # so readers of it would see other strides if it became p.
    def build(g):
        p, idx, v = g.placeholder("p"), g.placeholder("idx"), g.placeholder("v")
        s = g.call_function(aten.index_copy.default, (p, 0, idx, v))
        r = g.call_function(aten.view.default, (s, [-1]))
        g.call_function(aten.copy_.default, (p, s))
        return r

    gm = _graph(build)
    base = torch.randn(3, 4)
    p, idx, v = base.t(), torch.tensor([1]), torch.randn(1, 3)
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(p, idx, v)
    rec = recover_memory(gm, early_writeback=False)
    assert records_of(rec) == []
    a = torch.randn(3, 4).t()
    a.copy_(p)
    rec(a, idx, v)  # a plain view on the in-place result would have raised here
    torch.testing.assert_close(a, p.clone().index_copy_(0, idx, v))


# ----------------------------------------------------------------------------- early write-back

def adam_like(params, grads, ms, vs):
    for p, g, m, v in zip(params, grads, ms, vs):
        m.mul_(0.9).add_(g, alpha=0.1)
        v.mul_(0.99).addcmul_(g, g, value=0.01)
        p.addcdiv_(m, v.sqrt().add_(1e-8), value=-1e-3)
    return ()


def _adam_args(n=8, numel=N_ADAM if (N_ADAM := 1 << 16) else 0):
    torch.manual_seed(0)
    mk = lambda: [torch.randn(numel) for _ in range(n)]  # noqa: E731
    return [mk(), mk(), mk(), [t.abs() for t in mk()]]


@pytest.mark.parametrize("purifier", PURIFIERS)
def test_early_writeback_adam_peak_drops(purifier):
    args = _adam_args()
    pure = purifier(adam_like, *_clone(args))
    rec = recover_memory(pure)
    recs = records_of(rec)
    assert recs and {r.kind for r in recs} <= {"early_writeback", "inplace_write"}
    assert len(recs) >= 2 * 8  # every m and v written early (or in place), and p
    _check_equiv(adam_like, rec, args)
    _, st_pure = measure_peak(pure, *_clone(args))
    _, st_rec = measure_peak(rec, *_clone(args))
    _, st_eager = measure_peak(adam_like, *_clone(args))
    one = (1 << 16) * 4
    assert st_pure.peak >= 8 * 3 * one  # every new p, m, v alive until the epilogue
    assert st_rec.peak <= 4 * one       # a handful of buffers at a time
    assert st_rec.peak <= st_eager.peak + 2 * one


def test_early_writeback_respects_late_old_read():
    # v = p + 1 ; r = p * 2 (old value, after v) ; copy_(p, v) must land after r.
    def build(g):
        p = g.placeholder("p")
        v = g.call_function(aten.add.Tensor, (p, 1))
        r = g.call_function(aten.mul.Tensor, (p, 2))
        w = g.call_function(aten.sin.default, (r,))
        g.call_function(aten.copy_.default, (p, v))
        return w

    gm = _graph(build)
    p = torch.randn(4)
    rec = recover_memory(gm)
    order = [n.target for n in rec.graph.nodes]
    assert order.index(aten.copy_.default) == order.index(aten.mul.Tensor) + 1
    a, b = p.clone(), p.clone()
    torch.testing.assert_close(rec(a), gm(b))
    torch.testing.assert_close(a, b)


def test_early_writeback_sees_reads_through_views():
    # r reads p through a view created early; the copy must wait for r.
    def build(g):
        p = g.placeholder("p")
        t = g.call_function(aten.t.default, (p,))
        v = g.call_function(aten.add.Tensor, (p, 1))
        x = g.call_function(aten.cos.default, (v,))
        r = g.call_function(aten.mul.Tensor, (t, 2))
        g.call_function(aten.copy_.default, (p, v))
        return (x, r)

    gm = _graph(build)
    p = torch.randn(3, 3)
    rec = recover_memory(gm)
    order = [n.target for n in rec.graph.nodes]
    assert order.index(aten.copy_.default) > order.index(aten.mul.Tensor)
    a, b = p.clone(), p.clone()
    torch.testing.assert_close(rec(a), gm(b))
    torch.testing.assert_close(a, b)


def test_early_writeback_keeps_value_that_aliases_written_input():
    # copy_(p, view(q)) then copy_(q, ...): moving p's copy would read q at another time.
    def build(g):
        p, q = g.placeholder("p"), g.placeholder("q")
        qn = g.call_function(aten.add.Tensor, (q, 1))
        filler = g.call_function(aten.sin.default, (qn,))
        vq = g.call_function(aten.view.default, (q, [-1]))
        g.call_function(aten.copy_.default, (q, qn))
        g.call_function(aten.copy_.default, (p, vq))
        return filler

    gm = _graph(build)
    p, q = torch.randn(4), torch.randn(4)
    rec = recover_memory(gm)
    assert not any(r.input == "p" for r in records_of(rec))
    a, b = [p.clone(), q.clone()], [p.clone(), q.clone()]
    torch.testing.assert_close(rec(*a), gm(*b))
    torch.testing.assert_close(a, b)


def test_early_writeback_keeps_metadata_epilogue_order():
    def build(g):
        p = g.placeholder("p")
        v = g.call_function(aten.add.Tensor, (p, 1))
        f = g.call_function(aten.sin.default, (v,))
        g.call_function(aten.copy_.default, (p, v))
        g.call_function(aten.as_strided_.default, (p, [2, 2], [1, 2]))
        return f

    gm = _graph(build)
    rec = recover_memory(gm)
    assert records_of(rec) == []
    assert rec.code == gm.code


def test_training_buffer_update_with_grads():
    """A running-stat style buffer update next to a differentiable forward."""

    def f(x, w, buf):
        y = x @ w
        buf.mul_(0.9).add_(y.detach().mean(0), alpha=0.1)
        return torch.relu(y).sum(0)

    torch.manual_seed(0)
    args = [torch.randn(16, 8), torch.randn(8, 8), torch.zeros(8)]
    pure = _functionalize(f, *_clone(args))
    rec = recover_memory(pure)
    # buf's new value is mul -> add of its old value, read only by the copy: runs in place
    assert [r.kind for r in records_of(rec)] == ["inplace_write"]
    targets = _targets(rec)
    assert aten.mul_.Tensor in targets and aten.add_.Tensor in targets
    _check_equiv(f, rec, args, grad_idx=(0, 1))
    ewb = recover_memory(pure, inplace_scatter=False)
    assert [r.kind for r in records_of(ewb)] == ["early_writeback"]
    _check_equiv(f, ewb, args, grad_idx=(0, 1))


def test_options_off_is_identity_and_input_untouched():
    args = _adam_args(n=2, numel=8)
    pure = _functionalize(adam_like, *_clone(args))
    code = pure.code
    same = recover_memory(pure, early_writeback=False, inplace_scatter=False)
    assert same.code == code and records_of(same) == []
    rec = recover_memory(pure)
    assert pure.code == code
    assert rec is not pure and rec.graph is not pure.graph
    assert rec.code != code


def test_no_dead_nodes_introduced():
    args = _kv_args()
    pure = _functionalize(kv_slice_assign, *_clone(args))
    rec = recover_memory(pure)
    dead_before = {n.name for n in pure.graph.nodes if n.op == "call_function" and not n.users
                   and not n.target._schema.is_mutable}
    dead_after = {n.name for n in rec.graph.nodes if n.op == "call_function" and not n.users
                  and isinstance(n.target, torch._ops.OpOverload)
                  and not n.target._schema.is_mutable}
    assert dead_after <= dead_before
    assert not any(n.target is operator.getitem and not n.users for n in rec.graph.nodes)


@pytest.mark.skipif(not _have_core(), reason="fxpurify.purify not landed")
def test_moved_writes_keep_the_epilogue_grad_mode():
    """Leaf parameters that require grad, updated under no_grad (an optimizer step), with the
    step called in grad mode: each moved write must still run under no_grad (its own copy of the
    epilogue's begin_write_back bracket), or copy_ into the leaf would raise."""
    import fxpurify

    def sgd(params, grads, bufs):
        with torch.no_grad():
            for p, g, b in zip(params, grads, bufs):
                b.mul_(0.9).add_(g)
                p.add_(b, alpha=-0.1)
        return ()

    torch.manual_seed(0)
    args = [[torch.randn(64) for _ in range(4)] for _ in range(3)]
    gm = fxpurify.trace(sgd, *_clone(args), pre_dispatch=True)
    pure = fxpurify.purify(gm)
    rec = recover_memory(pure)
    kinds = [r.kind for r in records_of(rec)]
    writes = [k for k in kinds if k != "inplace_temp"]  # + temporaries reused in no_grad
    assert len(writes) == 8 and set(writes) == {"early_writeback", "inplace_write"}, kinds
    assert aten.add_.Tensor in _targets(rec)  # p.add_(b) runs in place again, under no_grad
    flat = lambda a: [t for group in a for t in group]  # noqa: E731
    ea, ga = _clone(args), _clone(args)
    for t in ea[0] + ga[0]:
        t.requires_grad_(True)
    assert torch.is_grad_enabled()
    sgd(*ea)
    rec(*flat(ga))
    for a, b in zip(flat(ga), flat(ea)):
        torch.testing.assert_close(a.detach(), b.detach())
    assert all(t.is_leaf and t.grad_fn is None for t in ga[0])
    assert torch.is_grad_enabled()


def test_moved_write_keeps_grad_mode_across_no_grad_region():
    """The write's value is ready inside a no_grad region, but the epilogue wrote under grad
    mode: moved there, the copy must switch grad back on (autograd history of a non-leaf
    input: CopyBackwards, as in the pure graph), then off again for the rest of the region."""

    def build(g):
        p, x = g.placeholder("p"), g.placeholder("x")
        g.call_function(torch._C._set_grad_enabled, (False,))
        v = g.call_function(aten.add.Tensor, (p, 1))
        z = g.call_function(aten.mul.Tensor, (x, 3))   # still under no_grad
        g.call_function(torch._C._set_grad_enabled, (True,))
        y = g.call_function(aten.mul.Tensor, (x, 2))
        g.call_function(aten.copy_.default, (p, v))
        return (y, z)

    gm = _graph(build)
    rec = recover_memory(gm)
    assert [r.kind for r in records_of(rec)] == ["early_writeback"]

    def run(m):
        w = torch.ones(3, requires_grad=True)
        p = w * 1  # a non-leaf input that requires grad
        x = torch.ones(3, requires_grad=True)
        y, z = m(p, x)
        assert not z.requires_grad  # the region after the moved write is still no_grad
        (p.sum() * 2 + y.sum()).backward()
        return type(p.grad_fn).__name__, w.grad, x.grad, p.detach()

    ref, got = run(gm), run(rec)
    assert got[0] == ref[0] == "CopyBackwards"
    torch.testing.assert_close(got[1], ref[1])
    torch.testing.assert_close(got[2], ref[2])
    torch.testing.assert_close(got[3], ref[3])


def test_inplace_write_chain_refusals():
    """A chain of elementwise ops runs in place only when nothing else reads its result and it
    ran under the write's grad mode."""

    def build(other_reader: bool, no_grad_region: bool):
        def b(g):
            p, x = g.placeholder("p"), g.placeholder("x")
            if no_grad_region:
                g.call_function(torch._C._set_grad_enabled, (False,))
            m = g.call_function(aten.mul.Tensor, (p, 0.5))
            s = g.call_function(aten.add.Tensor, (m, x))
            if no_grad_region:
                g.call_function(torch._C._set_grad_enabled, (True,))
            out = g.call_function(aten.sin.default, (s if other_reader else x,))
            g.call_function(aten.copy_.default, (p, s))
            return out
        return b

    p, x = torch.randn(5), torch.randn(5)
    for other, region, expect in ((False, False, "inplace_write"), (True, False, "early_writeback"),
                                  (False, True, "early_writeback")):
        gm = _graph(build(other, region))
        _prop(gm, p, x)
        rec = recover_memory(gm)
        kinds = [r.kind for r in records_of(rec) if r.kind != "inplace_temp"]
        assert kinds == [expect], (other, region)
        a, b = p.clone(), p.clone()
        torch.testing.assert_close(rec(a, x), gm(b, x))
        torch.testing.assert_close(a, b)


def _fxpurify_pre_dispatch(fn, *args):
    import fxpurify

    return fxpurify.purify(fxpurify.trace(fn, *args, pre_dispatch=True))


@pytest.mark.parametrize("purifier", [
    pytest.param(_functionalize, id="functionalize"),
    pytest.param(_fxpurify_pre_dispatch, id="fxpurify",
                 marks=pytest.mark.skipif(not _have_core(), reason="fxpurify.purify not landed")),
])
def test_inplace_foreach_write(purifier):
    def f(ps, gs):
        with torch.no_grad():  # an optimizer-style update: the write's grad mode is static
            torch._foreach_add_(ps, gs, alpha=0.5)
        return [p.sum() for p in ps]

    torch.manual_seed(0)
    args = [[torch.randn(32) for _ in range(4)], [torch.randn(32) for _ in range(4)]]
    pure = purifier(f, *_clone(args))
    rec = recover_memory(pure)
    assert "inplace_write" in [r.kind for r in records_of(rec)], rec.code
    # the stand-in keeps one _foreach_add; the core may emit it per element: either way the
    # final write now runs in place, and no functional add into the inputs remains
    targets = _targets(rec)
    assert aten._foreach_add_.List in targets or targets.count(aten.add_.Tensor) == 4
    assert aten._foreach_add.List not in targets
    flat = (lambda a: a) if purifier is _functionalize else (lambda a: [t for g in a for t in g])
    ea, ga = _clone(args), _clone(args)
    torch.testing.assert_close(list(rec(*flat(ga))), f(*ea))
    torch.testing.assert_close(ga, ea)
    one = 32 * 4
    _, st_pure = measure_peak(pure, *flat(_clone(args)))
    _, st_rec = measure_peak(rec, *flat(_clone(args)))
    assert st_pure.peak >= 4 * one and st_rec.peak < 4 * one


def test_inplace_temporaries_in_no_grad_region():
    def build(no_grad: bool, late_reader: bool, view: bool):
        def b(g):
            p = g.placeholder("p")
            if no_grad:
                g.call_function(torch._C._set_grad_enabled, (False,))
            a = g.call_function(aten.mul.Tensor, (p, 2))
            v = g.call_function(aten.t.default, (a,)) if view else None
            b_ = g.call_function(aten.add.Tensor, (a, 1))
            c = g.call_function(aten.sin.default, (b_,))
            outs = [c]
            if late_reader:
                outs.append(g.call_function(aten.cos.default, (a,)))
            if view:
                outs.append(g.call_function(aten.sum.default, (v,)))
            if no_grad:
                g.call_function(torch._C._set_grad_enabled, (True,))
            return tuple(outs)
        return b

    p = torch.randn(4, 4)
    # late reader of `a`: add cannot reuse it (cos reads it later), but sin and cos, each the
    # last reader of its input, can; a live view of `a` pins it: only sin reuses its input
    cases = {(True, False, False): 2, (False, False, False): 0, (True, True, False): 2,
             (True, False, True): 1}
    for (ng, late, view), expect in cases.items():
        gm = _graph(build(ng, late, view))
        _prop(gm, p)
        rec = recover_memory(gm)
        kinds = [r.kind for r in records_of(rec)]
        assert kinds.count("inplace_temp") == expect, ((ng, late, view), kinds, rec.code)
        if late or view:
            assert aten.add_.Tensor not in _targets(rec)
        torch.testing.assert_close(rec(p.clone()), gm(p.clone()))
    gm = _graph(build(True, False, False))
    _prop(gm, p)
    rec = recover_memory(gm)
    assert aten.add_.Tensor in _targets(rec) and aten.sin_.default in _targets(rec)
    _, st_pure = measure_peak(gm, p.clone())
    _, st_rec = measure_peak(rec, p.clone())
    assert st_rec.peak == 64 and st_pure.peak == 128  # one 4x4 float buffer instead of two
