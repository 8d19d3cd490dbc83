"""The differential oracle must catch every observable difference, and nothing else.

Each "detects" test hands `compare_with_eager` a candidate that is wrong in exactly one way a
broken functionalization could be wrong (missed write-back, lost aliasing, detached gradient,
RNG consumed differently, ...) and asserts the mismatch is reported by name.
"""
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from fxpurify.verify import (Comparison, VerificationError, clone_inputs,
                             compare_module_with_eager, compare_with_eager)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _mismatches(ref, cand, inputs, **kw):
    with pytest.raises(VerificationError) as ei:
        compare_with_eager(ref, cand, inputs, **kw)
    assert isinstance(ei.value, AssertionError)
    return "\n".join(ei.value.mismatches)


# ---------------------------------------------------------------- passes when equal

def test_identical_programs_pass_with_summary():
    def f(x, y):
        x.add_(1)
        return x * y, y[0]
    s = compare_with_eager(f, f, [torch.randn(3, 3), torch.randn(3, 3, requires_grad=True)])
    assert isinstance(s, Comparison)
    assert s.outputs == 2 and s.inputs_state == 2
    assert s.grads == ["input[1]"]
    assert s.aliasing == {1: [1]}


def test_mutating_make_fx_graph_matches_eager():
    def f(x):
        v = x[1:, ::2]
        v.mul_(2)
        x.t_()
        return v, x
    x = torch.randn(4, 6)
    gm = make_fx(f)(x.clone())
    s = compare_with_eager(f, gm, [x])
    assert s.aliasing == {0: [0], 1: [0]}


def test_inputs_are_never_modified():
    x = torch.randn(4)
    before = x.clone()
    compare_with_eager(lambda t: t.add_(1), lambda t: t.add_(1), [x])
    assert torch.equal(x, before) and x._version == 0


# ---------------------------------------------------------------- detects differences

def test_detects_output_values():
    out = _mismatches(lambda x: x * 2, lambda x: x * 2 + 1e-3, [torch.randn(5)])
    assert "output[0]: values differ" in out


def test_tolerance_is_respected_for_floats_but_ints_are_exact():
    compare_with_eager(lambda x: x * 2, lambda x: x * 2 + 1e-3, [torch.randn(5)], atol=1e-2)
    out = _mismatches(lambda x: x * 2, lambda x: x * 2 + 1, [torch.arange(5)], atol=10)
    assert "output[0]: values differ" in out


def test_nan_equal_nan():
    compare_with_eager(lambda x: x / 0 * 0, lambda x: x / 0 * 0, [torch.zeros(3)])


def test_detects_dtype_and_shape():
    assert "dtype" in _mismatches(lambda x: x * 2, lambda x: (x * 2).double(), [torch.randn(3)])
    assert "shape" in _mismatches(lambda x: x * 2, lambda x: (x * 2)[None], [torch.randn(3)])


def test_detects_structure():
    out = _mismatches(lambda x: (x, x + 1), lambda x: (x,), [torch.randn(3)])
    assert "output structure" in out


def test_list_and_tuple_outputs_are_the_same_structure():
    compare_with_eager(lambda x: [x + 1, x + 2], lambda x: (x + 1, x + 2), [torch.randn(3)])


def test_detects_missed_input_write_back():
    def ref(x):
        x[1:].add_(1)
        return x.sum()

    def cand(x):  # computes the right output but forgets to write x back
        return (x + torch.tensor([0.0, 1.0, 1.0])).sum()
    out = _mismatches(ref, cand, [torch.randn(3)])
    assert "input[0] after the call: values differ" in out


def test_detects_missed_input_metadata_mutation():
    def ref(x):
        x.t_()
        return x + 1

    def cand(x):
        return x.t() + 1
    out = _mismatches(ref, cand, [torch.randn(2, 3)])
    assert "input[0] after the call: shape" in out


def test_detects_lost_output_aliasing_of_the_functionalize_anchor():
    def f(x):
        x.add_(1)
        return x[0]
    x = torch.randn(3, 3)
    pure = make_fx(torch.func.functionalize(f, remove="mutations_and_views"))(x.clone())
    out = _mismatches(f, pure, [x])
    assert "output[0] aliasing: shares storage with inputs [] vs reference [0]" in out


def test_detects_spurious_output_aliasing():
    out = _mismatches(lambda x: x.clone(), lambda x: x.view(-1).view(x.shape), [torch.randn(3)])
    assert "aliasing" in out
    compare_with_eager(lambda x: x.clone(), lambda x: x.view(x.shape), [torch.randn(3)],
                       check_aliasing=False)


def test_detects_wrong_gradients():
    def ref(x, w):
        return (x * w).sin()

    def cand(x, w):
        return (x * w.detach()).sin()
    x, w = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    out = _mismatches(ref, cand, [x, w])
    assert "grad of input[1]" in out and "grad of input[0]" not in out
    assert "requires_grad" not in out  # the output still requires grad in both


def test_gradients_use_non_uniform_weights():
    # With a plain .sum() loss, flipping the output would not change the gradient.
    x = torch.randn(4, requires_grad=True)
    out = _mismatches(lambda t: t * torch.arange(4.0), lambda t: (t * torch.arange(4.0)).flip(0),
                      [x])
    assert "output[0]" in out
    s = compare_with_eager(lambda t: (t * t).sum(0), lambda t: (t * t).sum(0),
                           [torch.randn(3, 2, requires_grad=True)])
    assert s.grads == ["input[0]"]


def test_detects_write_back_without_autograd_history():
    # A non-leaf input mutated in place: the write-back must carry the gradient.
    def ref(t):
        t.mul_(3)
        return t.sum() * 0 + 1.0

    def cand(t):
        with torch.no_grad():
            t.mul_(3)
        return t.sum() * 0 + 1.0
    leaf = torch.randn(5, requires_grad=True)
    out = _mismatches(ref, cand, [leaf * 2])
    assert "grad of hidden leaf of input[0]" in out


def test_reference_backward_error_is_reported_not_hidden():
    def rejected(x):
        y = x.sigmoid()
        y.mul_(2)
        return y
    s = compare_with_eager(rejected, lambda x: x.sigmoid() * 2,
                           [torch.randn(3, requires_grad=True)])
    assert s.reference_backward_error and "modified by an inplace operation" in \
        s.reference_backward_error
    assert not s.grads_compared and "gradients not compared" in str(s)


def test_candidate_backward_error_is_a_mismatch():
    def bad(x):
        y = x.sigmoid()
        y.mul_(2)
        return y
    out = _mismatches(lambda x: x.sigmoid() * 2, bad, [torch.randn(3, requires_grad=True)])
    assert "backward raised in the candidate" in out


def test_random_ops_compare_bit_exactly_and_rng_consumption_is_checked():
    def f(x):
        return x + torch.rand_like(x)

    def g(x):
        torch.rand(1)
        return x + torch.rand_like(x)
    compare_with_eager(f, f, [torch.randn(8)], rtol=0, atol=0)
    assert "output[0]" in _mismatches(f, g, [torch.randn(8)])


def test_callers_rng_stream_is_untouched():
    x = torch.randn(4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    compare_with_eager(lambda t: t.uniform_(), lambda t: t.uniform_(), [x])
    assert torch.equal(torch.rand(3), expected)


def test_candidate_exceptions_propagate_with_a_note():
    class Refused(Exception):
        pass

    def cand(x):
        raise Refused("nope")
    with pytest.raises(Refused) as ei:
        compare_with_eager(lambda x: x, cand, [torch.randn(2)])
    assert any("candidate" in n for n in ei.value.__notes__)


# ---------------------------------------------------------------- input clones

def test_clone_inputs_preserves_aliasing_layout_and_leafness():
    base = torch.randn(4, 6)
    a, b = base[1], base[:, ::2]
    leaf = torch.randn(3, 4, requires_grad=True)
    nonleaf = (leaf * 2).t()
    cl = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    c = clone_inputs([a, b, leaf, nonleaf, cl, 7])
    a2, b2, leaf2, nonleaf2, cl2, seven = c.inputs
    assert seven == 7
    assert a2.untyped_storage().data_ptr() == b2.untyped_storage().data_ptr()
    assert a2.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    assert (a2.stride(), a2.storage_offset()) == (a.stride(), a.storage_offset())
    assert (b2.stride(), b2.storage_offset()) == (b.stride(), b.storage_offset())
    assert torch.equal(a2, a) and torch.equal(b2, b)
    a2.add_(1)  # the write is seen through the other alias, as it would be for the originals
    assert torch.equal(b2[1], b[1] + 1)
    assert leaf2.is_leaf and leaf2.requires_grad and leaf2 is not leaf
    assert not nonleaf2.is_leaf and nonleaf2.requires_grad
    assert nonleaf2.stride() == nonleaf.stride() and torch.equal(nonleaf2, nonleaf)
    nonleaf2.mul_(2)  # legal, as on the original non-leaf
    assert cl2.is_contiguous(memory_format=torch.channels_last)
    assert set(c.grad_leaves) == {"input[2]", "hidden base of input[3]"}
    assert nonleaf2._base is not None  # a view stays a view


def test_clone_inputs_keeps_a_plain_non_leaf_a_non_view():
    leaf = torch.randn(3, 4, requires_grad=True)
    (x,) = clone_inputs([leaf * 2]).inputs
    assert not x.is_leaf and x._base is None and x.requires_grad and x.stride() == (4, 1)


def test_clone_inputs_keeps_view_of_grad_leaf_as_its_view():
    leaf = torch.randn(4, requires_grad=True)
    view = leaf[1:]
    leaf2, view2 = clone_inputs([leaf, view]).inputs
    assert view2._base is leaf2 or view2.untyped_storage().data_ptr() == \
        leaf2.untyped_storage().data_ptr()
    (view2 * 3).sum().backward()
    assert torch.equal(leaf2.grad, torch.tensor([0.0, 3.0, 3.0, 3.0]))


def test_aliased_inputs_are_compared_as_aliased():
    base = torch.randn(4, 4)

    def ref(a, b):
        a.add_(1)
        return b * 2

    def cand(a, b):  # ignores that a and b share storage
        b = b.clone()
        a.add_(1)
        return b * 2
    compare_with_eager(ref, ref, [base[0], base[:, 0]])
    assert "output[0]: values differ" in _mismatches(ref, cand, [base[0], base[:, 0]])


def test_parameters_stay_parameters():
    p = torch.nn.Parameter(torch.randn(3))
    (p2,) = clone_inputs([p]).inputs
    assert isinstance(p2, torch.nn.Parameter) and p2.requires_grad and p2 is not p


# ---------------------------------------------------------------- modules

class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.bn = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        return torch.relu_(self.bn(self.lin(x)))


def test_module_compare_passes_and_checks_buffers_and_param_grads():
    torch.manual_seed(0)
    model = _Net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = compare_module_with_eager(model, lambda m: m, [torch.randn(8, 4)])
    assert "parameter lin.weight" in s.grads and "parameter bn.bias" in s.grads
    assert s.inputs_state >= 1 + 6  # input + 4 params + running stats
    for k, v in model.state_dict().items():  # the model itself is untouched
        assert torch.equal(v, before[k])


def test_module_compare_detects_missing_buffer_update():
    torch.manual_seed(0)
    model = _Net().train()

    def make(m):
        def run(x):  # uses batch statistics but never updates the running stats
            y = m.lin(x)
            y = torch.nn.functional.batch_norm(y, None, None, m.bn.weight, m.bn.bias, True)
            return torch.relu(y)
        return run
    with pytest.raises(VerificationError) as ei:
        compare_module_with_eager(model, make, [torch.randn(8, 4)])
    msg = str(ei.value)
    assert "buffer bn.running_mean" in msg and "buffer bn.num_batches_tracked" in msg
    assert "output[0]" not in msg


def test_module_factory_that_runs_the_model_does_not_skew_buffers():
    torch.manual_seed(0)
    model = _Net().train()

    def make(m):
        m(torch.randn(8, 4))  # e.g. tracing with real inputs updates running stats
        return m
    compare_module_with_eager(model, make, [torch.randn(8, 4)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_keep_device_aliasing_and_rng():
    base = torch.randn(4, 4, device="cuda")
    a, b = base[0], base[:, 0]
    c = clone_inputs([a, b]).inputs
    assert all(t.device.type == "cuda" for t in c)
    assert c[0].untyped_storage().data_ptr() == c[1].untyped_storage().data_ptr()

    def f(x, y):
        x.add_(torch.rand_like(x))
        return y * 2
    compare_with_eager(f, f, [a, b], rtol=0, atol=0)
    with pytest.raises(VerificationError):
        compare_with_eager(f, lambda x, y: f(x.clone(), y), [a, b])


def test_detects_a_candidate_that_leaks_grad_mode():
    def leaky(x):
        torch.set_grad_enabled(False)
        return x * 2
    assert torch.is_grad_enabled()
    out = _mismatches(lambda x: x * 2, leaky, [torch.randn(3)])
    assert "grad mode" in out
    assert torch.is_grad_enabled()  # restored for whatever runs next
