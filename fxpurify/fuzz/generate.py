"""Random mutating programs, written as Python source.

This module is the fuzzer's front end: it takes a seed and returns a :class:`Program` — inputs and
a list of statements — that prints as a self-contained Python file. Source, not a graph, because
a failure must print as a reproducer a person can read, edit and paste into an issue.

How a program is grown: start from the inputs (plain, strided views of a bigger base, leaves and
non-leaves that require grad, sometimes two inputs that share storage), then repeatedly pick a
statement template (``templates.py``) — a view of some live tensor, an in-place op of some
family on some live tensor (often a view of an input, so the write must reach the input), an
out-of-place read of several aliases, a fresh tensor — and *execute it eagerly* on the real
tensors grown so far.
A statement eager rejects (shape mismatch, in-place on a leaf that requires grad, a write into an
overlapping ``expand``/``unfold``) is dropped and another is drawn. So every program runs forward
in eager by construction, and the generator needs no shape or aliasing model of its own: eager
PyTorch is the model.

Each statement also has an *out-of-place* form, used as the reference when eager autograd rejects
the program in backward ("modified by an inplace operation"). It is the same program with every
value that autograd saves isolated by a ``clone()``: arguments and results of computing ops are
cloned, and ``v.op_(args)`` becomes ``v.copy_(v.clone().op_(args_cloned))``. Views, metadata
mutations and the writes themselves stay, so forward values, input writes and output aliasing are
unchanged, while no tensor saved for backward is ever modified afterwards. Its gradients are the
gradients of the out-of-place program, which is what a purified graph must produce. Multi-output
views become ``narrow``/``select`` in the twin, and an in-place statement whose eager result
differs from its twin's (an operand overlapping the written tensor under broadcasting: eager's
result then depends on kernel iteration order) is dropped while the program grows.
"""
from __future__ import annotations

import dataclasses
import random
import warnings

import torch

from .shapes import random_shape as _shape
from .templates import TEMPLATES, Ctx

__all__ = ["Stmt", "Program", "generate", "PROGRAM_FN"]

PROGRAM_FN = "forward"  # make_fx records stack traces only for frames of functions named forward


@dataclasses.dataclass
class Stmt:
    """One statement (possibly a two-line ``with`` block) in both forms."""

    kind: str          # view | compute | create | inplace | meta | nograd
    src: str
    oop: str
    defines: tuple[str, ...] = ()
    family: str = ""   # for in-place ops: arith | copy | fill | index | out | random | ...


@dataclasses.dataclass
class Program:
    seed: int
    inputs: list[str]            # body lines of make_inputs()
    input_names: list[str]
    stmts: list[Stmt]
    returns: list[str]

    def function_source(self, oop: bool = False) -> str:
        fn = PROGRAM_FN + ("_oop" if oop else "")
        lines = [f"def {fn}({', '.join(self.input_names)}):"]
        for st in self.stmts:
            for ln in (st.oop if oop else st.src).splitlines():
                lines.append("    " + ln)
        lines.append(f"    return ({', '.join(self.returns)}{',' if len(self.returns) == 1 else ''})")
        return "\n".join(lines) + "\n"

    def source(self, oop: bool = False, *, header: str = "", main: bool = False) -> str:
        """The program as a file: ``make_inputs()``, ``forward`` and, with ``oop``, also
        ``forward_oop``; with ``main``, a ``__main__`` block that re-runs the fuzzer's check."""
        lines = [f"# {ln}" if ln else "#" for ln in header.splitlines()]
        lines += ["import torch", "import torch.nn.functional as F"]
        if any(st.family == "custom" for st in self.stmts):
            lines += ["import fxpurify.fuzz.customops  # noqa: F401  (fxpurify_fuzz::axpy_)"]
        lines += ["", "",
                  "def make_inputs():", "    g = torch.Generator().manual_seed(%d)" % self.seed]
        lines += ["    " + s for s in self.inputs]
        lines += [f"    return [{', '.join(self.input_names)}]", "", ""]
        text = "\n".join(lines) + "\n" + self.function_source()
        if oop:
            text += "\n\n" + self.function_source(oop=True)
        if main:
            text += ('\n\nif __name__ == "__main__":\n'
                     "    from fxpurify.fuzz.runner import check_functions\n"
                     f"    print(check_functions(make_inputs, {PROGRAM_FN}, "
                     f"{PROGRAM_FN}_oop, filename=__file__, "
                     + ", ".join(f"{k}={v!r}" for k, v in self.trace_options().items())
                     + "))\n")
        return text

    def trace_options(self) -> dict[str, object]:
        """How the runner captures and purifies this program, varied by seed so both entry
        paths of ``purify`` and both ``make_fx`` flavours are covered.

        ``tracing_mode``: mostly ``"real"``; one program in eight each is traced ``"fake"`` and
        ``"symbolic"`` (SymInt sizes, ``sym_size`` nodes), the metadata other capture paths give.
        ``pre_dispatch`` is forced for programs with a ``no_grad`` block: without it ``make_fx``
        records no grad mode, so the graph itself no longer means what the program means (its
        replay even raises on a leaf that requires grad), and no pass could be checked against
        eager on it."""
        has_no_grad = any(s.kind == "nograd" for s in self.stmts)
        mode = {5: "fake", 7: "symbolic"}.get(self.seed % 8, "real")
        return {"with_example_inputs": self.seed % 2 == 0,
                "pre_dispatch": has_no_grad or (self.seed // 2) % 2 == 1,
                "tracing_mode": mode}

    def families(self) -> set[str]:
        return {s.family or s.kind for s in self.stmts}


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------



def _gen_inputs(rng: random.Random) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    names: list[str] = []
    n = rng.choice([1, 1, 2, 2, 2, 3])
    i = 0
    while len(names) < n:
        name = f"x{i}"
        shp = _shape(rng)
        r = rng.random()
        randn = f"torch.randn({shp}, generator=g)"
        if r < 0.08 and len(names) + 2 <= 3:
            # two inputs sharing one storage: functionalization's hardest case
            base = f"b{i}"
            lines.append(f"{base} = torch.randn(5, 6, generator=g)")
            a, b = rng.choice([("[0]", "[:, 1]"), ("[1:3]", "[2:]"), ("[:, ::2]", "[:, 1::2]"),
                               ("[0]", "[0, 1:]")])
            lines.append(f"{name} = {base}{a}")
            lines.append(f"x{i + 1} = {base}{b}")
            names += [name, f"x{i + 1}"]
            i += 2
            continue
        if r < 0.30:
            lines.append(f"{name} = {randn}")
        elif r < 0.40:
            lines.append(f"{name} = {randn}.mT" if len(shp) >= 2 else f"{name} = {randn}")
        elif r < 0.48:
            lines.append(f"{name} = torch.randn({(shp[0] * 2,) + shp[1:]}, generator=g)[::2]")
        elif r < 0.52 and len(shp) == 3:
            lines.append(f"{name} = torch.randn((1,) + {shp}, generator=g)"
                         f".to(memory_format=torch.channels_last)[0]")
        elif r < 0.68:
            lines.append(f"{name} = {randn}.requires_grad_()")
        elif r < 0.84:
            lines.append(f"{name} = ({randn}.requires_grad_() * 1)")
        elif r < 0.90:
            lines.append(f"{name} = torch.randint(-4, 5, {shp}, generator=g)")
        elif r < 0.95:
            lines.append(f"{name} = {randn}.double()")
        else:
            lines.append(f"{name} = torch.randn({(shp[0] + 2,) + shp[1:]}, generator=g)"
                         f".requires_grad_()[1:-1] * 1")
        names.append(name)
        i += 1
    return lines, names


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def _fresh_env(prog_inputs: list[str], seed: int) -> dict:
    env: dict = {"torch": torch, "F": torch.nn.functional}
    exec("g = torch.Generator().manual_seed(%d)\n" % seed + "\n".join(prog_inputs), env)
    return env


def _same_as_twin(env: dict, src: str, oop: str) -> bool:
    """Does the in-place statement compute what its out-of-place twin computes?

    Not always: eager skips its partial-overlap check when an operand is broadcast, so
    ``x.mul_(x.diagonal())`` reads elements it already overwrote and its result depends on the
    kernel's iteration order. No functional program means that; such statements are dropped.
    Run on alias-preserving clones of the live tensors, under ``no_grad`` (values only).
    (Random ops are exempt: the twin's ``clone()`` may reorder a non-dense tensor's elements.)
    """
    from ..verify import clone_inputs
    names = [k for k, v in env.items() if isinstance(v, torch.Tensor)]
    envs = []
    for stmt in (src, oop):
        copies = clone_inputs([env[k].detach() for k in names]).inputs
        e = dict(env)
        e.update(zip(names, copies))
        try:
            with torch.no_grad():
                exec(stmt, e)
        except Exception:
            return False
        envs.append(e)
    a, b = envs
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            w = b.get(k)
            if not isinstance(w, torch.Tensor) or v.shape != w.shape or v.dtype != w.dtype:
                return False
            if v.numel() and not torch.equal(v.nan_to_num(), w.nan_to_num()) or \
                    not torch.equal(v.isnan(), w.isnan()):
                return False
    return True


def _replay(inputs: list[str], seed: int, stmts: list) -> tuple[dict, list]:
    """Rebuild the env by running ``stmts`` from fresh inputs and a fresh RNG seed.

    Returns the env and the statements that replayed. A replay can diverge from the first run
    (random statements drew from another point of the RNG stream then), so it may stop early;
    the caller then keeps only that prefix."""
    env = _fresh_env(inputs, seed)
    torch.manual_seed(seed)
    ok = []
    for st in stmts:
        try:
            exec(st.src, env)
        except Exception:
            break
        ok.append(st)
    return env, ok


def generate(seed: int, *, max_stmts: int | None = None) -> Program:
    """A random program that runs forward in eager by construction (see module docstring)."""
    rng = random.Random(seed)
    inputs, names = _gen_inputs(rng)
    n_stmts = max_stmts if max_stmts is not None else rng.randint(3, 12)
    stmts: list[Stmt] = []
    env = _fresh_env(inputs, seed)
    counter = [0]
    torch.manual_seed(seed)
    attempts = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while len(stmts) < n_stmts and attempts < n_stmts * 8:
            attempts += 1
            ctx = Ctx(rng, env, counter)
            fns, weights = zip(*TEMPLATES)
            t = rng.choices(fns, weights)[0]
            saved_counter = counter[0]
            try:
                r = t(ctx)
            except (RuntimeError, ValueError, IndexError):
                r = None
            if r is None:
                counter[0] = saved_counter
                continue
            kind, src, oop, defines, family = r
            if kind in ("inplace", "nograd") and "random" not in family and \
                    not _same_as_twin(env, src, oop):
                counter[0] = saved_counter
                continue
            try:
                exec(src, env)
            except Exception:
                # Eager rejects it; the env may be half-written, so rebuild it from scratch.
                counter[0] = saved_counter
                env, replayed = _replay(inputs, seed, stmts)
                if len(replayed) < len(stmts):
                    # The replay diverged: keep the prefix that replays, stop growing.
                    stmts = replayed
                    env, _ = _replay(inputs, seed, stmts)
                    break
                continue
            stmts.append(Stmt(kind, src, oop, tuple(defines), family))
    # Returns: recent values, views of inputs, sometimes an input itself.
    live = [k for k, v in env.items() if isinstance(v, torch.Tensor) and k[0] in "xt"]
    produced = [d for st in stmts for d in st.defines if d in live]
    rets: list[str] = []
    if produced:
        rets += rng.sample(produced, min(len(produced), rng.randint(1, 3)))
    if rng.random() < 0.3:
        rets.append(rng.choice(names))
    if not rets:
        rets = [names[0]]
    return Program(seed, inputs, names, stmts, list(dict.fromkeys(rets)))
