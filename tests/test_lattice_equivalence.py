"""GPTQ in order P ≡ Babai in order reverse(P) (paper Thm. 4), and blocked sweep ≡ reference."""
import pytest
import torch

from babai_quantizer.lattice import (ClippedGrid, OverflowGrid, UnboundedGrid, coordinate_scales, damp,
                               group_scales, ordering, prepare_hessian, step_group_index, sweep)
from tests.fixtures.synthetic import random_layer
from babai_quantizer.lattice.reference import babai_reference, gptq_reference

GRIDS = {"clip": ClippedGrid, "unbounded": lambda b: UnboundedGrid(), "overflow": OverflowGrid}


def _problem(N, K, bits, G, method, cond, seed, rel, groups_in="quant_order"):
    W, _, H = random_layer(N, K, cond=cond, seed=seed)
    Hd, _ = damp(H, rel)
    perm = ordering(Hd, method)
    order = perm if groups_in == "quant_order" else None
    scales = group_scales(W, bits, G, order=order, method="absmax")
    gidx = step_group_index(perm, G, groups_in)
    return W, Hd, perm, scales, gidx, coordinate_scales(scales, perm, gidx)


@pytest.mark.parametrize("grid", ["clip", "unbounded", "overflow"])
@pytest.mark.parametrize("method", ["identity", "act", "min-pivot"])
@pytest.mark.parametrize("bits,G,cond,rel", [(2, 8, None, 0.01), (3, 16, 1e6, 1e-6), (4, 48, 1e8, 0.0),
                                             (8, 24, None, 0.01)])
def test_gptq_in_order_p_equals_babai_in_reverse_order(grid, method, bits, G, cond, rel):
    W, Hd, perm, _, _, S = _problem(12, 48, bits, G, method, cond, seed=bits, rel=rel)
    # Shrink scales so that clipping / overflow actually happens on some coordinates.
    S = S * 0.6
    g = GRIDS[grid](bits)
    zg, qg, og = gptq_reference(W, Hd, S, g, perm)
    zb, qb, ob = babai_reference(W, Hd, S, g, perm.flip(0))
    assert torch.equal(zg, zb)
    assert torch.equal(og, ob)
    inlier = ~og
    assert torch.equal(qg[inlier], qb[inlier])
    # Outliers store float16(w̃); the two forms compute w̃ to fp64 rounding, so fp16 agrees.
    assert torch.allclose(qg[og], qb[og], rtol=1e-3, atol=0)
    if grid == "clip":
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        assert zg.min() >= lo and zg.max() <= hi and ((zg == lo) | (zg == hi)).any()
    if grid == "overflow":
        assert og.any() and (zg[og] == 0).all()


def test_babai_in_the_same_order_differs():
    """The equivalence needs the reversed order: the same order gives different integers."""
    W, Hd, perm, _, _, S = _problem(16, 48, 3, 16, "act", None, seed=5, rel=0.01)
    zg, _, _ = gptq_reference(W, Hd, S, UnboundedGrid(), perm)
    zb, _, _ = babai_reference(W, Hd, S, UnboundedGrid(), perm)
    assert not torch.equal(zg, zb)


@pytest.mark.parametrize("block_size", [1, 7, 16, 128])
@pytest.mark.parametrize("grid", ["clip", "unbounded", "overflow"])
@pytest.mark.parametrize("groups_in", ["quant_order", "original"])
def test_blocked_sweep_matches_reference_fp64(block_size, grid, groups_in):
    K, bits, G = 96, 3, 32
    W, X, H = random_layer(20, K, seed=block_size)
    prep = prepare_hessian(H, ordering="act", damping=0.01, dtype=torch.float64)
    gidx = step_group_index(prep.perm, G, groups_in)
    order = prep.perm if groups_in == "quant_order" else None
    scales = group_scales(W, bits, G, order=order, method="mse") * 0.8
    g = GRIDS[grid](bits)
    res = sweep(W, prep, scales, gidx, g, block_size=block_size)
    S = coordinate_scales(scales, prep.perm, gidx)
    zr, qr, orr = gptq_reference(W, prep.H, S, g, prep.perm)
    assert torch.equal(res.codes, zr)
    assert torch.equal(res.outlier, orr)
    assert torch.allclose(res.q, qr, rtol=1e-3, atol=1e-12)


def test_fp32_sweep_agrees_with_reference_on_well_conditioned_problem():
    W, X, H = random_layer(64, 96, seed=3)
    prep = prepare_hessian(H, ordering="act", dtype=torch.float32)
    gidx = step_group_index(prep.perm, 32, "quant_order")
    scales = group_scales(W, 4, 32, order=prep.perm)
    res = sweep(W, prep, scales, gidx, ClippedGrid(4))
    zr, _, _ = gptq_reference(W, prep.H, coordinate_scales(scales, prep.perm, gidx), ClippedGrid(4), prep.perm)
    assert (res.codes != zr).double().mean() < 0.01
