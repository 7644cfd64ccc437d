"""The host's grid arithmetic agrees with Triton's own helpers wherever it replaces them."""

import pytest

from mossnet.ops.launch_grid import cdiv, next_power_of_2

@pytest.mark.parametrize("n", [*range(0, 70), 127, 128, 129, 1000, 4096, 4097, 1 << 20, (1 << 20) + 1])
def test_matches_triton(n):
    triton = pytest.importorskip("triton")
    assert next_power_of_2(n) == triton.next_power_of_2(n)
    for b in (1, 2, 3, 16, 64, 128):
        assert cdiv(n, b) == triton.cdiv(n, b)


def test_plain_values():  # also where Triton is not installed (CI)
    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 5, 64, 65)] == [0, 1, 2, 4, 8, 64, 128]
    assert [cdiv(n, 16) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]
