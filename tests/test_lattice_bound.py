"""Babai bound (paper Thm. 5): with no clipping the achieved error never exceeds ¼ Σ D s²."""
import pytest
import torch

from babai_quantizer.lattice import (achieved_error, babai_bound, quantize_layer)
from tests.fixtures.synthetic import random_layer


@pytest.mark.parametrize("grid", ["unbounded", "overflow"])
@pytest.mark.parametrize("method", ["identity", "act", "min-pivot"])
def test_error_never_exceeds_bound_on_many_problems(grid, method):
    ratios = []
    for seed in range(15):
        K = [16, 32, 48][seed % 3]
        G = [None, 8, 16][seed % 3]
        W, X, H = random_layer(24, K, seed=100 + seed, cond=None if seed % 2 else 1e5)
        r = quantize_layer(W, H, bits=2 + seed % 3, group_size=G, grid=grid, ordering=method,
                           damping=[0.0, 0.01, 0.1][seed % 3] if seed % 2 else 1e-4,
                           scale_method="absmax" if seed % 4 else "mse", dtype=torch.float64)
        assert (r.error <= r.bound * (1 + 1e-9)).all(), (seed, (r.error / r.bound).max())
        ratios.append(r.error / r.bound)
    ratios = torch.cat(ratios)
    # Not a theorem, but the paper's uniform-error heuristic puts the mean ratio near 1/3.
    assert 0.1 < ratios.mean() < 0.6


def test_bound_is_violated_when_clipping_bites():
    """The bound needs Z† = Z: with tight clipped scales some rows exceed it."""
    W, X, H = random_layer(64, 32, seed=7)
    W[:, :4] = 1.0  # far outside the 2-bit grid {-2..1}·s with s = 0.02
    r = quantize_layer(W, H, bits=2, group_size=None, grid="clip",
                       scales=torch.full((1, 1), 0.02), dtype=torch.float64)
    assert (r.error > r.bound).any()


def test_bound_and_error_match_direct_formulas():
    W, X, H = random_layer(10, 32, seed=1)
    r = quantize_layer(W, H, bits=3, group_size=8, grid="unbounded", damping=0.0, dtype=torch.float64)
    # Undamped: error is exactly ‖X(w − q)‖² per row.
    direct = ((W - r.q.double()) @ X.T).square().sum(1)
    assert torch.allclose(r.error, direct, rtol=1e-9)
    S = r.scales.double()[:, r.group_index]           # per quantization step
    assert torch.allclose(r.bound, 0.25 * (S.square() * r.D).sum(1), rtol=1e-12)
    assert torch.allclose(achieved_error(W, r.q, H), r.error, rtol=1e-12)
    inl = torch.ones_like(r.outlier_mask)
    inl[:, 0] = False
    Sorig = torch.empty_like(S)
    Sorig[:, r.perm] = S
    k0 = int((r.perm == 0).nonzero())
    assert torch.allclose(babai_bound(Sorig, r.perm, r.D, include=inl),
                          r.bound - 0.25 * S[:, k0].square() * r.D[k0], rtol=1e-12)


def test_sweep_loss_is_the_exact_error_decomposition():
    """Σ_k (w̃_k − q_k)² D_k (GPTQ's Losses ×2) equals (w − q)ᵀH(w − q), any grid."""
    from babai_quantizer.lattice import ClippedGrid, group_scales, prepare_hessian, step_group_index, sweep
    W, X, H = random_layer(16, 48, seed=2)
    prep = prepare_hessian(H, ordering="min-pivot", dtype=torch.float64)
    scales = group_scales(W, 2, 16, order=prep.perm) * 0.5           # heavy clipping
    res = sweep(W, prep, scales, step_group_index(prep.perm, 16, "quant_order"), ClippedGrid(2), block_size=8)
    assert torch.allclose(res.loss, achieved_error(W, res.q, prep.H), rtol=1e-9)
