"""fxpurify.testing: the guard users put in their own CI."""
import pytest
import torch

from fxpurify.testing import (InplaceOp, InplaceOpsFound, assert_no_inplace,
                              assert_purified_matches_eager, list_inplace_ops)
from fxpurify.verify import VerificationError

HERE = __file__.rsplit("/", 1)[-1]


def _writes_input_view(x, y):
    v = x[1:].t()
    v.add_(y)            # LINE_ADD
    z = y * 2
    z.relu_()            # intermediate: harmless to callers
    return x * 2 + z.sum()


def _pure(x, y):
    return (x[1:] + y).relu()


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.act = torch.nn.ReLU(inplace=True)
        self.register_buffer("cache", torch.zeros(8, 4))

    def forward(self, x):
        y = self.act(self.bn(self.lin(x)))
        self.cache[: y.shape[0]].copy_(y.detach())
        return y


def _line_of(marker):
    with open(__file__) as f:
        return next(i for i, ln in enumerate(f, 1) if marker in ln and "_line_of" not in ln)


def test_list_inplace_ops_names_input_source_line_and_rewrite():
    ops = list_inplace_ops(_writes_input_view, torch.randn(4, 3), torch.randn(3, 3))
    assert len(ops) == 1
    (op,) = ops
    assert isinstance(op, InplaceOp)
    assert op.op == "aten.add_.Tensor" and op.kind == "in-place"
    assert op.target == "input x"
    assert op.source.endswith(f"{HERE}:{_line_of('# LINE_ADD')} in _writes_input_view")
    assert op.code.startswith("v.add_(y)")
    assert "aten.add.Tensor" in op.becomes and "write-back" in op.becomes
    assert "aten.add_.Tensor" in str(op) and HERE in str(op)


def test_intermediates_only_on_request():
    ops = list_inplace_ops(_writes_input_view, torch.randn(4, 3), torch.randn(3, 3),
                           include_intermediates=True)
    assert [(o.op, o.target) for o in ops] == [("aten.add_.Tensor", "input x"),
                                               ("aten.relu_.default", "intermediate")]


def test_pure_function_passes_the_guard():
    assert list_inplace_ops(_pure, torch.randn(4, 3), torch.randn(3)) == []
    assert_no_inplace(_pure, torch.randn(4, 3), torch.randn(3))


def test_guard_fails_with_a_table_of_writes():
    with pytest.raises(InplaceOpsFound) as ei:
        assert_no_inplace(_writes_input_view, torch.randn(4, 3), torch.randn(3, 3))
    assert isinstance(ei.value, AssertionError)
    msg = str(ei.value)
    assert "1 in-place operation" in msg and "aten.add_.Tensor" in msg and "input x" in msg
    assert f"{HERE}:{_line_of('# LINE_ADD')}" in msg


def test_module_buffers_parameters_and_hidden_batch_norm_writes():
    model = _Net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ops = list_inplace_ops(model, torch.randn(8, 4))
    targets = {o.target: o for o in ops}
    assert set(targets) == {"buffer bn.running_mean", "buffer bn.running_var",
                            "buffer bn.num_batches_tracked", "buffer cache"}
    assert targets["buffer bn.running_mean"].kind.startswith("hidden")
    assert "functional" in targets["buffer bn.running_mean"].becomes
    assert targets["buffer cache"].op == "aten.copy_.default"
    # tracing ran the model on clones: its own state is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # eval mode: batch norm does not write, only the cache is written
    assert {o.target for o in list_inplace_ops(model.eval(), torch.randn(8, 4))} == \
        {"buffer cache"}


def test_allow_by_tensor_op_or_predicate():
    model = _Net().train()
    x = torch.randn(8, 4)
    with pytest.raises(InplaceOpsFound) as ei:
        assert_no_inplace(model, x, allow=["cache"])
    assert {o.target for o in ei.value.ops} == {"buffer bn.running_mean", "buffer bn.running_var",
                                                "buffer bn.num_batches_tracked"}
    assert_no_inplace(model, x, allow=["cache", lambda o: o.target.startswith("buffer bn.")])
    assert_no_inplace(_writes_input_view, torch.randn(4, 3), torch.randn(3, 3), allow=["add_"])
    assert_no_inplace(_writes_input_view, torch.randn(4, 3), torch.randn(3, 3),
                      allow=["input x"])


def test_parameter_update_under_no_grad_is_reported():
    w = torch.nn.Parameter(torch.randn(3))

    def sgd_step(w, g):
        with torch.no_grad():
            w.sub_(0.1 * g)
        return w
    ops = list_inplace_ops(sgd_step, w, torch.randn(3))
    assert [(o.op, o.target) for o in ops] == [("aten.sub_.Tensor", "input w")]


def test_assert_purified_matches_eager_function_and_module():
    s = assert_purified_matches_eager(_writes_input_view, torch.randn(4, 3), torch.randn(3, 3))
    assert s.outputs == 1 and s.inputs_state == 2
    model = _Net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = assert_purified_matches_eager(model, torch.randn(8, 4))
    assert "parameter lin.weight" in s.grads
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_assert_purified_matches_eager_reports_differences(monkeypatch):
    import fxpurify

    def sloppy(gm, example_inputs=None):  # forgets every write-back
        out = fxpurify.pipeline.purify(gm, example_inputs)
        for n in list(out.graph.nodes):
            if n.op == "call_function" and len(n.args) == 2 and \
                    isinstance(n.args[0], torch.fx.Node) and \
                    n.args[0].op == "placeholder" and \
                    (n.target is torch.ops.aten.copy_.default or "write_back" in str(n.target)):
                n.replace_all_uses_with(n.args[1])
                out.graph.erase_node(n)
        out.recompile()
        return out
    monkeypatch.setattr(fxpurify, "purify", sloppy)
    with pytest.raises(VerificationError) as ei:
        assert_purified_matches_eager(_writes_input_view, torch.randn(4, 3), torch.randn(3, 3))
    assert "input[0] after the call" in str(ei.value)
