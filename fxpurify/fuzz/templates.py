"""Statement templates of the fuzzer: one function per kind of statement.

Part of the fuzzer's front end (``generate`` grows programs from these). Each template looks at
the live tensors of the program grown so far (real tensors, so shapes, dtypes, strides and
``requires_grad`` are known exactly) and returns ``(kind, src, oop, defines, family)`` or
``None``: the statement in its in-place form, its out-of-place twin (see ``generate``), the
names it defines and a family label used for coverage counts. Templates may produce statements
eager rejects; the driver executes each one and drops those.
"""
from __future__ import annotations

import random
from typing import Callable

import torch

from . import customops  # noqa: F401  (registers fxpurify_fuzz::axpy_ for exec'd programs)
from .shapes import random_shape as _shape

__all__ = ["TEMPLATES", "Ctx"]


class Ctx:
    def __init__(self, rng: random.Random, env: dict, counter: list[int]):
        self.rng = rng
        self.env = env
        self.counter = counter

    def tensors(self, pred: Callable[[torch.Tensor], bool] = lambda t: True) -> list[str]:
        return [k for k, v in self.env.items()
                if isinstance(v, torch.Tensor) and k[0] in "xt" and pred(v)]

    def pick(self, pred=lambda t: True) -> str | None:
        names = self.tensors(pred)
        if not names:
            return None
        # Prefer recent names and inputs: mutations through fresh views of inputs matter most.
        weights = [3.0 if n.startswith("x") else 1.0 + i / max(1, len(names)) for i, n in
                   enumerate(names)]
        return self.rng.choices(names, weights)[0]

    def new(self) -> str:
        self.counter[0] += 1
        return f"t{self.counter[0]}"

    def t(self, name: str) -> torch.Tensor:
        return self.env[name]


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def _other(c: Ctx, v: str, *, float_only: bool = True) -> str:
    """An operand for ``v``: a live tensor of a broadcastable shape, else a scalar-ish one."""
    tv = c.t(v)
    cands = c.tensors(lambda t: (_is_float(t) or not float_only) and t.dim() <= tv.dim() and
                      all(a in (1, b) for a, b in zip(reversed(t.shape), reversed(tv.shape))))
    r = c.rng.random()
    if cands and r < 0.75:
        return c.rng.choice(cands)
    if r < 0.9:
        o = c.pick(_is_float)
        if o is not None:
            return f"{o}.sum()"
    return "torch.tensor(0.25)"


def _clone_args(template: str, names: dict[str, str]) -> str:
    return template.format(**{k: f"{v}.clone()" for k, v in names.items()})


def _dims(c: Ctx, v: str) -> int:
    return c.t(v).dim()


def t_view(c: Ctx):
    v = c.pick(lambda t: t.dim() >= 1)
    if v is None:
        return None
    tv = c.t(v)
    rng, nd = c.rng, tv.dim()
    d = rng.randrange(nd)
    n = tv.shape[d]
    new = c.new()
    choice = rng.choice(["slice", "slice", "select", "diagonal", "transpose", "permute", "t",
                         "view", "reshape", "flatten", "unsqueeze", "squeeze", "split", "chunk",
                         "unbind", "as_strided", "unfold", "expand", "detach", "alias", "narrow",
                         "index_none"])
    pre = ":, " * d
    if choice == "slice":
        if n == 0:
            return None
        start = rng.randrange(n)
        stop = rng.randrange(start + 1, n + 1)
        step = rng.choice([1, 1, 2, 3])
        expr = f"{v}[{pre}{start}:{stop}:{step}]" if rng.random() < 0.8 else f"{v}[{pre}{start}:]"
    elif choice == "narrow":
        if n == 0:
            return None
        start = rng.randrange(n)
        expr = f"{v}.narrow({d}, {start}, {rng.randrange(1, n - start + 1)})"
    elif choice == "select":
        if n == 0:
            return None
        expr = f"{v}.select({d}, {rng.randrange(-n, n)})" if d else f"{v}[{rng.randrange(n)}]"
    elif choice == "diagonal":
        if nd < 2:
            return None
        d1, d2 = rng.sample(range(nd), 2)
        expr = f"{v}.diagonal({rng.choice([0, 0, 1, -1])}, {d1}, {d2})"
    elif choice == "transpose":
        if nd < 2:
            return None
        d1, d2 = rng.sample(range(nd), 2)
        expr = f"{v}.transpose({d1}, {d2})"
    elif choice == "permute":
        perm = list(range(nd))
        rng.shuffle(perm)
        expr = f"{v}.permute({', '.join(map(str, perm))})"
    elif choice == "t":
        expr = f"{v}.t()" if nd <= 2 else f"{v}.mT"
    elif choice in ("view", "reshape"):
        numel = tv.numel()
        divs = [k for k in range(1, numel + 1) if numel % k == 0]
        k = rng.choice(divs)
        shape = rng.choice([(-1,), (k, -1), (-1, k), (1, -1)] + [tuple(tv.shape) + (1,)])
        expr = f"{v}.{choice}({', '.join(map(str, shape))})"
    elif choice == "flatten":
        expr = f"{v}.flatten()"
    elif choice == "unsqueeze":
        expr = f"{v}.unsqueeze({rng.randrange(-nd - 1, nd + 1)})"
    elif choice == "squeeze":
        expr = f"{v}.squeeze({d})" if rng.random() < 0.5 else f"{v}.squeeze()"
    elif choice in ("split", "chunk", "unbind"):
        # Multi-output views. Their out-of-place twin uses single-output views (narrow/select)
        # of the same memory: autograd forbids using a split/unbind output after its base was
        # written in place, even in backward of the out-of-place program.
        if n < 2:
            return None
        if choice == "unbind" and n <= 4:
            outs = [c.new() for _ in range(n)]
            src = f"{', '.join(outs)} = {v}.unbind({d})"
            oop = "\n".join(f"{o} = {v}.select({d}, {k})" for k, o in enumerate(outs))
            return ("view", src, oop, tuple(outs), "multi_view")
        if choice == "split":
            k = rng.randrange(1, n)
            outs = [c.new(), c.new()]
            src = f"{outs[0]}, {outs[1]} = {v}.split([{k}, {n - k}], {d})"
            oop = f"{outs[0]} = {v}.narrow({d}, 0, {k})\n{outs[1]} = {v}.narrow({d}, {k}, {n - k})"
            return ("view", src, oop, tuple(outs), "multi_view")
        chunks = min(n, rng.choice([2, 3]))
        sizes = [len(p) for p in torch.empty(n).chunk(chunks)]
        i = rng.randrange(len(sizes))
        src = f"{new} = {v}.chunk({chunks}, {d})[{i}]"
        oop = f"{new} = {v}.narrow({d}, {sum(sizes[:i])}, {sizes[i]})"
        return ("view", src, oop, (new,), "multi_view")
    elif choice == "as_strided":
        base_numel = tv.untyped_storage().nbytes() // max(1, tv.element_size())
        if base_numel < 2:
            return None
        size = (rng.randint(1, 3), rng.randint(1, 3))
        stride = (rng.choice([1, 2, 3, size[1], size[1] * 2]), rng.choice([1, 1, 2]))
        max_off = base_numel - 1 - (size[0] - 1) * stride[0] - (size[1] - 1) * stride[1]
        if max_off < 0:
            return None
        expr = f"{v}.as_strided({size}, {stride}, {rng.randint(0, max_off)})"
    elif choice == "unfold":
        if n < 2:
            return None
        size = rng.randint(1, n)
        expr = f"{v}.unfold({d}, {size}, {rng.randint(1, 3)})"
    elif choice == "expand":
        expr = f"{v}.unsqueeze(0).expand(2, {', '.join(['-1'] * nd)})"
    elif choice == "detach":
        expr = f"{v}.detach()"
    elif choice == "alias":
        expr = f"{v}.view_as({v})"
    else:
        expr = f"{v}[..., None]" if rng.random() < 0.5 else f"{v}[None]"
    src = f"{new} = {expr}"
    return ("view", src, src, (new,), "view")


_UNARY = ["{a}.sin()", "{a}.tanh()", "{a}.sigmoid()", "{a} * 2", "{a}.relu()", "{a}.abs()",
          "-{a}", "{a}.clamp(-1, 1)", "{a}.clone()", "{a}.exp()",
          "{a} * {a}", "{a}.cumsum(0)", "{a}.sum(0)", "{a}.mean()", "{a}.softmax(-1)",
          "{a}.flip(0)"]
# Ops that return their input itself or a view of it when they can, and a copy otherwise: in
# the out-of-place twin they must stay as they are (a clone would break the aliasing).
_MAYBE_ALIAS = ["{a}.contiguous()", "{a}.to(torch.float64)", "{a}.reshape(-1)",
                "{a}.t().contiguous()"]
_BINARY = ["{a} + {b}", "{a} * {b}", "{a} - 2 * {b}", "torch.where({a} > 0, {a}, {b})",
           "torch.maximum({a}, {b})", "{a} / (1 + {b}.abs())", "torch.add({a}, {b}, alpha=0.5)"]


def t_compute(c: Ctx):
    a = c.pick(_is_float)
    if a is None:
        return None
    new = c.new()
    if c.rng.random() < 0.15:
        src = f"{new} = {c.rng.choice(_MAYBE_ALIAS).format(a=a)}"
        return ("view", src, src, (new,), "maybe_alias")
    if c.rng.random() < 0.5:
        tmpl, names = c.rng.choice(_UNARY), {"a": a}
    else:
        tmpl, names = c.rng.choice(_BINARY), {"a": a, "b": _other(c, a)}
        if "(" in names["b"] or names["b"].startswith("torch"):
            tmpl = tmpl.replace("{b}", names.pop("b"))
    src = f"{new} = {tmpl.format(**names)}"
    oop = f"{new} = ({_clone_args(tmpl, names)}).clone()"
    return ("compute", src, oop, (new,), "compute")


def t_create(c: Ctx):
    rng = c.rng
    shp = _shape(rng)
    new = c.new()
    a = c.pick(_is_float)
    choices = [f"torch.zeros({shp})", f"torch.ones({shp})", f"torch.full({shp}, 0.5)",
               f"torch.arange({int(torch.Size(shp).numel())}, dtype=torch.float32)"
               f".reshape({shp}) * 0.1",
               f"torch.rand({shp})", f"torch.randn({shp})", f"torch.empty({shp}).fill_(1.5)"]
    if a is not None:
        choices += [f"torch.zeros_like({a})", f"torch.randn_like({a})", f"{a}.new_ones({shp})"]
    expr = rng.choice(choices)
    src = f"{new} = {expr}"
    return ("create", src, src, (new,), "create")


def _index_list(rng: random.Random, n: int) -> list[int]:
    k = rng.randint(1, max(1, min(3, n)))
    return sorted(rng.sample(range(n), k)) if rng.random() < 0.7 else rng.sample(range(n), k)


def t_inplace(c: Ctx, *, target: str | None = None):
    """An in-place op of a random family on a live tensor (often a view of an input)."""
    rng = c.rng
    v = target or c.pick()
    if v is None:
        return None
    tv = c.t(v)
    fl = _is_float(tv)
    family = rng.choice(["arith", "arith", "arith", "arith", "copy", "fill", "index", "index",
                         "out", "random", "setitem", "custom", "foreach"])
    names: dict[str, str] = {}
    special_oop = None
    if family == "arith":
        o = _other(c, v, float_only=fl)
        opts = ["add_({o})", "sub_({o}, alpha=0.5)", "mul_({o})", "addcmul_({o}, {o2}, value=0.5)"]
        if fl:
            opts += ["mul_(0.5)", "div_(2.0)", "clamp_(-1.0, 1.0)", "relu_()", "sin_()",
                     "tanh_()", "sigmoid_()", "neg_()", "abs_()", "lerp_({o}, 0.3)", "pow_(2)",
                     "exp_()", "clamp_(min=0.1)", "add_(1.0)",
                     # rarer overloads: schema lookups the common ones do not exercise
                     "tril_()", "triu_(1)", "addcdiv_({o}, {o2}.abs() + 1, value=0.5)",
                     "copysign_({o})", "hypot_({o})", "clamp_(min={o})", "lerp_({o}, {o2})",
                     "cumsum_(0)", "fill_diagonal_(0.5)", "erf_()",
                     "true_divide_(2.0)", "nan_to_num_(0.0)"]
        else:
            opts += ["add_(1)", "mul_(2)", "neg_()", "clamp_(-2, 2)", "abs_()",
                     "bitwise_and_(3)", "floor_divide_(2)", "remainder_(3)"]
        call = rng.choice(opts)
        names = {"o": o, "o2": _other(c, v, float_only=fl)}
        r = rng.random()
        if not fl and r < 0.3:
            # in-place dunders: their pure form is not found by the naming rule (bitwise_and)
            op = rng.choice(["&=", "|=", "^="])
            meth = {"&=": "bitwise_and_", "|=": "bitwise_or_", "^=": "bitwise_xor_"}[op]
            return ("inplace", f"{v} {op} 3", f"{v}.copy_({v}.clone().{meth}(3))", (), family)
        if r < 0.12 and "{o}" in call and call.startswith(("add_", "mul_", "sub_")):
            op = {"add_": "+=", "mul_": "*=", "sub_": "-="}[call[:4]]
            src = f"{v} {op} {{o}}"
            special_oop = f"{v}.copy_({v}.clone().{call.split('(')[0]}({{o}}))"
            names = {"o": o}
        elif r < 0.2 and call in ("relu_()", "sin_()", "sigmoid_()", "tanh_()"):
            src = f"torch.{call[:-2]}({v})"
            special_oop = f"{v}.copy_(torch.{call[:-2]}({v}.clone()))"
        else:
            src = f"{v}.{call}"
    elif family == "copy":
        o = _other(c, v, float_only=False)
        conv = rng.choice(["", "", ".double()", ".to(torch.int64)", ".float()"])
        src = f"{v}.copy_({{o}}{conv})"
        names = {"o": o}
    elif family == "fill":
        src = rng.choice([f"{v}.fill_({rng.choice([0.5, -1.0, 2.0]) if fl else 3})",
                          f"{v}.zero_()", f"{v}[...] = {0.25 if fl else 1}"])
        special_oop = src
    elif family == "setitem":
        if tv.dim() == 0 or tv.shape[0] == 0:
            return None
        n = tv.shape[0]
        i = rng.randrange(n)
        sl = rng.choice([f"{i}", f"{i}:", f"::2", f"{i}:{i + 1}"])
        r = rng.random()
        if r < 0.4:
            src = f"{v}[{sl}] += {1.0 if fl else 1}"
            special_oop = f"{v}[{sl}] = {v}[{sl}].clone().add_({1.0 if fl else 1})"
        elif r < 0.7:
            o = _other(c, v, float_only=fl)
            names = {"o": o}
            src = f"{v}[{sl}] = {{o}}"
            special_oop = None  # generic: clone the value
        else:
            src = f"{v}[{sl}] = {0.75 if fl else 2}"
            special_oop = src
        if special_oop is None:
            special_oop = f"{v}[{sl}] = {{o}}"
            return ("inplace", src.format(o=o), special_oop.format(o=f"{o}.clone()"), (),
                    family)
    elif family == "index":
        if tv.dim() == 0 or tv.numel() == 0:
            return None
        d = rng.randrange(tv.dim())
        n = tv.shape[d]
        idx = _index_list(rng, n)
        shp = list(tv.shape)
        shp[d] = len(idx)
        val = "1.5" if fl else "2"
        kind = rng.choice(["index_put", "index_put_acc", "index_copy", "index_fill",
                           "masked_fill", "masked_fill_self", "scatter", "scatter_add",
                           "setitem_idx", "index_add", "masked_scatter", "put"])
        it = f"torch.tensor({idx})"
        o = c.pick(lambda t: _is_float(t) == fl)
        src_t = f"torch.ones({tuple(shp)}{'' if fl else ', dtype=torch.int64'})"
        if o is not None and fl and rng.random() < 0.6:
            src_t = f"({src_t} * {{o}}.sum())"
            names = {"o": o}
        if kind == "index_put":
            src = f"{v}.index_put_(({it},), torch.tensor({val}))" if d == 0 else None
        elif kind == "index_put_acc":
            src = (f"{v}.index_put_(({it},), torch.tensor({val}), accumulate=True)"
                   if d == 0 else None)
        elif kind == "setitem_idx":
            src = f"{v}[{':, ' * d}{it}] = {val}"
            special_oop = src
        elif kind == "index_copy":
            src = f"{v}.index_copy_({d}, {it}, {src_t})"
        elif kind == "index_add":
            src = f"{v}.index_add_({d}, {it}, {src_t})"
        elif kind == "masked_scatter":
            src = f"{v}.masked_scatter_({v} < 0, torch.full({tuple(tv.shape)}, {val}))"
            special_oop = f"{v}.copy_({v}.clone().masked_scatter_({v}.clone() < 0, " \
                          f"torch.full({tuple(tv.shape)}, {val})))"
        elif kind == "put":
            flat = sorted(rng.sample(range(tv.numel()), min(2, tv.numel())))
            vals = [1.5, -1.5][:len(flat)] if fl else [1, 2][:len(flat)]
            src = f"{v}.put_(torch.tensor({flat}), torch.tensor({vals}))"
        elif kind == "index_fill":
            src = f"{v}.index_fill_({d}, {it}, {val})"
        elif kind == "masked_fill":
            o = _other(c, v)
            names = {"o": o}
            src = f"{v}.masked_fill_({{o}} > 0, {val})"
        elif kind == "masked_fill_self":
            src = f"{v}.masked_fill_({v} > 0.5, {val})"
            special_oop = f"{v}.copy_({v}.clone().masked_fill_({v}.clone() > 0.5, {val}))"
        else:
            # one distinct target row per column: scatter_ is deterministic only then
            perm = list(range(n))
            rng.shuffle(perm)
            ishape = list(tv.shape)
            ishape[d] = len(idx)
            index = torch.tensor(perm[:len(idx)]).reshape(
                [len(idx) if k == d else 1 for k in range(tv.dim())]).expand(ishape)
            it2 = f"torch.tensor({index.tolist()})"
            op = "scatter_" if kind == "scatter" else "scatter_add_"
            src = f"{v}.{op}({d}, {it2}, {src_t})"
        if src is None:
            return None
    elif family == "out":
        same = c.tensors(lambda t: t.shape == tv.shape and t.dtype == tv.dtype)
        a = rng.choice(same) if same else v
        names = {"a": a}
        fn = rng.choice(["torch.sin({a}", "torch.add({a}, 1", "torch.mul({a}, {a}",
                         "torch.clamp({a}, -0.5, 0.5"] if fl else
                        ["torch.add({a}, 1", "torch.mul({a}, 2", "torch.neg({a}"])
        if rng.random() < 0.2:  # out= into a fresh tensor that must be resized: rebind
            new = c.new()
            src = f"{new} = torch.empty(0{'' if fl else ', dtype=torch.int64'})\n" \
                  f"{fn}, out={new})"
            oop = f"{new} = ({_clone_args(fn, names)})).clone()"
            return ("inplace", src.format(**names), oop, (new,), "out")
        src = f"{fn}, out={v})"
        special_oop = f"{v}.copy_({_clone_args(fn, names)}))"
        return ("inplace", src.format(**names), special_oop, (), "out")
    elif family == "foreach":
        # _foreach_*_: one write per list element
        o = c.pick(lambda t: t is not tv and _is_float(t) == fl)
        if o is None or o == v:
            return None
        op, arg = rng.choice([("add_", "1.0" if fl else "1"), ("mul_", "2.0" if fl else "2")])
        src = f"torch._foreach_{op}([{v}, {o}], {arg})"
        oop = f"{v}.copy_({v}.clone().{op}({arg}))\n{o}.copy_({o}.clone().{op}({arg}))"
        return ("inplace", src, oop, (), "foreach")
    elif family == "custom":
        # a custom op with mutates_args: auto-functionalized by the pass (no autograd, see
        # customops.py, so only on tensors that do not require grad)
        o = _other(c, v)
        if not fl or tv.dtype != torch.float32 or tv.requires_grad or \
                (o in c.env and c.t(o).requires_grad) or "(" in o:
            return None
        src = f"torch.ops.fxpurify_fuzz.axpy_({v}, {o}, 0.5)"
        return ("inplace", src, f"{v}.copy_({v}.clone().add_({o}.clone(), alpha=0.5))", (),
                "custom")
    elif family == "random":
        if not fl:
            return None
        src = rng.choice([f"{v}.uniform_()", f"{v}.normal_()", f"{v}.bernoulli_(0.5)",
                          f"{v}.exponential_()", f"F.dropout({v}, 0.5, True, inplace=True)",
                          f"{v}.uniform_(-2, 2)"])
        special_oop = f"{v}.copy_({v}.clone().{src.split('.', 1)[1]})" if src.startswith(v) \
            else f"{v}.copy_(F.dropout({v}.clone(), 0.5, True, inplace=True))"
    else:
        return None
    if special_oop is None:
        # generic: v.op_(args) -> v.copy_(v.clone().op_(cloned args))
        call = src[len(v) + 1:]
        special_oop = f"{v}.copy_({v}.clone().{_clone_args(call, names)})"
        return ("inplace", src.format(**names), special_oop, (), family)
    return ("inplace", src.format(**names), _clone_args(special_oop, names), (), family)


def t_meta(c: Ctx):
    v = c.pick()
    if v is None:
        return None
    tv = c.t(v)
    rng, nd = c.rng, tv.dim()
    opts = [f"{v}.unsqueeze_({rng.randrange(-nd - 1, nd + 1)})"]
    if nd >= 2:
        d1, d2 = rng.sample(range(nd), 2)
        opts.append(f"{v}.transpose_({d1}, {d2})")
    if nd <= 2:
        opts.append(f"{v}.t_()")
    if 1 in tv.shape:
        opts.append(f"{v}.squeeze_({list(tv.shape).index(1)})")
    if tv.is_contiguous() and nd >= 1:
        opts.append(f"{v}.as_strided_({tuple(tv.shape[::-1])}, "
                    f"{tuple(torch.empty(tuple(tv.shape[::-1])).stride())}, "
                    f"{tv.storage_offset()})")
        opts.append(f"{v}.resize_({tuple(tv.shape)})")
    src = rng.choice(opts)
    return ("meta", src, src, (), "meta")


def t_nograd(c: Ctx):
    # Prefer leaves that require grad: under no_grad is the only way they may be written.
    v = c.pick(lambda t: t.requires_grad and t.is_leaf) if c.rng.random() < 0.6 else None
    r = t_inplace(c, target=v)
    if r is None:
        return None
    kind, src, oop, defines, family = r
    ind = lambda s: "\n".join("    " + ln for ln in s.splitlines())  # noqa: E731
    return ("nograd", f"with torch.no_grad():\n{ind(src)}",
            f"with torch.no_grad():\n{ind(oop)}", defines, f"nograd_{family}")


def t_read(c: Ctx):
    """An out-of-place read of two live tensors (often two aliases of one base)."""
    a = c.pick(_is_float)
    if a is None:
        return None
    b = _other(c, a)
    new = c.new()
    tmpl = c.rng.choice(["{a} + {b}", "{a} * {b}", "({a} - {b}).sum()", "{a}.sum() + {b}.sum()"])
    names = {"a": a} if "(" in b or b.startswith("torch") else {"a": a, "b": b}
    if "b" not in names:
        tmpl = tmpl.replace("{b}", b)
    return ("compute", f"{new} = {tmpl.format(**names)}",
            f"{new} = ({_clone_args(tmpl, names)}).clone()", (new,), "read")


TEMPLATES = [(t_view, 28), (t_inplace, 34), (t_compute, 10), (t_read, 8), (t_create, 6),
              (t_meta, 5), (t_nograd, 6)]


