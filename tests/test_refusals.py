"""Honest refusals: every construct the pass cannot express purely with certainty raises one
typed error naming the op, the pattern, the user's file:line and what to do instead — never a
silently wrong graph. One test per refusal the core raises.
"""
import operator

import pytest
import torch

import fxpurify
from fxpurify.errors import (AliasedInputsError, FxPurifyError, InvalidGraphError,
                             MissingMetadataError, UnsupportedError)

HERE = __file__.rsplit("/", 1)[-1]


def _line(marker: str) -> int:
    with open(__file__) as f:
        return next(i for i, ln in enumerate(f, 1) if ln.rstrip().endswith(f"# {marker}"))


def _refused(fn, *inputs, example_inputs=None, pattern=None, op=None, marker=None,
             error=UnsupportedError):
    """Trace ``fn``, purify, and check the refusal names pattern, op, file:line and a hint."""
    gm = fxpurify.trace(fn, *inputs)
    before = str(gm.graph)
    with pytest.raises(error) as ei:
        fxpurify.purify(gm, example_inputs)
    e = ei.value
    assert isinstance(e, FxPurifyError)
    msg = str(e)
    if pattern is not None:
        assert e.pattern == pattern, msg
    if op is not None:
        assert op in msg, msg
    if marker is not None:
        assert f"{HERE}:{_line(marker)}" in msg, msg
    assert "what to do:" in msg, msg
    assert str(gm.graph) == before  # refusing leaves the given graph alone
    return e


# ---------------------------------------------------------------- aliasing

def _writes_a_reads_b(a, b):
    a.add_(1)  # ALIASED_WRITE
    return b * 2


def test_aliased_inputs_at_trace_time():
    base = torch.randn(4, 4)
    _refused(_writes_a_reads_b, base[0], base[:, 0], example_inputs=[base[0], base[:, 0]],
             pattern="aliased-inputs", op="aten.add_.Tensor", marker="ALIASED_WRITE")


def test_aliased_inputs_at_call_time():
    pure = fxpurify.purify(fxpurify.trace(_writes_a_reads_b, torch.randn(4), torch.randn(4)))
    base = torch.randn(4, 4)
    a, b = base[0], base[:, 0]
    before = base.clone()
    with pytest.raises(AliasedInputsError) as ei:
        pure(a, b)
    msg = str(ei.value)
    assert "'a'" in msg and "'b'" in msg and "share memory" in msg and "what to do:" in msg
    assert torch.equal(base, before)  # refused before writing anything
    # separate memory is fine, and matches eager
    x, y = torch.randn(4), torch.randn(4)
    ex, ey = x.clone(), y.clone()
    torch.testing.assert_close(pure(x, y), _writes_a_reads_b(ex, ey))
    torch.testing.assert_close(x, ex)


# ---------------------------------------------------------------- overlapping writes

def _as_strided_overlap(x):
    x.as_strided((2, 3), (0, 1)).fill_(1.0)  # AS_STRIDED_OVERLAP
    return x


def test_overlapping_as_strided_write():
    _refused(_as_strided_overlap, torch.randn(6), pattern="overlapping-write",
             op="aten.fill_.Scalar", marker="AS_STRIDED_OVERLAP")


def _expand_write(x):
    x.unsqueeze(0).expand(2, 3).zero_()  # EXPAND_WRITE
    return x


def test_write_into_expand():
    _refused(_expand_write, torch.randn(3), pattern="overlapping-write",
             op="aten.zero_.default", marker="EXPAND_WRITE")


def _unfold_overlap(x):
    x.unfold(0, 2, 1).mul_(2)  # UNFOLD_OVERLAP
    return x


def test_overlapping_unfold_write():
    """Windows share elements: eager multiplies shared elements twice; a scatter cannot."""
    _refused(_unfold_overlap, torch.randn(8), pattern="overlapping-write",
             op="aten.mul_.Tensor", marker="UNFOLD_OVERLAP")


def _unfold_gapped(x):
    x.unfold(0, 2, 3).add_(1)
    return x


def test_gapped_unfold_write_is_exact_not_refused():
    from fxpurify.verify import compare_with_eager
    x = torch.randn(8)
    pure = fxpurify.purify(fxpurify.trace(_unfold_gapped, x))
    compare_with_eager(_unfold_gapped, pure, [x])


# ---------------------------------------------------------------- stride-sensitive views

def _stride_sensitive_write(x, z, s):
    # rows with gaps; int64: copy_ into it needs no autograd link, so nothing reads y first
    y = torch.empty_strided((3, 4), (8, 1), dtype=torch.int64).fill_(1)
    y.mul_(z)   # the pure mul's result is dense: storage coordinates no longer apply
    y.as_strided((2, 2), (1, 3)).copy_(s)  # STRIDE_WRITE
    return y + x


def test_write_through_as_strided_after_layout_change():
    _refused(_stride_sensitive_write, torch.randn(3, 4), torch.randint(0, 5, (3, 4)), torch.randint(0, 5, (2, 2)),
             pattern="stride-sensitive-write", op="aten.as_strided.default", marker="STRIDE_WRITE")


def _stride_sensitive_read(x, z):
    y = torch.empty_strided((3, 4), (8, 1)).fill_(1.0)   # rows with gaps
    y.mul_(z)   # the pure mul's result is dense: as_strided below would select other elements
    return y.as_strided((12,), (1,)) + x  # STRIDE_READ


def test_as_strided_read_after_copy_into_transposed_buffer():
    """copy_ into a whole fresh strided tensor keeps its layout: storage-relative reads work."""
    def f(x, z):
        y = torch.empty_strided((3, 4), (1, 3))
        y.copy_(z)
        return y.as_strided((12,), (1,)) + x
    x, z = torch.randn(12), torch.randn(3, 4)
    fxpurify.verify.compare_with_eager(f, fxpurify.purify(fxpurify.trace(f, x, z)), [x, z])


def test_as_strided_read_after_layout_change():
    _refused(_stride_sensitive_read, torch.randn(12), torch.randn(3, 4),
             pattern="stride-sensitive-read", op="aten.as_strided.default", marker="STRIDE_READ")


# ---------------------------------------------------------------- storage and size changes

def _set(x, y):
    x.set_(y)  # SET
    return x + 1


def test_set_():
    _refused(_set, torch.randn(3), torch.randn(5), pattern="set_", op="aten.set_.source_Tensor",
             marker="SET")


def _resize_input(x):
    x.resize_(10)  # RESIZE
    return x


def test_size_changing_resize_of_an_input():
    _refused(_resize_input, torch.randn(3), pattern="resize-input", op="aten.resize_.default",
             marker="RESIZE")


def _out_resizes_input(x, y):
    torch.sin(y, out=x)  # OUT_RESIZE
    return x


def test_out_that_resizes_an_input():
    with pytest.warns(UserWarning):  # eager itself warns about resizing a non-empty out=
        _refused(_out_resizes_input, torch.randn(2), torch.randn(3), pattern="resize-input",
                 op="aten.sin.out", marker="OUT_RESIZE")


def _same_size_resize(x):
    x.resize_(x.shape)
    return x * 2


def test_same_size_resize_is_not_refused():
    x = torch.randn(3)
    pure = fxpurify.purify(fxpurify.trace(_same_size_resize, x))
    torch.testing.assert_close(pure(x.clone()), _same_size_resize(x.clone()))


# ---------------------------------------------------------------- unknown ops

_LIB = torch.library.Library("fxpurify_trust_test", "DEF")
_LIB.define("bump_(Tensor(a!) x) -> Tensor(a!)")
_LIB.impl("bump_", lambda x: x.add_(1), "CompositeExplicitAutograd")


def _unknown_mutable(x):
    torch.ops.fxpurify_trust_test.bump_(x)  # UNKNOWN_OP
    return x * 2


def test_unknown_mutable_op():
    """A mutable op that returns an alias of its input cannot be auto-functionalized."""
    _refused(_unknown_mutable, torch.randn(3), pattern="unknown-mutable-op",
             op="fxpurify_trust_test.bump_.default", marker="UNKNOWN_OP")


def _hop_graph():
    from torch._higher_order_ops.wrap import wrap

    def body(x):
        x.add_(1)
        return x * 2
    g = torch.fx.Graph()
    x = g.placeholder("x")
    b = g.get_attr("body")
    w = g.call_function(wrap, (b, x))
    w.meta["stack_trace"] = f'  File "{__file__}", line {_line("HOP_SITE")}, in f\n    wrap(body, x)\n'
    g.output(w)
    root = torch.nn.Module()
    root.body = fxpurify.trace(body, torch.randn(3))
    return torch.fx.GraphModule(root, g)  # HOP_SITE


def test_unknown_higher_order_op_with_mutating_body():
    gm = _hop_graph()
    with pytest.raises(UnsupportedError) as ei:
        fxpurify.purify(gm, [torch.randn(3)])
    msg = str(ei.value)
    assert ei.value.pattern == "unknown-hop" and "wrap" in msg and "what to do:" in msg
    assert f"{HERE}:{_line('HOP_SITE')}" in msg


# ---------------------------------------------------------------- graphs that are not ATen graphs

def _torch_level(x):
    x.add_(1)
    return torch.relu(x)


def test_torch_level_graph():
    gm = torch.fx.symbolic_trace(_torch_level)
    with pytest.raises(InvalidGraphError) as ei:
        fxpurify.purify(gm)
    msg = str(ei.value)
    assert "call_method 'add_'" in msg and "fxpurify.trace" in msg and "what to do:" in msg


def test_torch_level_module_graph():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.act = torch.nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act(x)
    with pytest.raises(InvalidGraphError) as ei:
        fxpurify.purify(torch.fx.symbolic_trace(M()))
    assert "call_module 'act'" in str(ei.value) and "lower_dynamo_graph" in str(ei.value)


def _needs_meta(x):
    x.mul_(2)
    return x + 1


def test_missing_metadata_and_no_example_inputs():
    gm = fxpurify.trace(_needs_meta, torch.randn(3))
    for n in gm.graph.nodes:
        n.meta.pop("val", None)
    with pytest.raises(MissingMetadataError) as ei:
        fxpurify.purify(gm)
    assert "example_inputs" in str(ei.value) and "meta['val']" in str(ei.value)
    x = torch.randn(3)  # and with example inputs it works
    pure = fxpurify.purify(gm, [x.clone()])
    torch.testing.assert_close(pure(x.clone()), _needs_meta(x.clone()))


# ---------------------------------------------------------------- metadata mutations

class _TransposesBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("b", torch.randn(2, 3))

    def forward(self, x):
        self.b.t_()  # BUFFER_T
        return self.b * x


def test_metadata_mutation_of_a_module_buffer():
    e = _refused(_TransposesBuffer(), torch.randn(1), pattern="metadata-mutation-buffer",
                 op="aten.t_.default", marker="BUFFER_T")
    assert e.kind == "unsupported"


# ---------------------------------------------------------------- random ops and symbolic shapes

def _normal_on_gapped_input(x):
    x.normal_()  # NORMAL_GAPPED
    return x


def test_normal_on_a_tensor_with_gaps():
    """Eager's kernel draws in an order no pure op reproduces: refusing beats wrong numbers."""
    _refused(_normal_on_gapped_input, torch.randn(8, 6)[::2], pattern="random-non-dense",
             op="aten.normal_.default", marker="NORMAL_GAPPED")


def _transpose_input_in_place(x):
    x.t_()  # SYMBOLIC_T
    return x + 1


def test_metadata_mutation_of_an_input_with_symbolic_sizes():
    """No longer a refusal: the metadata epilogue takes symbolic sizes/strides from graph nodes."""
    from fxpurify.verify import compare_with_eager
    gm = fxpurify.trace(_transpose_input_in_place, torch.randn(3, 4), tracing_mode="symbolic")
    pure = fxpurify.purify(gm)
    fxpurify.check_pure(pure)
    for shape in [(3, 4), (5, 2)]:
        compare_with_eager(_transpose_input_in_place, pure, [torch.randn(*shape)])


# ---------------------------------------------------------------- layouts fake tensors do not show

def _random_after_out_resize(x):
    y = torch.empty(0)
    torch.sin(x, out=y)  # eager: y takes x's transposed layout; the fake kernel says contiguous
    y.bernoulli_(0.5)  # RANDOM_UNKNOWN_LAYOUT
    return y


def test_random_fill_of_out_resized_tensor():
    _refused(_random_after_out_resize, torch.randn(4, 6).mT, pattern="random-unknown-layout",
             op="aten.bernoulli_.float", marker="RANDOM_UNKNOWN_LAYOUT")


def _reshape_after_out_resize(x):
    y = torch.empty(0)
    torch.sin(x, out=y)
    z = y.reshape(-1)  # RESHAPE_UNKNOWN_LAYOUT
    z.zero_()
    return y


def test_reshape_of_out_resized_tensor():
    # pre_dispatch keeps reshape (a view or a copy, decided by the layout at run time)
    gm = fxpurify.trace(_reshape_after_out_resize, torch.randn(4, 6).mT, pre_dispatch=True)
    with pytest.raises(UnsupportedError) as ei:
        fxpurify.purify(gm)
    assert ei.value.pattern == "view-of-unknown-layout"
    assert f"{HERE}:{_line('RESHAPE_UNKNOWN_LAYOUT')}" in str(ei.value)


def _broadcast_copy_from_own_row(x):
    row = x[1:2]
    x.copy_(row)  # OVERLAPPING_COPY
    return x


def test_copy_from_broadcast_view_of_destination():
    # eager visits memory in some order and reads rows it already overwrote
    _refused(_broadcast_copy_from_own_row, torch.randn(3, 3).mT, pattern="overlapping-copy",
             op="aten.copy_.default", marker="OVERLAPPING_COPY")


def test_copy_between_disjoint_views_of_one_tensor_is_not_refused():
    def shift(x):
        x[:2].copy_(x[2:])
        return x
    x = torch.randn(4, 3)
    pure = fxpurify.purify(fxpurify.trace(shift, x.clone()))
    expected = shift(x.clone())
    got = x.clone()
    pure(got)
    torch.testing.assert_close(got, expected)


def _one_tensor_as_several_written_args(x):
    return torch._fused_moving_avg_obs_fq_helper(x, x, x, x, x, x, x, 1.0, 0, 1, 0)  # ALIASED_ARGS


def test_op_writing_several_arguments_that_share_memory():
    _refused(_one_tensor_as_several_written_args, torch.ones(1), pattern="aliased-arguments",
             op="_fused_moving_avg_obs_fq_helper", marker="ALIASED_ARGS")


def _resize_gapped(x):
    y = torch.empty_strided((3, 4), (8, 1)).fill_(1.0)
    y.resize_(12)  # RESIZE_LAYOUT
    return y + x


def test_resize_keeping_data_of_a_gapped_tensor():
    _refused(_resize_gapped, torch.randn(12), pattern="resize-layout", op="aten.resize_.default",
             marker="RESIZE_LAYOUT")


def test_resize_keeping_data_to_another_rank():
    """Same element count, new rank: eager keeps the data (in memory order)."""
    def f(x):
        y = x.t().clone()
        y.resize_(2, 6)
        return y * 2
    x = torch.randn(3, 4)
    fxpurify.verify.compare_with_eager(f, fxpurify.purify(fxpurify.trace(f, x)), [x])


def _foreach_over_aliased_list_with_grad(x):
    t = x[1:3]
    torch._foreach_mul_([t, x], 2.0)  # ALIASED_FOREACH
    return x * 1


def test_foreach_over_aliased_list_recorded_by_autograd():
    # without autograd (no_grad, optimizer steps) the same program is rewritten exactly
    _refused(_foreach_over_aliased_list_with_grad, torch.randn(6, requires_grad=True) * 1,
             pattern="aliased-foreach", op="aten._foreach_mul_", marker="ALIASED_FOREACH")
