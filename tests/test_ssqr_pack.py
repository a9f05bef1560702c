"""SSQR format (docs/format.md §2): pack/unpack, the torch reference, TP slicing, bad input.

`read_ssqr_numpy` is an independent reader written from the spec text, bit by bit.
"""
import numpy as np
import pytest
import torch

from babai_kernels.ssqr import (concat_rows, dequantize_ssqr, pack_codes, pack_ssqr, slice_cols,
                          slice_rows, ssqr_linear_reference, ssqr_meta, unpack_codes, unpack_ssqr)


def read_ssqr_numpy(t: dict) -> np.ndarray:
    """Dense float64 weight (N, K) in original column order, straight from §2."""
    qweight = t["qweight"].numpy().view(np.uint32)
    scales = t["scales"].numpy().astype(np.float64)
    perm = t["perm"].numpy()
    k = perm.shape[0]
    b = qweight.shape[0] * 32 // k
    g = k // scales.shape[0]
    n = qweight.shape[1]
    w = np.zeros((n, k))
    for j in range(k):
        r, c = divmod(j, 32)
        if b == 4:
            u = (qweight[4 * r + c // 8] >> np.uint32(4 * (c % 8))) & 15
        elif b == 2:
            u = (qweight[2 * r + c // 16] >> np.uint32(2 * (c % 16))) & 3
        else:
            low = (qweight[3 * r + c // 16] >> np.uint32(2 * (c % 16))) & 3
            u = low | (((qweight[3 * r + 2] >> np.uint32(c)) & 1) << 2)
        z = u.astype(np.int64) - 2 ** (b - 1)
        w[:, perm[j]] = scales[j // g] * z
    cols = t["outlier_cols"].numpy().astype(np.int64)
    vals = t["outlier_vals"].numpy().astype(np.float64)
    for row in range(n):
        for col, val in zip(cols[row], vals[row]):
            if val != 0:
                w[row, perm[col]] += val
    return w


def random_layer(n, k, bits, group, outlier_rate=0.05, permute=True, seed=0):
    """(z (N, K) int, scales (N, K/G) fp16, perm (K,), dense outliers (N, K) fp16), valid per §2."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
    z = torch.randint(lo, hi, (n, k), generator=gen)
    z[0, :2] = torch.tensor([lo, hi - 1])  # extremes always present
    scales = (torch.rand(n, k // group, generator=gen) * 0.1 + 0.01).half()
    perm = torch.randperm(k, generator=gen) if permute else torch.arange(k)
    outliers = torch.zeros(n, k, dtype=torch.float16)
    mask = torch.rand(n, k, generator=gen) < outlier_rate
    mask[0, :2] = False
    outliers[mask] = (torch.randn(int(mask.sum()), generator=gen) + 3.0).half()
    z[mask] = 0
    return z, scales, perm, outliers


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_codes_round_trip_exact(bits):
    z = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (7, 96))
    z[:, 0], z[:, 95] = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = pack_codes(z, bits)
    assert q.dtype == torch.int32 and q.shape == (96 * bits // 32, 7)
    assert torch.equal(unpack_codes(q, bits, 96), z.int())


def test_four_bit_packing_is_gptq_layout():
    z = torch.arange(32).remainder(16).reshape(1, 32) - 8  # u = column % 16
    words = pack_codes(z, 4)[:, 0].numpy().view(np.uint32)
    for i in range(4):
        expected = sum(((8 * i + t) % 16) << (4 * t) for t in range(8))
        assert int(words[i]) == expected


@pytest.mark.parametrize("bits,group", [(2, 32), (3, 64), (4, 32)])
def test_layer_round_trip_and_independent_reader(bits, group):
    z, scales, perm, outliers = random_layer(9, 128, bits, group, seed=bits)
    t = pack_ssqr(z, scales, perm, outliers, bits)
    assert ssqr_meta(t) == (9, 128, bits, group)
    z2, s2, p2, o2 = unpack_ssqr(t)
    assert torch.equal(z2, z.int()) and torch.equal(s2, scales)
    assert torch.equal(p2, perm.int()) and torch.equal(o2, outliers)
    np.testing.assert_array_equal(dequantize_ssqr(t).double().numpy(), read_ssqr_numpy(t))


def test_outlier_ell_layout():
    z, scales, perm, outliers = random_layer(6, 64, 4, 32, outlier_rate=0.1, seed=3)
    outliers[2] = 0  # a row without outliers
    t = pack_ssqr(z, scales, perm, outliers, 4)
    counts = (outliers != 0).sum(1)
    cols, vals = t["outlier_cols"], t["outlier_vals"]
    assert cols.dtype == torch.int16 and vals.dtype == torch.float16
    assert cols.shape == (6, max(1, int(counts.max())))
    for row in range(6):
        c = int(counts[row])
        assert torch.equal(cols[row, :c].long(), (outliers[row] != 0).nonzero()[:, 0])
        assert (cols[row, c:] == 0).all() and (vals[row, c:] == 0).all()
        assert not torch.signbit(vals[row, c:].float()).any()
    no_outliers = pack_ssqr(z, scales, perm, torch.zeros_like(outliers), 4)
    assert no_outliers["outlier_cols"].shape == (6, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_reference_linear_matches_numpy(dtype):
    t = pack_ssqr(*random_layer(10, 64, 3, 32, seed=5), bits=3)
    x = torch.randn(2, 3, 64).to(dtype)
    bias = torch.randn(10).to(dtype)
    y = ssqr_linear_reference(x, t, bias)
    expected = x.double().numpy() @ read_ssqr_numpy(t).T + bias.double().numpy()
    assert y.dtype == dtype and y.shape == (2, 3, 10)
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=2 * eps,
                               atol=4 * eps * np.abs(expected).max())


def test_slice_rows_concat_round_trip():
    t = pack_ssqr(*random_layer(12, 64, 4, 32, seed=6), bits=4)
    parts = [slice_rows(t, 0, 5), slice_rows(t, 5, 7), slice_rows(t, 7, 12)]
    joined = concat_rows(parts)
    for name in t:
        assert torch.equal(joined[name], t[name]), name


def test_concat_rows_repads_caps():
    z, scales, perm, outliers = random_layer(4, 64, 4, 32, seed=7)
    a = pack_ssqr(z, scales, perm, outliers, 4)
    b = pack_ssqr(z[:2], scales[:2], perm, torch.zeros_like(outliers[:2]), 4)  # cap 1
    joined = concat_rows([a, b])
    assert joined["outlier_cols"].shape[1] == a["outlier_cols"].shape[1]
    expected = torch.cat([dequantize_ssqr(a), dequantize_ssqr(b)])
    assert torch.equal(dequantize_ssqr(joined), expected)


def test_slice_cols_partial_products_sum_to_full():
    parts, k = 4, 128
    z, scales, _, outliers = random_layer(8, k, 2, 32, outlier_rate=0.08, seed=8)
    width = k // parts
    perm = torch.cat([p * width + torch.randperm(width) for p in range(parts)])  # block-local
    t = pack_ssqr(z, scales, perm, outliers, 2)
    x = torch.randn(3, k, dtype=torch.float64)
    full = x @ torch.from_numpy(read_ssqr_numpy(t)).T
    total = sum(x[:, p * width:(p + 1) * width] @ torch.from_numpy(read_ssqr_numpy(
        slice_cols(t, p, parts))).T for p in range(parts))
    torch.testing.assert_close(total, full)


def test_slice_cols_rejects_non_local_perm_and_bad_parts():
    t = pack_ssqr(*random_layer(4, 128, 4, 32, seed=9), bits=4)
    with pytest.raises(ValueError, match="o_proj.*block-local"):
        slice_cols(t, 0, 2, layer="o_proj")
    with pytest.raises(ValueError, match="group size"):
        slice_cols(t, 0, 3)
    other = pack_ssqr(*random_layer(4, 128, 4, 32, seed=10), bits=4)
    with pytest.raises(ValueError, match="different perm"):
        concat_rows([t, other])


def _valid():
    return pack_ssqr(*random_layer(4, 64, 4, 32, seed=11), bits=4)


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t.update(perm=t["perm"].clone().fill_(0)), "perm: not a permutation"),
    (lambda t: t.update(qweight=t["qweight"][:-1]), "qweight"),
    (lambda t: t.update(scales=t["scales"].float()), "scales"),
    (lambda t: t.update(scales=t["scales"][:, :3]), "scales"),
    (lambda t: t.update(outlier_cols=t["outlier_cols"].flip(1)), "outlier"),
    (lambda t: t.update(outlier_cols=t["outlier_cols"].int()), "outlier_cols"),
    (lambda t: t.update(qweight=t["qweight"] + 1), "qweight: nonzero inlier code"),
    (lambda t: t.pop("outlier_vals"), "missing"),
])
def test_unpack_rejects_invalid_tensors(mutate, match):
    t = _valid()
    mutate(t)
    with pytest.raises(ValueError, match=match):
        unpack_ssqr(t)


def test_pack_rejects_invalid_input():
    z, scales, perm, outliers = random_layer(4, 64, 3, 32, seed=12)
    with pytest.raises(ValueError, match=r"z: codes must lie in \[-4, 3\]"):
        pack_codes(z + 4, 3)
    with pytest.raises(ValueError, match="z_stored: K=48"):
        pack_ssqr(z[:, :48], scales, perm[:48], outliers[:, :48], 3)
    with pytest.raises(ValueError, match="perm: not a permutation"):
        pack_ssqr(z, scales, perm.flip(0).clamp(max=62), outliers, 3)
    with pytest.raises(ValueError, match="bits"):
        pack_ssqr(z, scales, perm, outliers, 5)
    bad = outliers.clone()
    bad[z != 0] = 1.0
    with pytest.raises(ValueError, match="outliers: outlier at row"):
        pack_ssqr(z, scales, perm, bad, 3)
    with pytest.raises(ValueError, match="group size 16"):
        pack_ssqr(z, torch.ones(4, 4, dtype=torch.float16), perm, outliers, 3)
