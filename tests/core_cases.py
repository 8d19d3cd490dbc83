"""Programs with in-place ops, one per coverage item of the core pass (issue 2, item 3).

Each case is ``(name, fn, make_inputs)``; ``make_inputs()`` returns fresh, seeded inputs. The
tests trace each program with its mutations kept, purify it and compare against eager with the
differential oracle (outputs, final input state, gradients, output aliasing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CASES = []


def case(*make_inputs_args, name=None):
    def register(fn):
        def make_inputs():
            g = torch.Generator().manual_seed(0)
            return [a(g) if callable(a) else a for a in make_inputs_args]
        CASES.append((name or fn.__name__, fn, make_inputs))
        return fn
    return register


def randn(*shape, grad=False, dtype=torch.float32):
    def make(g):
        t = torch.randn(*shape, generator=g, dtype=dtype)
        return t.requires_grad_() if grad else t
    return make


def randint(high, *shape):
    return lambda g: torch.randint(0, high, shape, generator=g)


# --- in-place variants --------------------------------------------------------------------
@case(randn(4, 3), randn(4, 3))
def arithmetic_chain(x, y):
    a = x.clone()
    a.add_(y, alpha=2).mul_(y).sub_(1).div_(3)
    a.relu_().clamp_(0.1, 2.0)
    a.addcmul_(x, y, value=0.5).lerp_(y, 0.25)
    return a


@case(randn(4, grad=True))
def sigmoid_then_mul_inplace(x):
    # eager autograd rejects this ("modified by an inplace operation"); purified it is fine
    y = x.sigmoid()
    y.mul_(2)
    return y


@case(randn(4, dtype=torch.float16), randn(4))
def type_promotion_cast_back(x, y):
    x.add_(y)   # computed in float32, stored as float16
    return x


@case(randn(4, 3), randn(3))
def out_overloads(x, y):
    z = torch.empty(4, 3)
    torch.add(x, y, out=z)
    w = torch.empty(0)
    torch.mm(x, y.unsqueeze(1), out=w)   # out= resizes a fresh tensor
    values, indices = torch.empty(4), torch.empty(4, dtype=torch.long)
    torch.max(x, 1, out=(values, indices))
    return z, w, values, indices


@case(randn(3, 4), randn(4))
def copy_broadcast_and_dtype(x, y):
    a = torch.zeros(3, 4, dtype=torch.float64)
    a.copy_(y)               # broadcast + dtype conversion
    x[1].copy_(y)            # into a view of an input
    return a


@case(randn(5, 3))
def fill_and_zero(x):
    x[0].fill_(2.0)
    x[:, 1].zero_()
    return x.sum()


@case(randn(6, 3), randint(6, 4), randn(4, 3))
def index_family(x, idx, v):
    a = x.clone()
    a.index_put_((idx,), v, accumulate=True)
    b = x.clone()
    b.index_copy_(0, torch.tensor([0, 2]), v[:2])
    b.index_fill_(1, torch.tensor([1]), -1.0)
    b.masked_fill_(b > 1, 0.0)
    c = torch.zeros(6, 3)
    c.scatter_(0, idx[:3].unsqueeze(1).expand(3, 3), v[:3])
    c.scatter_add_(0, idx[:3].unsqueeze(1).expand(3, 3), v[:3])
    return a, b, c


# --- mutation through views ----------------------------------------------------------------
@case(randn(4, 6))
def several_live_aliases(x):
    a = x.clone()
    row = a[1]
    col = a[:, 2]
    flat = a.view(-1)
    tr = a.t()
    row.add_(1)          # every alias must see it
    col.mul_(2)
    flat[::5].fill_(7)
    return a, row, col, flat.sum(), tr[2]


@case(randn(6, 6))
def view_chain(x):
    a = x.clone()
    v = a[1:5].transpose(0, 1)[::2].select(1, 2).unsqueeze(0)
    v.mul_(10)
    return a, v


@case(randn(3, 4, 5))
def permute_squeeze_diagonal(x):
    a = x.clone().unsqueeze(0)
    p = a.permute(0, 3, 1, 2).squeeze(0)
    p[1].add_(1)
    d = a[0, 0].diagonal()
    d.zero_()
    return a


@case(randn(4, 4))
def narrow_and_as_strided(x):
    a = x.clone()
    a.narrow(1, 1, 2).add_(1)
    s = a.as_strided((2, 2), (4, 1), 1)
    s.mul_(3)
    return a


@case(randn(8, 3))
def split_chunk_unbind(x):
    a = x.clone()
    s = a.split(3)
    s[1].add_(1)
    c = a.chunk(2, dim=1)
    c[0].mul_(2)
    u = a.unbind(1)
    u[2].zero_()
    w = a.split_with_sizes([2, 6])
    w[0].fill_(5)
    return a, s[2], u[1]


@case(randn(10))
def unfold_gapped_write(x):
    a = x.clone()
    w = a.unfold(0, 2, 3)    # windows [0,1], [3,4], [6,7]: gaps in between
    w.add_(100)
    return a, w


@case(randn(3, 1))
def expand_read(x):
    a = x.clone()
    e = a.expand(3, 4)
    a.add_(1)               # the expanded view must see it
    return e * 2


@case(randn(3, 3))
def alias_and_detach(x):
    a = x.clone()
    d = a.detach()
    d.add_(1)
    return a


@case(randn(4, 4))
def repeated_writes_one_view(x):
    a = x.clone()
    v = a[1:3]
    v.add_(1)
    v.mul_(2)
    v.sub_(3)              # three in-place ops on one view: one scatter
    return a


@case(randn(4, 3))
def setitem_pattern(x):
    x[1] += 1              # select + add_ + select + copy_ of a value onto itself
    x[:, 0] *= 2
    return x


# --- inputs --------------------------------------------------------------------------------
@case(randn(4, 3), randn(4, 3))
def input_mutation_and_view_return(x, y):
    x.add_(y)
    v = x[1:3]
    v.mul_(2)
    return v, y.t()        # outputs alias inputs


@case(randn(3, 4))
def input_swap(x):
    tmp = x.clone()
    x[0].copy_(x[1])
    x[1].copy_(tmp[0])
    return x


@case(randn(4), randn(4))
def copy_between_inputs(a, b):
    a.copy_(b)             # a's new value *is* b's old value
    b.add_(1)              # ... which changes afterwards
    return a + 0


# --- metadata mutations --------------------------------------------------------------------
@case(randn(3, 4))
def metadata_on_intermediates(x):
    a = x.clone()
    a.t_()
    a.unsqueeze_(0)
    a.squeeze_(0)
    a[0].add_(1)
    a.resize_(4, 3)        # same size: no-op
    return a


@case(randn(3, 4))
def metadata_on_input(x):
    x.transpose_(0, 1)
    x[0].mul_(2)
    return x


@case(randn(2, 6))
def as_strided_inplace_on_intermediate(x):
    a = x.clone()
    a.as_strided_((3, 4), (4, 1))
    a.add_(1)
    return a


# --- random --------------------------------------------------------------------------------
@case(randn(4, 5))
def random_inplace(x):
    a = torch.empty(4, 5)
    a.uniform_(-1, 1)
    b = x.clone()
    b.normal_(0, 2)
    c = torch.empty(4, 5)
    c.bernoulli_(0.3)
    d = torch.empty(4, 5).exponential_()
    e = F.dropout(x.clone(), p=0.5, training=True, inplace=True)
    return a, b, c, d, e


# --- autograd ------------------------------------------------------------------------------
@case(randn(3, 3, grad=True), randn(3))
def no_grad_write_to_leaf(w, g):
    with torch.no_grad():
        w.mul_(0.9).add_(g)   # an optimizer-style update of a leaf that requires grad
    return w * 1


@case(randn(4, grad=True), randn(4, grad=True))
def grads_through_inplace_on_intermediate(x, y):
    a = x * 2
    a[1:3].mul_(y[1:3])
    a.add_(y)
    return a.sum()
