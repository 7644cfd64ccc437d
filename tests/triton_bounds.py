"""Test support: a bounds check for every load, store and atomic of a Triton kernel run by the CPU
interpreter (``TRITON_INTERPRET=1``).

Why: on a card, a masked-in address past the end of a tensor reads or writes whatever the caching
allocator put there. Most of the time that is another live tensor (silently wrong numbers); now
and then it is the end of a mapped segment, and the kernel dies with an illegal memory access
that depends on the allocation pattern, so it looks intermittent. The interpreter runs the same
kernel code on host copies of the arguments, so it can check every address the kernel touches.

The contract checked: every address that a load, store or atomic uses (the mask's true lanes) lies,
with its whole element, inside the storage of one of the launch's tensor arguments. A violation
raises :class:`OutOfBounds` from inside the kernel, naming the kernel, the program id, the access
and how far outside the nearest argument it fell (Triton wraps it in its ``InterpreterError``).

Applied by tests/conftest.py under ``TRITON_INTERPRET=1`` (``MOSSNET_TRITON_BOUNDS=0`` turns it
off); idempotent; does nothing when Triton is absent.
"""

from __future__ import annotations

import numpy as np


class OutOfBounds(AssertionError):
    """A Triton kernel touched memory outside every tensor argument of its launch."""


# The launch that the interpreter is running now (it runs one at a time): its tensor arguments'
# storages as sorted [start, end) byte ranges, their argument names, and the kernel's name.
_launch: dict = {"starts": np.zeros(0, np.uint64), "ends": np.zeros(0, np.uint64), "names": [], "kernel": "?"}


def _record_launch(kernel_name: str, arg_names, args, kwargs) -> None:
    spans: dict[int, tuple[int, str]] = {}
    named = list(zip(arg_names, args)) + list(kwargs.items())
    for name, value in named:
        for t in (value if isinstance(value, (tuple, list)) else (value,)):
            if hasattr(t, "untyped_storage"):
                storage = t.untyped_storage()
                spans.setdefault(storage.data_ptr(), (storage.data_ptr() + storage.nbytes(), name))
    starts = sorted(spans)
    _launch.update(starts=np.array(starts, dtype=np.uint64), ends=np.array([spans[s][0] for s in starts], np.uint64),
                   names=[spans[s][1] for s in starts], kernel=kernel_name)


def check(ptrs: np.ndarray, mask: np.ndarray, itemsize: int, access: str) -> None:
    """Raise :class:`OutOfBounds` if an active address of ``ptrs`` is outside every argument."""
    addresses = np.asarray(ptrs, dtype=np.uint64)[np.broadcast_to(np.asarray(mask, dtype=bool), np.shape(ptrs))]
    if addresses.size == 0:
        return
    starts, ends = _launch["starts"], _launch["ends"]
    which = np.searchsorted(starts, addresses, side="right").astype(np.int64) - 1
    inside = which >= 0
    inside[inside] &= addresses[inside] + np.uint64(itemsize) <= ends[which[inside]]
    if inside.all():
        return
    from triton.runtime.interpreter import interpreter_builder

    bad = addresses[~inside]
    first = int(bad[0])
    if starts.size:
        nearest = int(np.argmin(np.minimum(np.abs(starts.astype(np.float64) - first),
                                           np.abs(ends.astype(np.float64) - first))))
        name = _launch["names"][nearest]
        start, end = int(starts[nearest]), int(ends[nearest])
        where = (f"{first - end} bytes after the end of {name}'s storage" if first >= end
                 else f"{start - first} bytes before {name}'s storage" if first < start
                 else f"an element that straddles the end of {name}'s storage")
    else:
        where = "and the launch has no tensor arguments"
    raise OutOfBounds(f"{_launch['kernel']}: {access} of {bad.size} element(s) outside every tensor argument "
                      f"(program {tuple(interpreter_builder.grid_idx)}; first {where})")


def check_bounds_in_interpreter() -> bool:
    """Install the check into Triton's interpreter. Returns False when Triton is absent."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    executor, builder = interpreter.GridExecutor, interpreter.InterpreterBuilder
    if getattr(executor._init_args_hst, "_records_bounds", False):
        return True
    init_args, masked_load, masked_store = executor._init_args_hst, builder.create_masked_load, builder.create_masked_store
    atomic_rmw = builder.create_atomic_rmw

    def init_args_hst(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        _record_launch(getattr(self.fn, "__name__", "?"), self.arg_names, args_hst, kwargs_hst)
        return args_hst, kwargs_hst

    def create_masked_load(self, ptrs, mask, other, cache_modifier, eviction_policy, is_volatile):
        itemsize = np.dtype(interpreter._get_np_dtype(ptrs.get_element_ty())).itemsize
        check(ptrs.data, mask.data, itemsize, "load")
        return masked_load(self, ptrs, mask, other, cache_modifier, eviction_policy, is_volatile)

    def create_masked_store(self, ptrs, value, mask, cache_modifier, eviction_policy):
        check(ptrs.data, mask.data, np.asarray(value.data).dtype.itemsize, "store")
        return masked_store(self, ptrs, value, mask, cache_modifier, eviction_policy)

    def create_atomic_rmw(self, rmw_op, ptr, val, mask, sem, scope):
        check(ptr.data, mask.data, np.asarray(val.data).dtype.itemsize, "atomic")
        return atomic_rmw(self, rmw_op, ptr, val, mask, sem, scope)

    init_args_hst._records_bounds = True
    executor._init_args_hst = init_args_hst
    builder.create_masked_load = create_masked_load
    builder.create_masked_store = create_masked_store
    builder.create_atomic_rmw = create_atomic_rmw
    return True
