"""The differential fuzzer: its machinery (generator, classifier, reducer, reproducers, CLI) and a
bounded slice against the real pass (zero wrong results, zero crashes).

The longer run is a documented command (docs/readme_trust.md):
``python -m fxpurify.fuzz --seed 0 --count 20000``.
"""
import collections
import dataclasses

import torch.nn.functional as F

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import fxpurify
from fxpurify.errors import FxPurifyError, UnsupportedError
from fxpurify.fuzz import check_program, generate, run
from fxpurify.fuzz.__main__ import main as fuzz_main
from fxpurify.fuzz.generate import Program, Stmt
from fxpurify.fuzz.reduce import reduce_program
from fxpurify.fuzz.runner import load_source
from fxpurify.verify import clone_inputs

SLICE = 300  # programs in the CI slice (about 10-20 s on one core)


def _prog(stmts, returns, inputs=("x0 = torch.randn((4, 6), generator=g)",), names=("x0",)):
    return Program(0, list(inputs), list(names),
                   [Stmt(k, s, o, tuple(d), "") for k, s, o, d in stmts], list(returns))


_MUTATES_INPUT_VIEW = _prog([("view", "t1 = x0[1:, ::2]", "t1 = x0[1:, ::2]", ["t1"]),
                             ("inplace", "t1.mul_(2)", "t1.copy_(t1.clone().mul_(2))", [])],
                            ["t1"])


def _functionalize_anchor(gm, example_inputs=None):
    """A wrong pass: drops every mutation of the inputs (and output aliasing)."""
    inputs = example_inputs or [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = [torch.zeros(t.shape, dtype=t.dtype) for t in inputs]
    out = make_fx(torch.func.functionalize(gm, remove="mutations_and_views"))(*inputs)
    for n in list(out.graph.nodes):
        if n.target is torch.ops.aten.copy_.default and n.args[0].op == "placeholder":
            n.replace_all_uses_with(n.args[1])
            out.graph.erase_node(n)
    out.recompile()
    return out


# ---------------------------------------------------------------- generator

def test_programs_are_deterministic_and_run_eagerly():
    for seed in range(20):
        p, q = generate(seed), generate(seed)
        assert p.source(oop=True) == q.source(oop=True)
        ns = load_source(p.source(oop=True), f"gen_{seed}.py")
        inputs = ns["make_inputs"]()
        out = ns["forward"](*clone_inputs(inputs).inputs)
        assert isinstance(out, tuple) and len(out) == len(p.returns)


def test_generator_covers_the_issue_list():
    text = collections.Counter()
    fams = collections.Counter()
    for seed in range(400):
        p = generate(seed)
        src = p.source()
        fams.update(p.families())
        for needle in ["::", ".select(", ".diagonal(", ".transpose(", ".permute(", ".view(",
                       ".reshape(", ".unsqueeze(", ".squeeze(", ".split(", ".chunk(", ".unbind(",
                       ".as_strided(", ".unfold(", ".expand(", ".copy_(", ".fill_(", ".zero_(",
                       ".index_put_(", ".index_copy_(", ".masked_fill_(", ".scatter_(",
                       "out=", ".transpose_(", ".unsqueeze_(", ".uniform_(", ".bernoulli_(",
                       "torch.no_grad()", "requires_grad_()", "b0 = ", ".double()"]:
            text[needle] += needle in src
    missing = [k for k, v in text.items() if v == 0]
    assert not missing, f"generator never produced: {missing}"
    for fam in ["arith", "copy", "fill", "index", "out", "random", "meta", "view", "multi_view",
                "setitem", "nograd_arith", "custom", "maybe_alias"]:
        assert fams[fam] > 0, fam


def test_out_of_place_form_matches_forward_and_passes_backward():
    """Programs eager autograd rejects get a reference whose backward works, same forward."""
    from fxpurify.verify import compare_with_eager
    found = 0
    for seed in range(400):
        p = generate(seed)
        ns = load_source(p.source(oop=True), f"oop_{seed}.py")
        inputs = ns["make_inputs"]()
        if not any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs):
            continue
        s = compare_with_eager(ns["forward"], ns["forward"], inputs)
        if s.reference_backward_error is None:
            continue
        compare_with_eager(ns["forward"], ns["forward_oop"], inputs, grads=False)
        s2 = compare_with_eager(ns["forward_oop"], ns["forward_oop"], inputs)
        assert s2.reference_backward_error is None, p.source(oop=True)
        found += 1
        if found == 3:
            break
    assert found == 3, "no program with an autograd-rejected in-place op in 400 seeds"


# ---------------------------------------------------------------- classification

def test_a_pass_that_drops_writes_is_WRONG():
    out = check_program(_MUTATES_INPUT_VIEW, purify=_functionalize_anchor, check_pure=None)
    assert out.kind == "WRONG" and out.is_failure
    assert "input[0] after the call" in out.detail


def test_refusals_are_counted_by_kind_and_other_exceptions_are_crashes():
    def refuse(gm, example_inputs=None):
        raise UnsupportedError("no", pattern="overlapping-write")

    def crash(gm, example_inputs=None):
        raise KeyError("bug")
    out = check_program(_MUTATES_INPUT_VIEW, purify=refuse, refusal_types=(FxPurifyError,))
    assert (out.kind, out.refusal) == ("refused", "unsupported:overlapping-write")
    out = check_program(_MUTATES_INPUT_VIEW, purify=crash, refusal_types=(FxPurifyError,))
    assert (out.kind, out.exc_type) == ("crash", "KeyError")


def test_a_pass_that_edits_its_input_graph_is_a_crash():
    def vandal(gm, example_inputs=None):
        node = next(n for n in gm.graph.nodes if n.op == "call_function")
        node.args = (node.args[0],) + tuple(node.args[1:-1]) + (3,)
        return gm
    out = check_program(_MUTATES_INPUT_VIEW, purify=vandal, check_pure=None)
    assert (out.kind, out.exc_type) == ("crash", "ModifiedInput")


def test_an_impure_result_is_reported():
    out = check_program(_MUTATES_INPUT_VIEW, purify=lambda gm, example_inputs=None: gm,
                        check_pure=fxpurify.check_pure)
    assert out.kind == "impure"


def test_tracer_disagreement_is_not_blamed_on_the_pass():
    # identity "pass" on a program make_fx traces faithfully: ok, not WRONG
    out = check_program(_MUTATES_INPUT_VIEW, purify=lambda gm, example_inputs=None: gm,
                        check_pure=None)
    assert out.kind == "ok"


# ---------------------------------------------------------------- reducer and reproducers

def test_reducer_shrinks_to_the_culprit_and_reproducer_replays():
    def picky(gm, example_inputs=None):
        if any(n.target is torch.ops.aten.sin_.default for n in gm.graph.nodes):
            raise ValueError("sin_ bug")
        return gm
    stmts = [("view", "t1 = x0[1:]", "t1 = x0[1:]", ["t1"]),
             ("compute", "t2 = x0 * 2", "t2 = (x0.clone() * 2).clone()", ["t2"]),
             ("inplace", "t2.add_(1.0)", "t2.copy_(t2.clone().add_(1.0))", []),
             ("view", "t3 = t2.t()", "t3 = t2.t()", ["t3"]),
             ("inplace", "t3.sin_()", "t3.copy_(t3.clone().sin_())", []),
             ("inplace", "t1.zero_()", "t1.zero_()", [])]
    p = _prog(stmts, ["t1", "t2", "t3"])
    chk = lambda q: check_program(q, purify=picky, check_pure=None)  # noqa: E731
    out = chk(p)
    assert (out.kind, out.exc_type) == ("crash", "ValueError")
    small = reduce_program(p, out, chk)
    assert [s.src for s in small.stmts] == ["t2 = x0 * 2", "t3 = t2.t()", "t3.sin_()"]
    assert chk(small).signature() == out.signature()
    src = small.source(oop=True, header="hdr", main=True)
    assert src.startswith("# hdr") and "check_functions" in src
    ns = load_source(src, "repro.py")  # not __main__: define, don't run
    from fxpurify.fuzz.runner import check_functions
    replay = check_functions(ns["make_inputs"], ns["forward"], ns["forward_oop"], purify=picky,
                             check_pure=None)
    assert replay.signature() == out.signature()


def test_run_saves_reduced_failures(tmp_path):
    stats = run(0, 6, check=lambda p: check_program(p, purify=_functionalize_anchor,
                                                   check_pure=None),
                save_failures=str(tmp_path))
    assert stats.programs == 6 and stats.failed == len(stats.failures) > 0
    files = sorted(tmp_path.iterdir())
    assert len(files) == stats.failed
    assert all(f.read_text().startswith("# fxpurify fuzz reproducer") for f in files)
    assert "programs/s" in stats.summary()


# ---------------------------------------------------------------- the real pass

def test_fuzz_slice_has_no_wrong_results_and_no_crashes():
    torch.set_num_threads(1)
    stats = run(0, SLICE, reduce_per_class=1)  # one reduced reproducer per bug class
    assert stats.programs == SLICE
    assert stats.outcomes["ok"] > SLICE // 2, stats.summary()
    msg = stats.summary() + "".join(
        f"\n\n===== program {f.seed}: {f.outcome.kind}\n{f.reproducer()}"
        for f in [f for f in stats.failures if f.reduced][:5])
    assert stats.failed == 0, msg


def test_cli_prints_rates_and_counts(capsys):
    rc = fuzz_main(["--seed", "3", "--count", "4", "--quiet"])
    out = capsys.readouterr().out
    assert "programs/s" in out and "outcomes: ok=" in out
    assert rc == (1 if "FAILED" in out else 0)


# ---------------------------------------------------------------- regressions found by the fuzzer
# Hand-minimized from reduced fuzzer reproducers. Each must end ok (equivalent to eager) or
# refused (a typed error), both with and without example inputs. A case the core still gets
# wrong is marked xfail(strict=True) naming the bug, so fixing it turns the mark into a failure.

def _leaf(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).requires_grad_()


def _r(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def bernoulli_on_transposed_input(x):
    x.bernoulli_(0.5)
    return torch.zeros_like(x)


def dropout_inplace_on_transposed(x):
    t = (x + x).t()
    F.dropout(t, 0.5, True, inplace=True)
    return t


def normal_on_strided_input(x):
    x.normal_()
    return x.view(4, 6, 1)


def out_into_fresh_float32_from_float64(x):
    t = torch.empty(0)
    torch.add(x, 1, out=t)
    return t


def as_strided_read_after_write_to_strided_input(x):
    x.abs_()
    return x.as_strided((2, 3), (3, 1), 1) * 1


def as_strided_write_after_write_to_strided_input(x):
    t = x.as_strided((3, 3), (3, 1), 0)
    x.clamp_(min=0.1)
    t.zero_()
    return x * 1


def no_grad_write_through_view_then_grad_write(x):
    t = x.unsqueeze(-2)
    with torch.no_grad():
        t.masked_fill_(t > 0, 1.5)
    x.index_fill_(0, torch.tensor([1]), 1.5)
    return x


def write_through_detach_keeps_history(x):
    x.neg_()
    x.detach().mul_(2)
    return x


def copy_of_constant_into_tensor_requiring_grad(x, y):
    x.copy_(y)
    return x.sum()


def setitem_then_no_grad_add(x):
    t = x.sum() + x.sum()
    x[1] += 1.0
    with torch.no_grad():
        x.add_(1.0)
    return t


def no_grad_leaf_write_and_grad_nonleaf_write(x, w):
    with torch.no_grad():
        w.abs_()
    t = w.flatten()
    x.abs_()
    return t


def out_under_no_grad_on_tensor_requiring_grad(x):
    t = x.sum() * 1
    with torch.no_grad():
        torch.mul(t, t, out=t)
    return t


def metadata_mutation_after_self_copy_of_input(x):
    x.copy_(x.float())
    x.unsqueeze_(0)
    return x


def write_into_slice_of_expanded_input(x):
    t = x.unsqueeze(0).expand(2, -1, -1)
    t[1:] += 1.0
    return t.softmax(-1)


def as_strided_fill_of_non_leaf_input(x):
    x.as_strided((1, 3), (1, 1), 5).fill_(2.0)
    return x


def write_through_detached_alias_with_grad_operands(x):
    t = x.detach()
    t.addcmul_(x, x.sum(), value=0.5)
    return t


def write_through_detached_alias_of_intermediate(x0):
    t1 = torch.maximum(x0, torch.tensor(0.25))
    t4 = (x0 + x0).detach()
    t4.copy_(t1.double())
    return t4


def partial_write_through_view_of_detached_input(x):
    t = x.detach()
    t[1:3].mul_(x[3:5])
    return t, x


def no_grad_foreach_over_aliased_list(x):
    t = x[1:3]
    with torch.no_grad():
        torch._foreach_mul_([t, x], 2.0)   # eager: one tensor after the other
    return x * 1


def as_strided_read_after_write_to_transposed_input(x):
    x.masked_fill_(x > 0.5, 1.5)   # the pure masked_fill is contiguous; x stays transposed
    return x.as_strided((3,), (1,), 0) * 1


def as_strided_write_into_transposed_input(x):
    x.as_strided((2, 2), (1, 3), 1).mul_(2)
    return x * 1


def fill_diagonal_wrapping_tall_matrix(x):
    x.fill_diagonal_(1.5, wrap=True)
    return x.sum(0)


def fill_diagonal_of_transposed_cube_view(x):
    t = x.permute(2, 0, 1)
    t.fill_diagonal_(-2.0)
    return t * 1


def write_through_detached_alias_with_grad_operands_oop(x):   # eager backward rejects the above
    t = x.detach()
    t.copy_(t.clone().addcmul_(x.clone(), x.sum().clone(), value=0.5))
    return t


def metadata_mutation_through_flatten_of_1d_input(x):
    t = x.flatten()  # a 1-d tensor's flatten() is the tensor itself
    t.unsqueeze_(0)
    return x * 1


def int_input_written_from_value_requiring_grad(x, w):
    x[3:] = w.sum()
    return w * 1


def random_after_write_to_gapped_input(x):
    x.div_(2.0)
    x.normal_()
    return x


def uniform_after_write_to_transposed_input(x):
    x.mul_(2.0)
    x.uniform_()
    return x


def as_strided_metadata_mutation_then_fill_of_non_leaf_input(x):
    x.as_strided_((4, 3, 2), (6, 2, 1), 0)
    x.fill_(2.0)
    return x


def as_strided_metadata_mutation_of_aliased_input(x1, x2):
    x2.as_strided_((5,), (1,), 1)
    return x2


def read_non_leaf_input_twice_after_unsqueeze_(x):
    x.unsqueeze_(0)
    return x * x.permute(0, 1)


def as_strided_write_into_intermediate_requiring_grad(x):
    t = x * 2
    t.as_strided((1, 1), (2, 2), 7).fill_(-1.0)
    return t


def no_grad_write_through_contiguous_identity_then_grad_write(x):
    t = x.contiguous()  # x itself
    with torch.no_grad():
        t.clamp_(-1.0, 1.0)
    x.clamp_(-1.0, 1.0)
    return x


def _aliased_pair():
    b = _r(5, 6)
    return [b[0], b[0, 1:]]



def copy_under_no_grad_into_fresh_tensor(x):
    t = torch.zeros_like(x)
    with torch.no_grad():
        t.copy_(x)
    return t


def foreach_add_over_aliased_elements(x):
    torch._foreach_add_([x.view(1, -1), x], 1.0)  # x gets 1.0 twice
    return x


def foreach_add_over_grad_and_non_grad_tensors(x, y):
    t = x.clamp(-1, 1)
    torch._foreach_add_([t, y], 1.0)
    return y, t


def normal_after_write_to_transposed_input(x):
    x.masked_fill_(x > 0.5, 1.5)
    x.t().normal_()
    return x


def copy_of_input_alias_into_fresh_tensor(x):
    t = x + x
    with torch.no_grad():
        t.copy_(x.float())  # x.float() is x itself
    return t


_CASES = [
    ("copy_of_input_alias_into_fresh_tensor", copy_of_input_alias_into_fresh_tensor, lambda: [_r(3, 4)], {"pre_dispatch": True}),
    ("foreach_add_over_aliased_elements", foreach_add_over_aliased_elements, lambda: [_r(3, 3)], {}),
    ("foreach_add_over_grad_and_non_grad_tensors", foreach_add_over_grad_and_non_grad_tensors, lambda: [_leaf(4, 1, 3), _r(8).double()], {}),
    ("normal_after_write_to_transposed_input", normal_after_write_to_transposed_input, lambda: [_r(3, 3).mT], {}),
    ("copy_under_no_grad_into_fresh_tensor", copy_under_no_grad_into_fresh_tensor, lambda: [_leaf(4, 6) * 1], {"pre_dispatch": True}),
    ("random_after_write_to_gapped_input", random_after_write_to_gapped_input, lambda: [_r(4, 3, 4)[::2]], {}),
    ("uniform_after_write_to_transposed_input", uniform_after_write_to_transposed_input, lambda: [_r(3, 4, 5).mT], {}),
    ("as_strided_metadata_mutation_then_fill_of_non_leaf_input", as_strided_metadata_mutation_then_fill_of_non_leaf_input, lambda: [_leaf(2, 3, 4) * 1], {}),
    ("as_strided_metadata_mutation_of_aliased_input", as_strided_metadata_mutation_of_aliased_input, _aliased_pair, {}),
    ("read_non_leaf_input_twice_after_unsqueeze_", read_non_leaf_input_twice_after_unsqueeze_, lambda: [_leaf(6) * 1], {}),
    ("as_strided_write_into_intermediate_requiring_grad", as_strided_write_into_intermediate_requiring_grad, lambda: [_leaf(3, 3)], {}),
    ("no_grad_write_through_contiguous_identity_then_grad_write", no_grad_write_through_contiguous_identity_then_grad_write, lambda: [_leaf(6) * 1], {"pre_dispatch": True}),
    ("int_input_written_from_value_requiring_grad", int_input_written_from_value_requiring_grad, lambda: [torch.arange(8), _leaf(4, 6) * 1], {}),
    ("metadata_mutation_after_self_copy_of_input", metadata_mutation_after_self_copy_of_input, lambda: [_r(5, 5).mT], {"pre_dispatch": True}),
    ("write_into_slice_of_expanded_input", write_into_slice_of_expanded_input, lambda: [_r(5, 5)], {}),
    ("as_strided_fill_of_non_leaf_input", as_strided_fill_of_non_leaf_input, lambda: [_leaf(4, 1, 3) * 1], {}),
    ("write_through_detached_alias_with_grad_operands", write_through_detached_alias_with_grad_operands, lambda: [_leaf(3, 4, 5)],
     {"fn_oop": write_through_detached_alias_with_grad_operands_oop}),
    ("as_strided_read_after_write_to_transposed_input", as_strided_read_after_write_to_transposed_input, lambda: [_r(3, 3).mT], {}),
    ("as_strided_write_into_transposed_input", as_strided_write_into_transposed_input, lambda: [_leaf(3, 3).mT * 1], {}),
    ("fill_diagonal_wrapping_tall_matrix", fill_diagonal_wrapping_tall_matrix, lambda: [_leaf(9, 3) * 1], {}),
    ("fill_diagonal_of_transposed_cube_view", fill_diagonal_of_transposed_cube_view, lambda: [_leaf(3, 3, 3) * 1], {}),
    ("no_grad_foreach_over_aliased_list", no_grad_foreach_over_aliased_list, lambda: [_leaf(6) * 1], {"pre_dispatch": True}),
    ("write_through_detached_alias_of_intermediate", write_through_detached_alias_of_intermediate, lambda: [_leaf(3, 4, 5)], {}),
    ("partial_write_through_view_of_detached_input", partial_write_through_view_of_detached_input, lambda: [_leaf(6) * 1], {}),
    ("metadata_mutation_through_flatten_of_1d_input", metadata_mutation_through_flatten_of_1d_input, lambda: [_r(12)[::2]], {"pre_dispatch": True}),
    # name, fn, inputs factory, options
    ("bernoulli_on_transposed_input", bernoulli_on_transposed_input, lambda: [_r(3, 3).mT], {}),
    ("dropout_inplace_on_transposed", dropout_inplace_on_transposed, lambda: [_r(4, 6)], {}),
    ("normal_on_strided_input", normal_on_strided_input, lambda: [_r(8, 6)[::2]], {}),
    ("out_into_fresh_float32_from_float64", out_into_fresh_float32_from_float64, lambda: [_r(4, 3).double()], {}),
    ("as_strided_read_after_write_to_strided_input", as_strided_read_after_write_to_strided_input, lambda: [_r(6, 3)[::2]], {}),
    ("as_strided_write_after_write_to_strided_input", as_strided_write_after_write_to_strided_input, lambda: [_r(10, 5)[::2]], {}),
    ("no_grad_write_through_view_then_grad_write", no_grad_write_through_view_then_grad_write, lambda: [_leaf(6) * 1], {"pre_dispatch": True}),
    ("write_through_detach_keeps_history", write_through_detach_keeps_history, lambda: [_leaf(4) * 1], {}),
    ("copy_of_constant_into_tensor_requiring_grad", copy_of_constant_into_tensor_requiring_grad, lambda: [_leaf(3) * 1, _r(3)], {}),
    ("setitem_then_no_grad_add", setitem_then_no_grad_add, lambda: [_leaf(8) * 1], {"pre_dispatch": True}),
    ("no_grad_leaf_write_and_grad_nonleaf_write", no_grad_leaf_write_and_grad_nonleaf_write, lambda: [_leaf(5, 5) * 1, _leaf(8)], {"pre_dispatch": True}),
    ("out_under_no_grad_on_tensor_requiring_grad", out_under_no_grad_on_tensor_requiring_grad, lambda: [_leaf(3, 4)], {"pre_dispatch": True}),
]



_BUGS: dict[str, str] = {}   # name -> the core bug a case still shows (strict xfail)
_XFAIL: dict[tuple[str, bool], str] = {(n, ex): r for n, r in _BUGS.items() for ex in (False, True)}


def _params():
    for name, fn, mk, opts in _CASES:
        for ex in (False, True):
            marks = ()
            if (name, ex) in _XFAIL:
                marks = pytest.mark.xfail(strict=True, reason=_XFAIL[(name, ex)])
            yield pytest.param(fn, mk, opts, ex, id=f"{name}-{'with' if ex else 'no'}-inputs",
                               marks=marks)


@pytest.mark.parametrize("fn,make_inputs,opts,with_inputs", list(_params()))
def test_fuzzer_regressions(fn, make_inputs, opts, with_inputs):
    from fxpurify.fuzz.runner import check_functions
    out = check_functions(make_inputs, fn, with_example_inputs=with_inputs, **opts)
    assert out.kind in ("ok", "refused"), f"{out.kind}: {out.detail}"


def test_reducer_drops_unused_inputs():
    def picky(gm, example_inputs=None):
        if any(n.target is torch.ops.aten.sin_.default for n in gm.graph.nodes):
            raise ValueError("sin_ bug")
        return gm
    p = _prog([("inplace", "x1.sin_()", "x1.copy_(x1.clone().sin_())", [])], ["x1"],
              inputs=["x0 = torch.randn((4, 6), generator=g)", "b1 = torch.randn(5, 6, generator=g)",
                      "x1 = b1[0]", "x2 = torch.randn((3,), generator=g)"],
              names=["x0", "x1", "x2"])
    chk = lambda q: check_program(q, purify=picky, check_pure=None)  # noqa: E731
    small = reduce_program(p, chk(p), chk)
    assert small.input_names == ["x1"]
    assert small.inputs == ["b1 = torch.randn(5, 6, generator=g)", "x1 = b1[0]"]


def test_upstream_as_strided_scatter_gradient_is_wrong_in_this_torch():
    """Why writes through as_strided get wrong gradients: torch's own formula. The day this
    fails, torch fixed it and the two as_strided regressions above should pass."""
    x = torch.randn(9, requires_grad=True)
    y = torch.as_strided_scatter(x, torch.zeros(2, 2), (2, 2), (3, 1), 0)
    (y * torch.arange(9.0)).sum().backward()
    expected = torch.arange(9.0) * torch.tensor([0, 0, 1, 0, 0, 1, 1, 1, 1.0])
    if torch.__version__.startswith("2.13"):
        assert not torch.equal(x.grad, expected)  # still broken upstream
    else:
        pytest.skip("checked on torch 2.13 only")
