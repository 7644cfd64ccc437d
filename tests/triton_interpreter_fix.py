"""Test support: lets Triton's CPU interpreter run loops with run-time bounds under NumPy >= 2.4.

The contract: the interpreter holds every scalar as a one-element 1-D NumPy array and converts
it to a Python int with ``int(array)`` when a loop bound needs it (``range(c0, c1)`` in the
state passes). NumPy 2.4 refuses ``int()`` of an array with ndim > 0, so Triton 3.6's
interpreter fails every kernel with such a loop (upstream: triton-lang/triton issue 9171, fixed
by pull request 9172; Triton 3.6.0 does not have the fix). :func:`fix_interpreter_for_numpy2`
wraps the interpreter's tensor patching so that ``__index__`` takes the array's single element,
which is what the upstream fix does. It only touches the interpreter, does nothing when Triton
is absent and is idempotent. The library itself carries no patch: without this,
``why_unavailable`` reports that the interpreter cannot run the scan.

Applied by tests/conftest.py when ``TRITON_INTERPRET=1``, and by ``benchmarks/bench_scan.py --smoke``.
"""

from __future__ import annotations


def fix_interpreter_for_numpy2() -> None:
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_index_takes_single_element", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor._index_takes_single_element = True
    interpreter._patch_lang_tensor = patch_lang_tensor
