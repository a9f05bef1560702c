"""SSQR search (quantizer/formats/ssqr.py) checked against the on-disk format and fp64 numpy."""
import numpy as np
import pytest
import torch

from babai_kernels.ssqr.pack import unpack_ssqr
from babai_kernels.ssqr.reference import dequantize_ssqr
from babai_quantizer.formats import quantize_ssqr
from babai_quantizer.lattice import ClippedGrid, OverflowGrid, quantize_layer, prepare_hessian, step_group_index, sweep


def correlated_layer(N, K, seed=0, heavy_tails=True):
    """(W (N, K), H (K, K)) from correlated activations with a few strong input channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(K) + torch.randn(K, K, generator=g) / K ** 0.5
    X = torch.randn(2 * K, K, generator=g) @ mix * (1 + 3 * torch.rand(K, generator=g))
    W = torch.randn(N, K, generator=g) * 0.02
    if heavy_tails:
        W = W * (1 + 4 * (torch.rand(N, K, generator=g) < 0.01))
    return W, X.T @ X


def numpy_error_and_inlier_bound(W, H, result, damping=0.01):
    """Independent fp64 numpy: (w − q)ᵀ(H + λI)(w − q) per row and ¼ Σ_inliers D_k s_k² with D
    the LDL diagonal of the damped Hessian in the Babai order reverse(perm)."""
    z, scales, perm, outliers = unpack_ssqr(result.tensors)
    Hd = H.double().numpy()
    Hd = Hd + damping * np.mean(np.diag(Hd)) * np.eye(len(Hd))
    E = W.double().numpy() - result.q_dequant.double().numpy()
    error = np.einsum("nk,kl,nl->n", E, Hd, E)
    order = perm.long().numpy()
    babai = order[::-1]
    L = np.linalg.cholesky(Hd[np.ix_(babai, babai)])
    D = np.diag(L)[::-1] ** 2                                # quantization order
    G = z.shape[1] // scales.shape[1]
    s = np.repeat(scales.double().numpy(), G, axis=1)        # stored (= quantization) order
    inlier = (outliers == 0).numpy()
    bound = 0.25 * (s ** 2 * D[None, :] * inlier).sum(1)
    return error, bound


@pytest.fixture(scope="module")
def layer():
    return correlated_layer(48, 256)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_round_trip_codes_in_range_and_bound(layer, bits):
    W, H = layer
    r = quantize_ssqr(W, H, bits=bits, group_size=64, outlier_rate=0.02)
    # quantize → pack → unpack → dequantize is the sweep's weight, bit for bit.
    assert torch.equal(dequantize_ssqr(r.tensors).view(torch.int32), r.q_dequant.view(torch.int32))
    z, _, perm, outliers = unpack_ssqr(r.tensors)
    assert int(z.min()) >= -(1 << (bits - 1)) and int(z.max()) <= (1 << (bits - 1)) - 1
    assert bool((z[outliers != 0] == 0).all())
    # The outliers are the layer's real outliers: some, and they carry large values.
    assert 0 < int((outliers != 0).sum()) < W.numel() // 10
    error, bound = numpy_error_and_inlier_bound(W, H, r)
    np.testing.assert_allclose(r.error.numpy(), error, rtol=1e-6)
    # Rows the rescue stored clipped have no bound (NaN); every other row obeys Babai's.
    unclipped = np.ones(len(error), dtype=bool)
    unclipped[r.search["clipped_rows"]] = False
    assert np.isnan(r.bound.numpy()[~unclipped]).all() and not np.isnan(r.bound.numpy()[unclipped]).any()
    ours, error, bound = r.bound.numpy()[unclipped], error[unclipped], bound[unclipped]
    slack = bound * 1e-5 + 1e-3 * ours.clip(min=0) - 1e-3 * bound  # fp16 outlier rounding
    assert (error <= bound + slack).all()
    assert (r.error.numpy()[unclipped] <= ours * (1 + 1e-5)).all()
    assert r.effective_bits == sum(t.numel() * t.element_size() * 8
                                   for t in r.tensors.values()) / W.numel()


def test_stored_scales_reproduce_the_stored_codes(layer):
    """Each row's result is one evaluated sweep: re-sweeping with the stored scales and order
    (plain lattice sweep, no search) gives exactly the stored codes and outliers; on the rows
    the rescue stored clipped, the clipped sweep does."""
    W, H = layer
    r = quantize_ssqr(W, H, bits=3, group_size=64, outlier_rate=0.01)
    z, scales, perm, outliers = unpack_ssqr(r.tensors)
    prep = prepare_hessian(H, perm=perm.long(), damping=0.01)
    gidx = step_group_index(prep.perm, 64, "quant_order")
    clipped = torch.zeros(W.shape[0], dtype=torch.bool)
    clipped[r.search["clipped_rows"]] = True
    for rows, grid in ((~clipped, OverflowGrid(3)), (clipped, ClippedGrid(3))):
        res = sweep(W.double()[rows], prep, scales.float()[rows], gidx, grid)
        assert torch.equal(res.codes[:, perm.long()], z[rows])
        assert torch.equal(res.outlier[:, perm.long()], outliers[rows] != 0)


def test_rescue_stores_clipped_gptq_rows_only_where_the_search_lost_too_much(layer):
    """At 2 bits some rows reach the rate only with a large multiplier. Each row then ends with
    error ≤ max(¼ Σ D s0², clipped-GPTQ error at s0), and a rescued row is that GPTQ row."""
    W, H = layer
    r = quantize_ssqr(W, H, bits=2, group_size=64, outlier_rate=0.01)
    rescued = r.search["clipped_rows"]
    assert rescued
    _, scales, perm, outliers = unpack_ssqr(r.tensors)
    g = quantize_layer(W, H, bits=2, group_size=64, grid="clip", perm=perm.long())
    torch.testing.assert_close(r.q_dequant[rescued], g.q[rescued].float(), rtol=0, atol=0)
    assert torch.equal(scales[rescued].float(), g.scales[rescued].float())
    assert not bool(outliers[rescued].any())
    # independent fp64: Babai's all-inlier bound at the MSE scales, D from numpy's Cholesky
    Hd = H.double().numpy()
    Hd = Hd + 0.01 * np.mean(np.diag(Hd)) * np.eye(len(Hd))
    order = perm.long().numpy()
    D = np.diag(np.linalg.cholesky(Hd[np.ix_(order[::-1], order[::-1])]))[::-1] ** 2
    s0 = np.repeat(g.scales.double().numpy(), 64, axis=1)          # quantization order
    b0 = 0.25 * (s0 ** 2 * D[None, :]).sum(1)
    limit = np.maximum(b0, g.error.numpy())
    assert (r.error.numpy() <= limit * (1 + 1e-6)).all()


@pytest.mark.parametrize("target", [0.01, 0.03])
def test_outlier_rate_meets_target_per_row(target):
    W, H = correlated_layer(64, 512, seed=1)
    r = quantize_ssqr(W, H, bits=4, group_size=128, outlier_rate=target)
    _, _, _, outliers = unpack_ssqr(r.tensors)
    per_row = (outliers != 0).double().mean(1)
    assert torch.equal(per_row, r.outlier_rate)
    assert float((per_row - target).abs().max()) <= 0.005
    assert abs(float(per_row.mean()) - target) <= 0.005
    assert r.tensors["outlier_cols"].shape[1] == int((outliers != 0).sum(1).max())   # cap


@pytest.mark.parametrize("scale_init", ["mse", "rms"])
def test_rate_mode_cap_keeps_every_row_within_the_cap(scale_init):
    W, H = correlated_layer(64, 512, seed=1)
    rate = 0.01
    cap = round(rate * W.shape[1])
    closest = quantize_ssqr(W, H, bits=3, group_size=64, outlier_rate=rate)
    r = quantize_ssqr(W, H, bits=3, group_size=64, outlier_rate=rate, rate_mode="cap", scale_init=scale_init)
    _, _, _, outliers = unpack_ssqr(r.tensors)
    counts = (outliers != 0).sum(1)
    assert int(counts.max()) <= cap and r.tensors["outlier_cols"].shape[1] <= cap      # ELL width = cap
    assert float(counts.double().mean()) >= cap - 2            # the slots below the cap are used
    assert torch.equal(dequantize_ssqr(r.tensors), r.q_dequant)
    assert r.effective_bits <= closest.effective_bits
    assert r.search["rate_mode"] == "cap" and r.search["scale_init"] == scale_init
    error, _ = numpy_error_and_inlier_bound(W, H, r)
    np.testing.assert_allclose(r.error.numpy(), error, rtol=1e-6)
    ok = ~r.bound.isnan()
    assert bool((r.error[ok] <= r.bound[ok] * (1 + 1e-6)).all())


def test_block_local_permutation_for_row_parallel_layers(layer):
    W, H = layer
    P = 4
    r = quantize_ssqr(W, H, bits=4, group_size=32, outlier_rate=0.01, row_parallel_blocks=P)
    perm = r.tensors["perm"].long()
    width = W.shape[1] // P
    stored_block = torch.arange(W.shape[1]) // width
    assert torch.equal(perm // width, stored_block)
    assert not torch.equal(perm, torch.arange(W.shape[1]))   # it is still an act-order
    # Within each block the order is act-order: descending diagonal of H.
    diag = torch.diagonal(H)[perm].reshape(P, width)
    assert bool((diag[:, :-1] >= diag[:, 1:]).all())
    assert torch.equal(dequantize_ssqr(r.tensors), r.q_dequant)


@pytest.mark.parametrize("kwargs, name", [
    ({"bits": 5}, "bits"), ({"outlier_rate": 0.2}, "outlier_rate"),
    ({"group_size": 48}, "group_size"), ({"row_parallel_blocks": 3}, "row_parallel_blocks"),
    ({"ordering": "random"}, "ordering"), ({"scale_init": "median"}, "scale_init"),
    ({"rate_mode": "exact"}, "rate_mode"),
])
def test_bad_arguments_name_themselves(layer, kwargs, name):
    W, H = layer
    with pytest.raises(ValueError, match=name):
        quantize_ssqr(W, H, **{"group_size": 64, **kwargs})
