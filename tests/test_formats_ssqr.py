"""SSQR search (quantizer/formats/ssqr.py) checked against the on-disk format and fp64 numpy."""
import numpy as np
import pytest
import torch

from kernels.ssqr.pack import unpack_ssqr
from kernels.ssqr.reference import dequantize_ssqr
from quantizer.formats import quantize_ssqr
from quantizer.lattice import OverflowGrid, prepare_hessian, step_group_index, sweep


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
    slack = bound * 1e-5 + 1e-3 * r.bound.numpy().clip(min=0) - 1e-3 * bound  # fp16 outlier rounding
    assert (error <= bound + slack).all()
    assert (r.error.numpy() <= r.bound.numpy() * (1 + 1e-5)).all()
    assert r.effective_bits == sum(t.numel() * t.element_size() * 8
                                   for t in r.tensors.values()) / W.numel()


def test_stored_scales_reproduce_the_stored_codes(layer):
    """Each row's result is one evaluated sweep: re-sweeping with the stored scales and order
    (plain lattice sweep, no search) gives exactly the stored codes and outliers."""
    W, H = layer
    r = quantize_ssqr(W, H, bits=3, group_size=64, outlier_rate=0.01)
    z, scales, perm, outliers = unpack_ssqr(r.tensors)
    prep = prepare_hessian(H, perm=perm.long(), damping=0.01)
    res = sweep(W.double(), prep, scales.float(), step_group_index(prep.perm, 64, "quant_order"),
                OverflowGrid(3))
    assert torch.equal(res.codes[:, perm.long()], z)
    assert torch.equal(res.outlier[:, perm.long()], outliers != 0)


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
    ({"ordering": "random"}, "ordering"),
])
def test_bad_arguments_name_themselves(layer, kwargs, name):
    W, H = layer
    with pytest.raises(ValueError, match=name):
        quantize_ssqr(W, H, **{"group_size": 64, **kwargs})
