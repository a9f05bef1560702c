"""The project's CPU kernel (babai_kernels.cpu_lut, C++ AVX-512 BF16) against fp64 references.

Exact case: small-integer activations, power-of-2 scales and residual values make every product
and partial sum exact in float32, so the kernel must equal the fp64 result rounded once to bf16.
General case: the only roundings are float32 accumulation (≤ K·2⁻²⁴·Σ|w·x| for any order) and the
final bf16 rounding (half an ulp of the result), so |y − y64| ≤ 2⁻⁸·|y64| + K·2⁻²⁴·Σ|w·x|.
"""
from __future__ import annotations

import pytest
import torch

from babai_kernels import cpu_lut, runtime

ok, why = cpu_lut.load()
pytestmark = pytest.mark.skipif(not ok, reason=f"babai CPU kernel unavailable: {why}")


def _layout(n, k, bits, group, seed, *, perm=True, row_scale=False, exact=False, rate=0.03):
    g = torch.Generator().manual_seed(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
    codes = torch.randint(lo, hi, (n, k), generator=g, dtype=torch.int8)
    if exact:
        scales = 2.0 ** -torch.randint(0, 4, (n, k // group), generator=g).float()
    else:
        scales = (torch.rand(n, k // group, generator=g) + 0.5).half().float()   # SSQR scales are fp16
    if row_scale:
        scales = torch.ones(n, k // group)
    r = torch.zeros(n, k)
    mask = torch.rand(n, k, generator=g) < rate
    r[mask] = torch.randint(-40, 40, (int(mask.sum()),), generator=g).float() * (1 if exact else 1.375)
    return runtime.DenseResidual(codes, bits, scales, runtime.Residual.from_dense(r),
                                 torch.randperm(k, generator=g) if perm else None,
                                 (2.0 ** -torch.randint(0, 3, (n,), generator=g).float()) if row_scale else None)


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 20])
def test_exact_inputs_give_the_fp64_product_rounded_once(bits, m):
    layout = _layout(48, 128, bits, 32, seed=bits * 100 + m, exact=True, row_scale=bits != 4)
    x = torch.randint(-3, 4, (m, 128), generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    y = cpu_lut.lut_linear(cpu_lut.pack(layout), x)
    expected = (x.double() @ runtime.dequantize(layout).double().T).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)


@pytest.mark.parametrize("bits, group, perm, row_scale", [
    (4, 64, True, False), (4, 32, False, False), (4, 128, True, True), (5, 384, True, True), (5, 64, False, False),
    (8, 32, False, True), (8, 64, True, False)])
@pytest.mark.parametrize("m", [1, 5, 8, 17])
def test_random_inputs_within_the_derived_bound(bits, group, perm, row_scale, m):
    n, k = 64, 384
    layout = _layout(n, k, bits, group, seed=m + group, perm=perm, row_scale=row_scale)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    y = cpu_lut.lut_linear(cpu_lut.pack(layout), x, bias).double()
    w = runtime.dequantize(layout).double()
    exact = x.double() @ w.T + bias.double()
    bound = 2 ** -8 * exact.abs() + k * 2 ** -24 * (x.double().abs() @ w.abs().T)
    assert bool(((y - exact).abs() <= bound).all()), float(((y - exact).abs() / bound).max())


def test_empty_residual_and_empty_batch():
    layout = _layout(32, 64, 4, 32, seed=1, rate=0.0)
    assert layout.residual.nnz == 0
    packed = cpu_lut.pack(layout)
    x = torch.randint(-3, 4, (2, 64)).to(torch.bfloat16)
    assert torch.equal(cpu_lut.lut_linear(packed, x), (x.double() @ runtime.dequantize(layout).double().T).to(torch.bfloat16))
    assert cpu_lut.lut_linear(packed, x[:0]).shape == (0, 32)


def test_layouts_it_cannot_serve_are_refused_with_the_reason():
    assert "N divisible by 16" in cpu_lut.check_layout(_layout(24, 64, 4, 32, seed=2))
    assert "multiple of 8" in cpu_lut.check_layout(runtime.DenseResidual(
        torch.zeros(16, 60, dtype=torch.int8), 4, torch.rand(16, 5), runtime.Residual.from_dense(torch.zeros(16, 60)),
        None, None))
    layout = _layout(32, 64, 4, 32, seed=3)
    layout.bits = 6
    with pytest.raises(ValueError, match=r"layout: serves \[4, 5, 8\]-bit dense codes"):
        cpu_lut.pack(layout)
    layout = _layout(32, 64, 4, 32, seed=3)
    layout.residual.vals[0] = 1 / 3
    assert "sums of ≤ 3 float16 terms" in cpu_lut.check_layout(layout)


def test_residual_values_beyond_float16_are_split_into_exact_terms():
    """HPTQ escapes: integer residuals like 19985 are not float16 numbers; they become two entries."""
    layout = _layout(32, 64, 4, 32, seed=6, exact=True, rate=0.05)
    layout.residual.vals[:3] = torch.tensor([19985.0, -70001.0, 2049.0])
    packed = cpu_lut.pack(layout)
    assert packed.vals.numel() == layout.residual.nnz + 4      # 19984+1, -65504-4496-1, 2048+1
    x = torch.randint(-3, 4, (3, 64), generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    expected = (x.double() @ runtime.dequantize(layout).double().T).to(torch.bfloat16)
    assert torch.equal(cpu_lut.lut_linear(packed, x), expected)


def test_bad_activations_are_refused_by_the_op():
    packed = cpu_lut.pack(_layout(32, 64, 4, 32, seed=4))
    with pytest.raises(RuntimeError, match="x must be \\(M, K\\) bfloat16"):
        cpu_lut.lut_linear(packed, torch.randn(2, 64))
    with pytest.raises(RuntimeError, match="packed has the wrong size"):
        cpu_lut.lut_linear(packed, torch.randn(2, 96).to(torch.bfloat16))


def test_hptq_siblings_keep_one_scale_per_block_and_no_group_scales():
    """Fused HPTQ siblings (own scale each, 32 + 16 rows): S = 1 is not stored, the row scale once per
    16 rows; the product still equals the checkpoint's weights in fp64, rounded once."""
    from babai_kernels.hptq.pack import encode_hptq
    g = torch.Generator().manual_seed(7)
    parts = [encode_hptq(torch.randint(-20, 20, (n, 64), generator=g), s, 32) for n, s in ((32, 0.25), (16, 0.125))]
    layout = runtime.from_hptq(parts, 64)
    packed = cpu_lut.pack(layout)
    assert packed.scales.numel() == 0 and packed.row_scale.tolist() == [0.25, 0.25, 0.125]
    x = torch.randint(-3, 4, (4, 64), generator=g).to(torch.bfloat16)
    expected = (x.double() @ runtime.dequantize(layout).double().T).to(torch.bfloat16)
    assert torch.equal(cpu_lut.lut_linear(packed, x), expected)
