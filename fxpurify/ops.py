"""Analysis: what an ATen op does to its arguments, read from its schema.

This module is one of the analysis stages: it takes an ``OpOverload`` and returns an ``OpInfo``
saying whether the op is a view, which arguments it writes (data or metadata), whether it is
random, and which pure op computes the same values (its *functional variant*). Everything is
derived from the schema's alias annotations and tags, the way ``torch/fx/passes/reinplace.py``
does; the few ops whose schema lies or whose pure form is not found by the naming rule live in
the small tables below, each row saying why.

Functional-variant lookup (lazy, cached per op):
  * ``foo_`` (in-place) → an overload of ``foo`` whose arguments match by name and type;
  * ``foo.out`` → an overload of ``foo`` taking the non-``out`` arguments (factory ops may take
    extra ``dtype``/``device``/``layout`` keywords, filled from the ``out`` tensor);
  * any mutable op → ``foo_functional`` with the same arguments;
  * custom ops that declare ``mutates_args`` → ``auto_functionalized`` (a higher-order op that
    clones the written arguments and returns their new values).
In every case the pure op returns the op's own fresh (non-aliased) results followed by the new
value of each written argument, in schema order; the lookup checks that count.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch._ops import OpOverload

aten = torch.ops.aten


@dataclass(frozen=True)
class HiddenMutation:
    """An op whose schema carries no ``(a!)`` yet writes some arguments (pytorch/pytorch#73050).

    ``when`` names the bool argument that turns the write on (``training``); the rewrite calls
    ``functional`` with the same leading arguments and takes the written values from its tail.
    """

    functional: OpOverload
    written: tuple[str, ...]
    when: str
    functional_args: tuple[str, ...]


# Train-mode batch norm updates running statistics but declares no write.
_BN_ARGS = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
HIDDEN_MUTATIONS: dict[OpOverload, HiddenMutation] = {
    aten.native_batch_norm.default: HiddenMutation(
        aten._native_batch_norm_legit_functional.default, ("running_mean", "running_var"), "training", _BN_ARGS),
    aten.batch_norm.default: HiddenMutation(
        aten._native_batch_norm_legit_functional.default, ("running_mean", "running_var"), "training", _BN_ARGS),
}
if hasattr(aten, "cudnn_batch_norm"):
    HIDDEN_MUTATIONS[aten.cudnn_batch_norm.default] = HiddenMutation(
        aten._native_batch_norm_legit_functional.default, ("running_mean", "running_var"), "training",
        ("input", "weight", "bias", "running_mean", "running_var", "training", "exponential_average_factor",
         "epsilon"))

# Pure counterparts the naming rule cannot find: in-place dunders are named after Python's
# operator protocol, not after their ATen function.
RENAMED_FUNCTIONAL: dict[str, str] = {
    "__iand__": "bitwise_and", "__ior__": "bitwise_or", "__ixor__": "bitwise_xor",
    "__ilshift__": "__lshift__", "__irshift__": "__rshift__",
}

# Ops we refuse outright: their effect on storage cannot be expressed as a value.
REFUSED: dict[str, str] = {
    "set_": "set_ rebinds a tensor to another storage; write the program with a new tensor instead",
    "resize_as_": "resize_as_ changes a tensor's size in place; allocate a tensor of the new size instead",
    "resize_as_sparse_": "sparse resize is not supported",
    "_resize_output_": "resize of an out= tensor to a new size: use the functional op",
}

# Factory keywords an ``out=`` overload takes from its ``out`` tensor.
_FACTORY_KWARGS = ("dtype", "layout", "device", "pin_memory")


@dataclass(frozen=True)
class OpInfo:
    op: Any
    is_view: bool = False          # result aliases argument 0 and nothing is written
    is_multi_view: bool = False    # view returning a list of aliases (split, unbind, ...)
    written: tuple[str, ...] = ()  # names of arguments whose data the op writes
    metadata_only: bool = False    # Tag.inplace_view: writes size/stride, not data
    is_out: bool = False
    is_random: bool = False
    fresh_returns: int = 0         # returns without alias annotation
    aliased_returns: tuple[Optional[str], ...] = ()  # per return: the written arg it aliases

    @property
    def mutates(self) -> bool:
        return bool(self.written)


def _type_key(arg) -> str:
    # Alias annotations are part of the printed type ("Tensor(a!)"); drop them to compare.
    return str(arg.type).replace("?", "Optional")


@functools.lru_cache(maxsize=None)
def op_info(op: OpOverload) -> OpInfo:
    schema = op._schema
    args = schema.arguments
    written = tuple(a.name for a in args if a.alias_info is not None and a.alias_info.is_write)
    is_random = torch.Tag.nondeterministic_seeded in op.tags
    fresh = sum(1 for r in schema.returns if r.alias_info is None)
    if written:
        by_set = {}
        for a in args:
            if a.alias_info is not None and a.alias_info.is_write:
                for s in a.alias_info.before_set:
                    by_set[s] = a.name
        aliased = tuple(
            (by_set.get(next(iter(r.alias_info.before_set), None)) if r.alias_info is not None else None)
            for r in schema.returns)
        return OpInfo(op, written=written, metadata_only=torch.Tag.inplace_view in op.tags,
                      is_out=any(a.is_out for a in args), is_random=is_random,
                      fresh_returns=fresh, aliased_returns=aliased)
    first = args[0].alias_info if args else None
    if first is not None and not first.is_write:
        multi = "*" in first.after_set
        return OpInfo(op, is_view=not multi, is_multi_view=multi, is_random=is_random, fresh_returns=fresh)
    return OpInfo(op, is_random=is_random, fresh_returns=fresh)


def bind_args(op: OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Name every argument of an FX call to ``op``, filling omitted defaults from the schema."""
    bound: dict[str, Any] = {}
    positional = list(args)
    for i, a in enumerate(op._schema.arguments):
        if not a.kwarg_only and i < len(positional):
            bound[a.name] = positional[i]
        elif a.name in kwargs:
            bound[a.name] = kwargs[a.name]
        elif a.has_default_value():
            bound[a.name] = a.default_value
        else:
            bound[a.name] = None
    return bound


def call_args(op, bound: dict[str, Any]) -> tuple[tuple, dict]:
    """Inverse of ``bind_args`` for ``op``: positional args in schema order, keywords for the rest.

    Trailing arguments equal to their default are left out so the emitted code reads like the
    user's."""
    schema = op._schema
    pos, kw = [], {}
    for a in schema.arguments:
        if a.name not in bound:
            continue
        value = bound[a.name]
        if a.kwarg_only:
            if not (a.has_default_value() and _same_default(value, a.default_value)):
                kw[a.name] = value
        else:
            pos.append((a, value))
    while pos and pos[-1][0].has_default_value() and _same_default(pos[-1][1], pos[-1][0].default_value):
        pos.pop()
    return tuple(v for _, v in pos), kw


def _same_default(value, default) -> bool:
    if isinstance(value, torch.fx.Node) or isinstance(default, torch.fx.Node):
        return False
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:
        return False


@dataclass(frozen=True)
class FunctionalVariant:
    """How to compute a mutating op's effect as values.

    ``call(bound)`` gives the ``(target, args, kwargs)`` of the pure call; its results are the
    op's ``fresh_returns`` followed by one new value per written argument (``written`` order).
    """

    target: Any
    arg_names: tuple[str, ...]              # the pure op's arguments that take the op's values ...
    sources: tuple[str, ...]                # ... of these arguments of the mutating op
    extra_from_out: tuple[str, ...] = ()   # factory keywords taken from the out tensor's metadata
    auto: bool = False                      # target is auto_functionalized(op, **kwargs)
    op: Any = None


@functools.lru_cache(maxsize=None)
def functional_variant(op: OpOverload) -> Optional[FunctionalVariant]:
    """The pure counterpart of a mutating ``op``, or ``None`` if there is none we trust."""
    info = op_info(op)
    schema = op._schema
    ns, _, name = schema.name.partition("::")
    packet_names = []
    if info.is_out:
        packet_names.append(name)
    else:
        packet_names.append(RENAMED_FUNCTIONAL.get(name, name[:-1] if name.endswith("_") else name))
    packet_names.append(name + "_functional")
    if name.endswith("_"):
        packet_names.append(name[:-1] + "_functional")
    inputs = [a for a in schema.arguments if not (info.is_out and a.name in info.written)]
    want = {a.name: _type_key(a) for a in inputs}
    expected_returns = info.fresh_returns + len(info.written)
    namespace = getattr(torch.ops, ns)
    for pname in packet_names:
        packet = getattr(namespace, pname, None)
        if packet is None or not hasattr(packet, "overloads"):
            continue
        overloads = packet.overloads()
        # Same overload name first: add_.Tensor -> add.Tensor, not add.Scalar.
        ordered = sorted(overloads, key=lambda o: (o != schema.overload_name, o))
        for oname in ordered:
            cand = getattr(packet, oname)
            cschema = cand._schema
            if cschema.is_mutable or any(r.alias_info is not None for r in cschema.returns):
                continue
            # The first argument may be named differently (dropout_(self) vs dropout(input)).
            first = cschema.arguments[0].name if cschema.arguments else None
            rename = {first: inputs[0].name} if inputs and first not in want and inputs[0].name not in \
                {a.name for a in cschema.arguments} else {}
            have = {rename.get(a.name, a.name): a for a in cschema.arguments}
            if any(n not in have or _type_key(have[n]) != t for n, t in want.items()):
                continue
            extra = [a for a in cschema.arguments if rename.get(a.name, a.name) not in want]
            if any(not a.has_default_value() and a.name not in _FACTORY_KWARGS for a in extra):
                continue
            if len(cschema.returns) != expected_returns:
                continue
            from_out = tuple(a.name for a in extra if a.name in _FACTORY_KWARGS) if info.is_out else ()
            taken = [a.name for a in cschema.arguments if rename.get(a.name, a.name) in want]
            return FunctionalVariant(cand, tuple(taken), tuple(rename.get(n, n) for n in taken), from_out, op=op)
    if ns != "aten":
        from torch._higher_order_ops.auto_functionalize import auto_functionalized, can_auto_functionalize
        if can_auto_functionalize(op):
            names = tuple(a.name for a in schema.arguments)
            return FunctionalVariant(auto_functionalized, names, names, auto=True, op=op)
    return None


SIDE_EFFECT_TARGETS: set = {
    torch._C._set_grad_enabled,
    torch.autograd.grad_mode._enter_inference_mode if hasattr(torch.autograd.grad_mode, "_enter_inference_mode") else None,
    torch.autograd.grad_mode._exit_inference_mode if hasattr(torch.autograd.grad_mode, "_exit_inference_mode") else None,
}
SIDE_EFFECT_TARGETS.discard(None)


def has_side_effect(node: torch.fx.Node) -> bool:
    """Nodes dead-code elimination must keep: writes, grad-mode switches, asserts, RNG draws.

    Random ops stay even when unused because dropping one changes every later draw."""
    if node.op in ("placeholder", "output"):
        return True
    if node.op != "call_function":
        return False
    target = node.target
    if target in SIDE_EFFECT_TARGETS or getattr(target, "_fxpurify_side_effect", False):
        return True
    if isinstance(target, OpOverload):
        info = op_info(target)
        if info.mutates or info.is_random:
            return True
        return torch.Tag.nondeterministic_seeded in target.tags or "assert" in target._schema.name \
            or target._schema.name in ("aten::sym_constrain_range", "aten::sym_constrain_range_for_size")
    return node.is_impure()


def returns_list(op) -> bool:
    return isinstance(op, OpOverload) and len(op._schema.returns) == 1 and \
        isinstance(op._schema.returns[0].type, torch.ListType)




@functools.lru_cache(maxsize=None)
def view_variant(op: OpOverload) -> Optional[OpOverload]:
    """For a metadata mutation (``Tag.inplace_view``: ``transpose_``, ``unsqueeze_``, ...), the
    view op that produces the same metadata (``transpose.int``, ``unsqueeze``, ...)."""
    ns, _, name = op._schema.name.partition("::")
    packet = getattr(getattr(torch.ops, ns), name.rstrip("_"), None)
    if packet is None or not name.endswith("_"):
        return None
    want = [(a.name, _type_key(a)) for a in op._schema.arguments]
    for oname in sorted(packet.overloads(), key=lambda o: (o != op._schema.overload_name, o)):
        cand = getattr(packet, oname)
        if op_info(cand).is_view and [(a.name, _type_key(a)) for a in cand._schema.arguments] == want:
            return cand
    return None
