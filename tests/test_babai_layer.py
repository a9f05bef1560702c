"""Babai back-to-front at model scale: blocked form ≡ reference, same integers as GPTQ."""
import pytest
import torch

from babai_quantizer.babai_layer import babai_blocked, quantize_layer_babai
from babai_quantizer.lattice import (ClippedGrid, OverflowGrid, UnboundedGrid, coordinate_scales, damp,
                               group_scales, ordering, quantize_layer, step_group_index)
from tests.fixtures.synthetic import random_layer
from babai_quantizer.lattice.reference import babai_reference


@pytest.mark.parametrize("grid", [ClippedGrid(3), UnboundedGrid(), OverflowGrid(4)],
                         ids=["clip", "unbounded", "overflow"])
@pytest.mark.parametrize("block_size", [1, 7, 16, 64])
def test_blocked_babai_equals_reference(grid, block_size):
    W, _, H = random_layer(10, 48, cond=1e5, seed=block_size)
    Hd, _ = damp(H, 1e-4)
    perm = ordering(Hd, "act")
    scales = group_scales(W, 3, 16, method="absmax")
    S = coordinate_scales(scales, perm, step_group_index(perm, 16, "original")) * 0.7
    order = perm.flip(0)
    ref = babai_reference(W, Hd, S, grid, order)
    got = babai_blocked(W, Hd, S, grid, order, block_size=block_size)
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype
    assert torch.equal(got[0], ref[0]) and torch.equal(got[2], ref[2])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["act", "min-pivot", "identity"])
@pytest.mark.parametrize("bits", [3, 4])
def test_babai_layer_has_the_gptq_codes_scales_and_error(method, bits):
    W, _, H = random_layer(24, 96, seed=bits)
    W, H = W.float(), H.float()
    b = quantize_layer_babai(W, H, bits=bits, group_size=32, ordering=method, dtype=torch.float64)
    g = quantize_layer(W, H, bits=bits, group_size=32, grid="clip", ordering=method, groups_in="original",
                       dtype=torch.float64)
    assert torch.equal(b.codes, g.codes)
    assert torch.equal(b.scales, g.scales)
    torch.testing.assert_close(b.q, g.q, rtol=0, atol=0)
    assert b.trace_D == pytest.approx(g.trace_D, rel=1e-12)
    torch.testing.assert_close(b.error, g.error, rtol=1e-5, atol=0)
    torch.testing.assert_close(b.bound, g.bound)
