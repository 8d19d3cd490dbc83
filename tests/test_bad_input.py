"""Bad and unusual input (issue 5, item 3): each case either works — checked against running the
given graph eagerly (outputs, final input state, grads, output aliasing) — or gets a clear typed
error. In every case the graph handed to ``purify`` is left exactly as it was.

The reference is the *given graph* run eagerly (the pass's semantics), not the Python function:
how ``fxpurify.trace`` flattens outputs or bakes in constants is capture's business.
"""
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import fxpurify
from fxpurify.errors import (AliasedInputsError, FxPurifyError, InvalidGraphError,
                             MissingMetadataError, UnsupportedError)
from fxpurify.verify import compare_with_eager


def _fingerprint(gm):
    """Everything purify could disturb in the given graph."""
    nodes = [(n.name, n.op, str(n.target), str(n.args), str(n.kwargs), id(n.meta.get("val")),
              n.meta.get("stack_trace")) for n in gm.graph.nodes]
    return nodes, gm.code


def _works(gm, inputs, *, fn=None, example_inputs=None, graph_runs_eagerly=True):
    """``graph_runs_eagerly=False``: the given graph cannot be the reference (a make_fx graph
    records no ``no_grad`` region, so replaying it on a leaf that requires grad raises); then
    the Python function is."""
    before = _fingerprint(gm)
    pure = fxpurify.purify(gm, example_inputs)
    assert _fingerprint(gm) == before, "purify modified the graph it was given"
    fxpurify.check_pure(pure)
    s = compare_with_eager(gm, pure, inputs) if graph_runs_eagerly else None
    if fn is not None:
        s = compare_with_eager(fn, pure, inputs)
    assert _fingerprint(gm) == before
    return pure, s


def _fails(gm, error, *, example_inputs=None, match=()):
    before = _fingerprint(gm)
    with pytest.raises(error) as ei:
        fxpurify.purify(gm, example_inputs)
    assert isinstance(ei.value, FxPurifyError)
    for m in match:
        assert m in str(ei.value), str(ei.value)
    assert _fingerprint(gm) == before, "purify modified the graph it was given"
    return ei.value


# ---------------------------------------------------------------- not an ATen graph

def _torch_level(x):
    x.add_(1)
    return torch.relu(x)


def test_torch_level_symbolic_trace_graph_is_a_clear_error():
    _fails(torch.fx.symbolic_trace(_torch_level), InvalidGraphError,
           match=("torch-level", "fxpurify.trace"))


def test_no_metadata_and_no_example_inputs_is_a_clear_error_and_inputs_fix_it():
    def f(x):
        x.mul_(2)
        return x + 1
    gm = make_fx(f)(torch.randn(3))
    for n in gm.graph.nodes:
        n.meta.pop("val", None)
    _fails(gm, MissingMetadataError, match=("example_inputs",))
    _works(gm, [torch.randn(3)], fn=f, example_inputs=[torch.randn(3)])


# ---------------------------------------------------------------- placeholders

def _scale(x, n):
    x.mul_(n)
    return x + n


def test_non_tensor_placeholder_needs_example_inputs():
    gm = make_fx(_scale)(torch.randn(3), 3)  # make_fx records no meta["val"] for the int
    _fails(gm, MissingMetadataError, match=("example_inputs",))
    _works(gm, [torch.randn(3), 3], fn=_scale, example_inputs=[torch.randn(3), 3])


def test_symint_placeholder_and_sym_size_nodes():
    gm = make_fx(_scale, tracing_mode="symbolic")(torch.randn(3), 2)
    assert any(isinstance(n.meta.get("val"), torch.SymInt) for n in gm.graph.nodes
               if n.op == "placeholder")
    pure, _ = _works(gm, [torch.randn(3), 2], fn=_scale)
    compare_with_eager(_scale, pure, [torch.randn(5), 4])  # other sizes, other int

    def g(x, y):
        x.add_(1)
        return x.view(-1)[: y.shape[0]] * y
    gm = make_fx(g, tracing_mode="symbolic")(torch.randn(4, 3), torch.randn(5))
    pure, _ = _works(gm, [torch.randn(4, 3), torch.randn(5)], fn=g)
    compare_with_eager(g, pure, [torch.randn(2, 3), torch.randn(4)])


# ---------------------------------------------------------------- outputs

def test_empty_graph_returning_its_input():
    gm = fxpurify.trace(lambda x: x, torch.randn(3))
    _, s = _works(gm, [torch.randn(3)])
    assert s.aliasing == {0: [0]}


def test_graph_with_no_outputs():
    def f(x):
        x.add_(1)
    gm = fxpurify.trace(f, torch.randn(3))
    pure, s = _works(gm, [torch.randn(3)])
    assert s.inputs_state == 1
    assert pure(torch.randn(3)) == gm(torch.randn(3)) == (None,)  # fxpurify.trace's convention


def test_outputs_that_are_inputs_keep_their_identity():
    def f(x, y):
        x.mul_(2)
        return x, x, y
    gm = make_fx(f)(torch.randn(3), torch.randn(2))
    pure, s = _works(gm, [torch.randn(3), torch.randn(2)], fn=f)
    assert s.aliasing == {0: [0], 1: [0], 2: [1]}
    x, y = torch.randn(3), torch.randn(2)
    a, b, c = pure(x, y)
    assert a is x and b is x and c is y


def test_tuple_list_none_and_dict_outputs():
    def f(x, y):
        y[0].zero_()
        return [x + 1, (y, None)], {"a": x}
    gm = make_fx(f)(torch.randn(3), torch.randn(2, 2))
    _works(gm, [torch.randn(3), torch.randn(2, 2)], fn=f)


# ---------------------------------------------------------------- inputs

def _add_then_read(a, b):
    a.add_(1)
    return a + b


def test_duplicate_inputs_that_are_written_are_refused():
    x = torch.randn(3)
    gm = fxpurify.trace(_add_then_read, x, x)
    _fails(gm, UnsupportedError, example_inputs=[x, x], match=("sharing memory", "add_"))
    pure = fxpurify.purify(fxpurify.trace(_add_then_read, torch.randn(3), torch.randn(3)))
    with pytest.raises(AliasedInputsError):
        pure(x, x)


def test_duplicate_inputs_that_are_only_read_work():
    x = torch.randn(3)
    gm = fxpurify.trace(lambda a, b: a * b + 1, x, x)
    pure, _ = _works(gm, [x, x], example_inputs=[x, x])
    torch.testing.assert_close(pure(x, x), x * x + 1)


def test_zero_size_tensors():
    def f(x):
        x.add_(1)
        x[0:0].mul_(2)
        return x.sum(0), x
    _works(make_fx(f)(torch.randn(0, 3)), [torch.randn(0, 3)], fn=f)


@pytest.mark.parametrize("layout", ["channels_last", "transposed_strided", "offset_view"])
def test_non_contiguous_inputs_keep_their_layout(layout):
    if layout == "channels_last":
        x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    elif layout == "transposed_strided":
        x = torch.randn(5, 3, 4)[:, ::2].transpose(0, 1)
    else:
        x = torch.randn(10, 4)[3:7]

    def f(x):
        x[:, :1].mul_(2)
        x.add_(1)
        return x.relu()
    _works(make_fx(f)(x.clone()), [x], fn=f)  # compares the inputs' strides after the call


def test_complex_dtype():
    def f(x):
        x.mul_(1j)
        x.real.add_(1)
        return x.abs()
    _works(make_fx(f)(torch.randn(3, dtype=torch.complex64)),
           [torch.randn(3, dtype=torch.complex64)], fn=f)


def test_integer_and_bool_dtypes():
    def f(x, m):
        x.mul_(3)
        x[1::2].fill_(0)
        m.logical_not_()
        return x // 2, m
    inputs = [torch.arange(6), torch.tensor([True, False, True])]
    _works(make_fx(f)(*[t.clone() for t in inputs]), inputs, fn=f)


def test_leaf_requiring_grad_mutated_outside_no_grad_is_eagers_clear_error():
    def f(w):
        w.mul_(2)
        return w
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        fxpurify.trace(f, torch.randn(3, requires_grad=True))


def test_leaf_requiring_grad_mutated_under_no_grad_works_with_grads():
    def f(w, g):
        with torch.no_grad():
            w.sub_(0.1 * g)
        return (w * w).sum()
    inputs = [torch.randn(3, requires_grad=True), torch.randn(3)]
    _, s = _works(fxpurify.trace(f, *inputs), inputs, fn=f, graph_runs_eagerly=False)
    assert s.grads == ["input[0]"]


def test_data_dependent_output_shape():
    def f(x, m):
        x.mul_(2)
        return x[m]
    inputs = [torch.randn(3), torch.tensor([True, False, True])]
    gm = make_fx(f)(*[t.clone() for t in inputs])
    try:
        _works(gm, inputs, fn=f)
    except FxPurifyError:
        pass  # a clear refusal is acceptable too
