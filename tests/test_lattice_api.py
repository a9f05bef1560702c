"""quantize_layer's contract: validation, scales, groups, RTN baseline, output layout."""
import numpy as np
import pytest
import torch

from babai_quantizer.lattice import (ClippedGrid, group_scales, quantize_layer, rtn_quantize,
                               coordinate_scales, step_group_index)
from tests.fixtures.synthetic import random_layer


def numpy_find_params_mse(x, bits, maxshrink=0.8, grid=100, norm=2.4):
    """GPTQ's Quantizer.find_params(mse=True), symmetric, one group (numpy)."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    amax = np.abs(x).max()
    best, best_s = np.inf, 2 * amax / (2 ** bits - 1)
    for i in range(int(maxshrink * grid)):
        s = 2 * amax * (1 - i / grid) / (2 ** bits - 1)
        err = (np.abs(np.clip(np.round(x / s), lo, hi) * s - x) ** norm).sum()
        if err < best:
            best, best_s = err, s
    return best_s


@pytest.mark.parametrize("groups_in", ["quant_order", "original"])
def test_scales_follow_groups_in_the_chosen_order(groups_in):
    W, _, H = random_layer(5, 32, seed=1)
    r = quantize_layer(W, H, bits=3, group_size=8, groups_in=groups_in, scale_method="mse")
    for n in range(5):
        for g in range(4):
            cols = r.perm[8 * g: 8 * g + 8] if groups_in == "quant_order" else torch.arange(8 * g, 8 * g + 8)
            expect = np.float16(numpy_find_params_mse(W[n, cols].numpy(), 3))
            assert r.scales[n, g].item() == pytest.approx(float(expect), rel=1e-3)
    # Dequantization: inliers are exactly scale(group of their step) · code.
    S = coordinate_scales(r.scales, r.perm, r.group_index)
    assert torch.equal(r.q, r.codes.float() * S)


def test_absmax_and_per_matrix_scales():
    W, _, H = random_layer(6, 16, seed=2)
    s = group_scales(W, 4, 8, method="absmax", fp16=False)
    assert torch.allclose(s.double(), W.abs().reshape(6, 2, 8).amax(-1) * 2 / 15, rtol=1e-6)
    r = quantize_layer(W, H, bits=4, group_size=None, grid="unbounded", scale_method="absmax")
    assert r.scales.shape == (6, 1) and (r.scales == r.scales[0, 0]).all()
    assert r.scales[0, 0].item() == float(np.float16(W.abs().max().item() * 2 / 15))
    one = quantize_layer(W, H, bits=None, group_size=None, grid="unbounded", scales=torch.tensor([[0.01]]))
    assert torch.equal(one.q, one.codes.float() * 0.01)
    assert one.codes.abs().max() > 7          # unbounded codes


def test_rtn_is_plain_rounding_on_the_same_grid():
    W, _, _ = random_layer(4, 16, seed=3)
    perm = torch.arange(16)
    scales = group_scales(W, 3, 8)
    S = coordinate_scales(scales, perm, step_group_index(perm, 8, "original"))
    z, q, o = rtn_quantize(W, S, ClippedGrid(3))
    expect = np.clip(np.round(W.numpy() / S.double().numpy()), -4, 3)
    assert np.array_equal(z.numpy(), expect) and not o.any()


def test_gptq_beats_rtn_on_the_layer_objective():
    W, X, H = random_layer(32, 64, seed=4)
    r = quantize_layer(W, H, bits=3, group_size=16, damping=0.01, dtype=torch.float64)
    S = coordinate_scales(r.scales.double(), r.perm, r.group_index)
    _, q_rtn, _ = rtn_quantize(W, S, ClippedGrid(3))
    err = lambda q: ((W - q.double()) @ X.T).square().sum()  # noqa: E731
    assert err(r.q) < 0.8 * err(q_rtn)


def test_explicit_perm_and_outputs_are_in_original_order():
    W, _, H = random_layer(4, 16, seed=5)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    r = quantize_layer(W, H, bits=4, group_size=4, perm=perm, grid="overflow")
    assert torch.equal(r.perm, perm)
    assert r.codes.dtype == torch.int32 and r.q.dtype == torch.float32 and r.outlier_mask.dtype == torch.bool
    assert r.D.shape == (16,) and r.trace_D == pytest.approx(float(r.D.sum()))
    assert (r.q - W.float()).abs().max() < 0.5 * W.abs().max()


@pytest.mark.parametrize("kwargs,name", [
    (dict(W=torch.full((4, 8), float("nan"))), "W"),
    (dict(H=torch.eye(8).index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("inf")))), "H"),
    (dict(H=torch.eye(6)), "H"),
    (dict(W=torch.ones(4, 8, dtype=torch.int32)), "W"),
    (dict(bits=1), "bits"),
    (dict(bits=9), "bits"),
    (dict(group_size=3), "group_size"),
    (dict(grid="nf4"), "grid"),
    (dict(ordering="random"), "ordering"),
    (dict(perm=torch.zeros(8, dtype=torch.int64)), "perm"),
    (dict(scales=torch.ones(4, 3)), "scales"),
    (dict(scales=-torch.ones(4, 2)), "scales"),
    (dict(G_cross=torch.eye(5)), "G_cross"),
    (dict(groups_in="stored"), "groups_in"),
    (dict(scale_method="minmax"), "scale_method"),
])
def test_bad_input_raises_value_error_naming_the_argument(kwargs, name):
    args = dict(W=torch.randn(4, 8), H=torch.eye(8) * 2, bits=4, group_size=4)
    args.update(kwargs)
    W, H = args.pop("W"), args.pop("H")
    with pytest.raises(ValueError, match=name):
        quantize_layer(W, H, **args)
