"""The serving runtime layout (babai_kernels.runtime) and its CPU dense kernels (babai_kernels.cpu_dense):
lossless transcodes, width choice, kernels against fp64 references, and the kernel chooser."""
from __future__ import annotations

import pytest
import torch

from babai_kernels import cpu_dense, runtime
from babai_kernels.hptq.pack import dequantize_hptq, encode_hptq
from babai_kernels.ssqr.pack import pack_ssqr
from babai_kernels.ssqr.reference import dequantize_ssqr
from babai_kernels.ssqr.tp import concat_rows
from tests.fixtures.tiny_checkpoint import _perm, quantize_hptq, quantize_ssqr


def _ssqr(n, k, bits, group, seed=0, blocks=2):
    g = torch.Generator().manual_seed(seed)
    return quantize_ssqr(torch.randn(n, k, generator=g), _perm(k, blocks, g), bits, group, g)[0]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_ssqr_transcode_is_lossless(bits):
    tensors = _ssqr(24, 128, bits, 32, seed=bits)
    layout = runtime.from_ssqr(tensors)
    assert layout.bits == 4 and layout.residual.nnz == 2 * 24      # two outliers per row in the fixture
    assert torch.equal(layout.residual.offsets.diff(), torch.full((24,), 2, dtype=torch.int32))
    assert torch.equal(runtime.dequantize(layout), dequantize_ssqr(tensors))


def test_ssqr_fused_siblings_transcode_is_lossless():
    g = torch.Generator().manual_seed(3)
    perm = _perm(128, 1, g)
    parts = [quantize_ssqr(torch.randn(n, 128, generator=g), perm, 4, 64, g)[0] for n in (32, 16, 16)]
    fused = concat_rows(parts)
    assert torch.equal(runtime.dequantize(runtime.from_ssqr(fused)),
                       torch.cat([dequantize_ssqr(p) for p in parts]))


def test_hptq_transcode_reproduces_the_checkpoint_bit_for_bit():
    """Fused siblings with their own scales and tables, escapes included, at both dense widths."""
    g = torch.Generator().manual_seed(1)
    parts = [quantize_hptq(torch.randn(n, 96, generator=g) * s, chunk=48)[0] for n, s in ((16, 1.0), (8, 3.0))]
    expected = torch.cat([dequantize_hptq(p, 96) for p in parts])
    for bits in (4, 5, 8):
        layout = runtime.from_hptq(parts, 96, bits)
        assert layout.bits == bits and layout.residual.nnz > 0
        assert torch.equal(runtime.dequantize(layout), expected)


def _cpu_cost(z, bits, isa="avx512"):
    """The CPU kernel variant's modelled time (ns) of codes z at one dense width (runtime's constants)."""
    ns_weight, ns_entry = runtime.CPU_COSTS[isa]
    outside = ((z < -(1 << (bits - 1))) | (z > (1 << (bits - 1)) - 1)).sum()
    return z.numel() * ns_weight[bits] + int(outside) * ns_entry


@pytest.mark.parametrize("isa, first_three", [("avx512", [4, 8, 8]), ("avx2", [8, 8, 8])])
def test_hptq_dense_widths_take_the_fastest_width_per_group_of_rows(isa, first_three):
    """Each group of 32 rows gets the width of least modelled CPU time of the kernel variant (brute
    force over the widths here); equal neighbours merge into one run; a width shared by every row
    leaves widths None. 8-bit codes cost less than 5-bit ones in both variants (runtime.CPU_COSTS) and
    are the AVX2 variant's cheapest: every row takes 8 bits there."""
    z = torch.zeros(128 + 16, 64, dtype=torch.int64)
    assert runtime.hptq_dense_widths(z, isa) == ((144, first_three[0]),)
    z[32:64, :40] = 20                                   # 62 % outside 5 bits: 8
    z[64:96, :40] = 12                                   # 62 % outside 4 bits, inside 5: 8 (cheaper than 5)
    z[96:128, 0] = 20                                    # one code a row outside 4 bits
    z[128:, :3] = 100                                    # 16-row tail, 3 codes a row outside 5 bits
    expected = [min(runtime.DENSE_BITS, key=lambda b: _cpu_cost(z[r:r + 32], b, isa)) for r in range(0, 144, 32)]
    runs = runtime.hptq_dense_widths(z, isa)
    rows_bits = [b for n, b in runs for _ in range(n)]
    assert len(rows_bits) == 144
    assert [rows_bits[r] for r in range(0, 144, 32)] == expected
    assert expected[:3] == first_three
    assert all(a[1] != b[1] for a, b in zip(runs, runs[1:]))   # merged
    with pytest.raises(ValueError, match="no measured CPU costs for 'neon'"):
        runtime.hptq_dense_widths(z, "neon")


def test_hptq_layout_with_several_widths_reproduces_the_checkpoint():
    """Siblings whose codes need different ranges (q within 4 bits, k within 5, v needing 8): the default
    layout keeps one width per run of rows (4, then 8: on the AVX-512 variant 8-bit codes cost less than
    5-bit ones), codes within it; bit for bit the checkpoint."""
    g = torch.Generator().manual_seed(11)
    parts = [encode_hptq(torch.randint(-lim, lim, (n, 64), generator=g), s, 32)
             for n, lim, s in ((64, 8, 0.5), (32, 16, 0.25), (32, 100, 0.125))]
    layout = runtime.from_hptq(parts, 64)
    assert layout.widths == ((64, 4), (64, 8)) and layout.bits == 8 and layout.residual.nnz == 0
    for (lo, hi), (n, b) in zip(((0, 64), (64, 128)), layout.widths):
        assert int(layout.codes[lo:hi].abs().max()) <= 1 << (b - 1)
    assert torch.equal(runtime.dequantize(layout), torch.cat([dequantize_hptq(p, 64) for p in parts]))
    assert runtime.from_hptq(parts, 64, bits=5).widths is None
    assert layout.dense_bytes == (64 * 4 + 64 * 8) * 64 / 8


def _exact_case(n, k, group, seed):
    """A layout and activations whose products are exact in bf16/fp32 (small integers, power-of-2 scales)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(-8, 8, (n, k), generator=g)
    scales = 2.0 ** -torch.randint(2, 6, (n, k // group), generator=g).double()
    outliers = torch.zeros(n, k, dtype=torch.float16)
    outliers[torch.arange(n), torch.randint(0, k, (n,), generator=g)] = 3.0
    z[outliers != 0] = 0
    tensors = pack_ssqr(z.to(torch.int32), scales.half(), _perm(k, 2, g), outliers, 4)
    x = torch.randint(-3, 4, (5, k), generator=g).to(torch.bfloat16)
    return runtime.from_ssqr(tensors), x, dequantize_ssqr(tensors)


def _dense_reference(layout, xs):
    """x_stored @ (S ⊙ Z)ᵀ in float64 (exact here), rounded once to bfloat16 as the kernels' output is."""
    dense = layout.scales.double().repeat_interleave(layout.group_size, dim=1) * layout.codes.double()
    return (xs.double() @ dense.T).to(torch.bfloat16).double()


@pytest.mark.parametrize("group", [32, 64])
def test_int4_kernel_plus_residual_on_exact_inputs(group):
    """Small-integer activations and power-of-2 scales: the fp32 accumulation is exact, so the
    kernel equals the fp64 product rounded once to bf16, and the residual adds the outliers exactly."""
    layout, x, weight = _exact_case(48, 128, group, seed=group)
    xs = runtime.permute_input(x, layout.perm)
    dense = cpu_dense.int4_linear(cpu_dense.pack_int4(layout), xs)
    assert torch.equal(dense.double(), _dense_reference(layout, xs))
    y = runtime.add_residual(dense, layout.residual.parts(), xs)
    assert torch.equal((y - dense).double(), xs.double() @ layout.residual.to_dense(128).double().T)
    dense_exact = xs.double() @ (layout.scales.repeat_interleave(group, 1) * layout.codes).double().T
    error = (y.double() - x.double() @ weight.double().T).abs()
    assert bool((error <= 2 ** -8 * dense_exact.abs()).all())   # half a bf16 ulp of the dense part


def test_int8_kernel_on_an_hptq_layout():
    g = torch.Generator().manual_seed(5)
    z = torch.randint(-100, 100, (32, 64), generator=g)
    layout = runtime.from_hptq([encode_hptq(z, 0.25, 32)], 64, bits=8)
    x = torch.randint(-3, 4, (3, 64), generator=g).to(torch.bfloat16)
    dense = cpu_dense.int8_linear(cpu_dense.pack_int8(layout), x)
    assert torch.equal(dense.double(), _dense_reference(layout, x))
    torch.testing.assert_close((dense * layout.row_scale).double(), x.double() @ runtime.dequantize(layout).double().T,
                               rtol=2 ** -8, atol=0)


def test_int4_kernel_refuses_what_it_cannot_pack():
    layout = runtime.from_hptq([encode_hptq(torch.full((4, 64), 100), 1.0, 32)], 64, bits=8)
    with pytest.raises(ValueError, match="int4 kernel needs ≤ 4-bit codes"):
        cpu_dense.pack_int4(layout)
    with pytest.raises(ValueError, match="one scale per row"):
        cpu_dense.pack_int8(runtime.from_ssqr(_ssqr(8, 64, 4, 32)))


# --- HPTQ's dense route on the SSQR kernels (runtime.to_ssqr_tensors) ---------------------------

@pytest.mark.parametrize("levels", [6, 12, 40])
def test_hptq_as_ssqr_tensors_rounds_each_weight_once_to_fp16(levels):
    """Codes within 4 bits stay, the rest become outliers holding the whole weight; the SSQR
    dequantizer gives back each HPTQ weight within one float16 rounding of the fused scale
    (≤ 2^-11 relative), checked in float64 against the HPTQ reference dequantizer."""
    g = torch.Generator().manual_seed(levels)
    parts = [quantize_hptq(torch.randn(n, 128, generator=g), chunk=32, levels=levels)[0] for n in (32, 16)]
    layout = runtime.from_hptq(parts, 128, bits=4)
    tensors = runtime.to_ssqr_tensors(layout)
    got = dequantize_ssqr(tensors).double()
    want = torch.cat([dequantize_hptq(p, 128) for p in parts]).double()
    assert (got - want).abs().le(2.0 ** -11 * want.abs() + 2.0 ** -11 * 2.0 ** -14).all()
    moved = layout.residual.to_dense(128) != 0
    assert int((tensors["outlier_vals"] != 0).sum()) == int(moved.sum())
    with pytest.raises(ValueError, match="bits"):
        runtime.to_ssqr_tensors(runtime.from_hptq(parts, 128, bits=8))
