"""Peak live tensor memory of a call — the measuring stick for the price of purity.

This module sits beside the pipeline, not in it: benchmarks and tests use it to compare the
in-place original, the pure graph and the recovered program (``recover.py``) on one footing.

Why not the obvious tools (see DESIGN.md, "Measuring memory on CPU"):

* the profiler's memory columns are cumulative allocations, not a peak;
* RSS includes the allocator's caches and Python itself, and never goes down;
* ``torch.distributed._tools.mem_tracker.MemTracker`` is honest but private and heavy (module
  hooks, per-module snapshots); we only need one number per call.

So on CPU we count **storages**, not tensors, with a ``TorchDispatchMode``:

1. Every op runs through ``__torch_dispatch__``. An output whose storage is neither one of the
   op's inputs' storages nor already tracked is a *new allocation*: add ``storage.nbytes()`` to
   the live total and attach a ``weakref.finalize`` to the storage object.
2. PyTorch keeps one Python object per storage for as long as the C++ storage lives, so the
   finalizer fires exactly when the memory is released — views keep it alive, as they should.
3. Storages that existed before the call (inputs, parameters) are never counted: the number is
   the peak of memory the *call* allocated on top of what the caller already holds, which is
   precisely what differs between an in-place program and its pure form.

In-place ops, views and ``out=`` writes into existing tensors allocate nothing and count nothing.
A storage that an op resizes (``resize_``, ``out=`` growth) is re-measured when seen again.

On CUDA the caching allocator already tracks this: ``max_memory_allocated()`` minus the
allocation at entry.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

log = logging.getLogger(__name__)

__all__ = ["MemoryStats", "LiveTensorMemory", "measure_peak", "format_bytes"]


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """What one measured call allocated, in bytes.

    ``peak``: the most bytes of new storage alive at any moment during the call;
    ``end``: bytes of new storage still alive when the call returned (its outputs, saved tensors);
    ``total``: cumulative bytes allocated (the profiler's notion, for comparison);
    ``method``: how it was measured ("dispatch" on CPU, "cuda" via the caching allocator).
    """

    peak: int
    end: int
    total: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LiveTensorMemory(TorchDispatchMode):
    """Dispatch mode that tracks bytes of storage allocated while it is active.

    Use as a context manager, then read ``peak``, ``current`` and ``total``. Storages allocated
    inside and freed inside count toward ``peak`` and ``total`` only. Thread-local like every
    dispatch mode; CPU autograd runs backward on the calling thread, so ``backward()`` inside the
    mode is measured too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self.total = 0
        # id(storage object) -> bytes we charged for it. Ids are safe keys because the finalizer
        # removes the entry before the object (and so the id) can be reused.
        self._live: dict[int, int] = {}

    # Bound method would keep `self` alive from the finalizer registry; a closure over a
    # weakref does not, and a mode object outliving its storages is harmless either way.
    def _release(self, key: int) -> None:
        nbytes = self._live.pop(key, None)
        if nbytes is not None:
            self.current -= nbytes

    def _charge(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        nbytes = storage.nbytes()
        old = self._live.get(key)
        if old is not None:
            if old != nbytes:  # resized in place: charge the difference
                self._live[key] = nbytes
                self.current += nbytes - old
                self.total += max(0, nbytes - old)
                self.peak = max(self.peak, self.current)
            return
        self._live[key] = nbytes
        self.current += nbytes
        self.total += nbytes
        self.peak = max(self.peak, self.current)
        ref = weakref.ref(self)

        def release(key: int = key) -> None:
            mode = ref()
            if mode is not None:
                mode._release(key)

        weakref.finalize(storage, release)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            id(_storage(t)) for t in tree_leaves((args, kwargs)) if _is_plain(t)
        }
        for t in tree_leaves(out):
            if not _is_plain(t):
                continue
            st = _storage(t)
            if id(st) in inputs and id(st) not in self._live:
                continue  # a view of, or write into, memory the caller already held
            self._charge(st)
        return out


def _is_plain(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "meta" and not t.is_sparse


def _storage(t: torch.Tensor) -> torch.UntypedStorage:
    return t.untyped_storage()


def measure_peak(fn: Callable[..., Any], *args: Any, device: str | torch.device | None = None,
                 **kwargs: Any) -> tuple[Any, MemoryStats]:
    """Run ``fn(*args, **kwargs)`` once and return ``(result, MemoryStats)``.

    ``device`` picks the method: CUDA uses the caching allocator's peak (reset first); anything
    else uses :class:`LiveTensorMemory`. When ``device`` is None it is taken from the first tensor
    argument. ``gc.collect()`` runs first so garbage from earlier calls does not inflate the
    number (on CPU such garbage is not counted anyway; on CUDA it would be).
    """
    if device is None:
        device = next((t.device for t in tree_leaves((args, kwargs))
                       if isinstance(t, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        stats = MemoryStats(
            peak=torch.cuda.max_memory_allocated(device) - base,
            end=torch.cuda.memory_allocated(device) - base,
            total=-1,  # not tracked by the allocator stats we use
            method="cuda",
        )
        return result, stats
    with LiveTensorMemory() as mode:
        result = fn(*args, **kwargs)
    stats = MemoryStats(peak=mode.peak, end=mode.current, total=mode.total, method="dispatch")
    log.debug("measured %s: %s", getattr(fn, "__name__", fn), stats)
    return result, stats


def format_bytes(n: float) -> str:
    """Human-readable bytes (KiB/MiB/GiB, binary), for tables."""
    if n is None or n < 0:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
