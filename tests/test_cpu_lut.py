"""The project's CPU kernel (babai_kernels.cpu_lut, C++: AVX-512 BF16 and AVX2 variants) against fp64
references, its argument checks and its instruction-set guard.

Exact case: small-integer activations, power-of-2 scales and residual values make every product
and partial sum exact in float32, so the kernel must equal the fp64 result rounded once to bf16.
General case: the only roundings are float32 accumulation (≤ K·2⁻²⁴·Σ|w·x| for any order) and the
final bf16 rounding (half an ulp of the result), so |y − y64| ≤ 2⁻⁸·|y64| + K·2⁻²⁴·Σ|w·x|. The AVX2
variant's codes' paths also round each row of x (⊙ α) to multiples of s = 2^(e − 14), e = ⌊log2 max|x|⌋
(≥ −112), within s/2 per element: |Δy_n| ≤ s/2 · Σ_k |S ⊙ Z · row_scale|_nk more (before the bf16
rounding, hence · (1 + 2⁻⁸)); inputs whose every element is ≥ 2⁻⁷·max|x| of its row are exact.
Both variants and both paths by batch size (codes decoded per pass, or once per chunk of rows:
`predecode_from`) are held to the same references.
"""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from babai_kernels import cpu_lut, runtime
from tests.fixtures.act8 import act8_block, round_blocks

ok, why = cpu_lut.load()
pytestmark = pytest.mark.skipif(not ok, reason=f"babai CPU kernel unavailable: {why}")
HOST = cpu_lut.host_features()
ISAS = [pytest.param(isa, marks=pytest.mark.skipif(cpu_lut.choose_isa(HOST, isa)[0] != isa,
                                                   reason=f"this CPU cannot run the {isa} variant"))
        for isa in cpu_lut.ISA_FEATURES]
# the op's paths by batch size: codes decoded per pass, once per chunk of rows, or tiles dequantized to
# bf16 for PyTorch's GEMM (each weight rounded once to bf16: one more term 2⁻⁹·Σ|w·x| of the bound)
NEVER = cpu_lut.NEVER
PATHS = {"per-pass": dict(predecode_from=NEVER, dense_from=NEVER, act8_from=NEVER),
         "predecoded": dict(predecode_from=1, dense_from=NEVER, act8_from=NEVER), "dense": dict(dense_from=1, act8_from=NEVER)}
EXACT_PATHS = ["per-pass", "predecoded"]   # the paths whose weights are exact


def _layout(n, k, bits, group, seed, *, perm=True, row_scale=False, exact=False, rate=0.03, col_scale=False):
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
                                 (2.0 ** -torch.randint(0, 3, (n,), generator=g).float()) if row_scale else None,
                                 (torch.rand(k, generator=g) + 0.5).half().float() if col_scale else None)


def _exact(layout, x, bias=None):
    """fp64 product (M, N) of x (M, K) with the layout's weights (+ bias)."""
    y = x.double() @ runtime.dequantize(layout).double().T
    return y if bias is None else y + bias.double()


def _fixed_point_step(layout, x):
    """(M,) float64: the step s = 2^(e − 14) to which the AVX2 variant rounds each row of x ⊙ α."""
    xs = runtime.scale_input(x, layout.col_scale).double()
    return 2.0 ** (torch.floor(torch.log2(xs.abs().amax(1))).clamp(min=-112) - 14)


def _fixed_point_bound(layout, x):
    """(M, N) float64: s/2 · Σ_k |S ⊙ Z · row_scale|_nk, the most x's rounding to fixed point moves y."""
    dense = (layout.scales.repeat_interleave(layout.group_size, dim=1) * layout.codes.float()).double().abs().sum(1)
    if layout.row_scale is not None:
        dense = dense * layout.row_scale.double().abs()
    return _fixed_point_step(layout, x)[:, None] / 2 * dense[None, :]


def _fixed_point_path(isa, path, bits, m):
    """Whether the call rounds x to 16-bit fixed point: the AVX2 variant's codes' paths, and the AVX-512
    variant's 8-bit blocks with 1-2 rows of x decoded per pass (they take the AVX2 variant's int16 path)."""
    return path != "dense" and (isa == "avx2" or (bits == 8 and m <= 2 and path == "per-pass"))


def _assert_within_bound(y, layout, x, bias, extra, fixed_point=False):
    """|y − y64| ≤ 2⁻⁸·|y64| + (K·2⁻²⁴ + extra)·Σ|w·x| elementwise (extra: relative roundings before the dots),
    + (1 + 2⁻⁸)·_fixed_point_bound with `fixed_point` (the AVX2 variant's codes' paths)."""
    exact = _exact(layout, x, bias)
    weights = runtime.dequantize(layout).double().abs()
    bound = 2 ** -8 * exact.abs() + (x.shape[1] * 2 ** -24 + extra) * (x.double().abs() @ weights.T)
    if fixed_point:
        bound = bound + (1 + 2 ** -8) * _fixed_point_bound(layout, x)
    assert bool(((y.double() - exact).abs() <= bound).all()), float(((y.double() - exact).abs() / bound).max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 20, 300])
def test_exact_inputs_give_the_fp64_product_rounded_once(isa, path, bits, m):
    """n = 48 rows: three blocks of 16, so the avx512 variant also runs a single-block unit."""
    layout = _layout(48, 128, bits, 32, seed=bits * 100 + m, exact=True, row_scale=bits != 4)
    x = torch.randint(-3, 4, (m, 128), generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    y = cpu_lut.lut_linear(cpu_lut.pack(layout, isa), x, **PATHS[path])
    assert y.dtype == torch.bfloat16 and torch.equal(y, _exact(layout, x).to(torch.bfloat16))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("m", [1, 3, 8, 20, 70, 300])
def test_residual_entry_by_entry_and_per_row_give_the_exact_product(isa, path, m):
    """A sparse residual (~70 entries over 64 rows): chunks of few rows of x add it entry by entry
    (rows of x · entries ≤ 10 · N), larger ones (m = 20, 70; 300: two chunks) row by row over xᵀ; all exact."""
    layout = _layout(64, 384, 4, 64, seed=7, exact=True, rate=0.003, row_scale=True)
    assert 0 < layout.residual.nnz * 3 <= 10 * 64 < layout.residual.nnz * 20
    x = torch.randint(-3, 4, (m, 384), generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    y = cpu_lut.lut_linear(cpu_lut.pack(layout, isa), x, **PATHS[path])
    assert torch.equal(y, _exact(layout, x).to(torch.bfloat16))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("m", [1, 4, 9, 70])
def test_blocks_of_different_widths_in_one_call(isa, path, m):
    """Runs of 5, 8, 4, 4, 8, 5 bits (32, 16, 16, 32, 48, 16 rows: pairs of blocks split where the width
    changes, single blocks between), each run's codes within its own width: the exact product."""
    runs = ((32, 5), (16, 8), (16, 4), (32, 4), (48, 8), (16, 5))
    parts = [_layout(n, 128, b, 32, seed=n + b + m, exact=True, row_scale=True) for n, b in runs]
    layout = runtime.DenseResidual(torch.cat([p.codes for p in parts]), 8, torch.cat([p.scales for p in parts]),
                                   runtime.Residual.from_dense(torch.cat([p.residual.to_dense(128) for p in parts])),
                                   None, torch.cat([p.row_scale for p in parts]), widths=runs)
    packed = cpu_lut.pack(layout, isa)
    assert packed.block_bits.tolist() == [5, 5, 8, 4, 4, 4, 8, 8, 8, 5]
    assert packed.packed.numel() == sum(n * 128 * b // 8 for n, b in runs)
    x = torch.randint(-3, 4, (m, 128), generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    assert torch.equal(cpu_lut.lut_linear(packed, x, **PATHS[path]), _exact(layout, x).to(torch.bfloat16))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bits, group, perm, row_scale", [
    (4, 64, True, False), (4, 32, False, False), (4, 128, True, True), (5, 384, True, True), (5, 64, False, False),
    (8, 32, False, True), (8, 64, True, False)])
@pytest.mark.parametrize("m", [1, 5, 8, 17])
@pytest.mark.parametrize("col_scale", [False, True])
def test_random_inputs_within_the_derived_bound(isa, path, bits, group, perm, row_scale, m, col_scale):
    """With per-column steps α the kernel rounds x ⊙ α once to bf16 (≤ 2⁻⁹ relative, + 2⁻²⁴ for the
    float32 product): one more term 2⁻⁹·Σ|w·x| of the bound (w includes α); the dense path another."""
    n, k = 64, 384
    layout = _layout(n, k, bits, group, seed=m + group, perm=perm, row_scale=row_scale, col_scale=col_scale)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    y = cpu_lut.lut_linear(cpu_lut.pack(layout, isa), x, bias, **PATHS[path])
    _assert_within_bound(y, layout, x, bias, ((2 ** -9 + 2 ** -23) if col_scale else 0.0) + (2 ** -9 if path == "dense" else 0.0),
                         fixed_point=_fixed_point_path(isa, path, bits, m))


@pytest.mark.parametrize("isa, path, bits, m", [
    *[("avx2", path, bits, m) for path in EXACT_PATHS for bits in (4, 5, 8) for m in (1, 2, 5, 8, 9)],
    ("avx512", "per-pass", 8, 1), ("avx512", "per-pass", 8, 2)])
def test_fixed_point_paths_round_each_row_of_x_to_16_bit_fixed_point(isa, path, bits, m):
    """The AVX2 variant's codes' paths (and the AVX-512 variant's 8-bit blocks at 1-2 rows of x, which take
    them) compute with x rounded per row to multiples of s = 2^(e − 14) (nearest, ties to even): with exact
    weights and sums the result is the fp64 product with that x, rounded once to bf16. Rows: one element
    255 (s = 2⁻⁷), the others below 1 with up to 16 fractional bits, times 2^r, r in [−60, 60) (s scales
    alike); the sums stay below 2²⁴·s, exact in float32."""
    assert _fixed_point_path(isa, path, bits, m)
    if cpu_lut.choose_isa(HOST, isa)[0] != isa:
        pytest.skip(f"this CPU cannot run the {isa} variant")
    layout = _layout(32, 128, bits, 32, seed=bits + m, exact=True, rate=0.0, row_scale=True)
    g = torch.Generator().manual_seed(m)
    x = torch.randint(-255, 256, (m, 128), generator=g).double() * 2.0 ** -torch.randint(8, 17, (m, 128), generator=g)
    x[:, 0] = 255
    x = (x * 2.0 ** torch.randint(-60, 60, (m, 1), generator=g)).to(torch.bfloat16)
    s = _fixed_point_step(layout, x)
    xq = torch.round(x.double() / s[:, None]) * s[:, None]   # torch.round: ties to even
    assert not torch.equal(xq, x.double())
    y = cpu_lut.lut_linear(cpu_lut.pack(layout, isa), x, **PATHS[path])
    assert torch.equal(y, (xq @ runtime.dequantize(layout).double().T).to(torch.bfloat16))


@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("group", [64, None])
def test_avx2_integer_sums_do_not_overflow(path, bits, group):
    """The largest codes times the largest fixed-point x (|q| = 32,640) over K = 1536 (no group scales:
    int32 sums over 512 columns at a time): the exact product."""
    if cpu_lut.choose_isa(HOST, "avx2")[0] != "avx2":
        pytest.skip("this CPU cannot run the avx2 variant")
    n, k = 32, 1536
    codes = torch.full((n, k), -(1 << (bits - 1)), dtype=torch.int8)
    codes[16:] = (1 << (bits - 1)) - 1
    layout = runtime.DenseResidual(codes, bits, torch.ones(n, k // (group or k)), runtime.Residual.from_dense(torch.zeros(n, k)),
                                   None, None)
    x = torch.full((2, k), 255 / 128).to(torch.bfloat16)
    x[1] = -x[1]
    y = cpu_lut.lut_linear(cpu_lut.pack(layout, "avx2"), x, **PATHS[path])
    assert torch.equal(y, _exact(layout, x).to(torch.bfloat16))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 8, 70])
def test_predecoded_group_scales_with_blocks_with_and_without_residual(isa, m):
    """Group scales and a sparse residual over n = 48 rows (units of two blocks and of one; blocks with and
    without entries): the chunk-predecoded path within the derived bound."""
    layout = _layout(48, 384, 4, 64, seed=2, rate=0.0005)
    entries = (layout.residual.offsets[16::16] - layout.residual.offsets[:-1:16]).tolist()   # per block of 16 rows
    assert 0 in entries and any(entries)
    x = torch.randn(m, 384, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    y = cpu_lut.lut_linear(cpu_lut.pack(layout, isa), x, **PATHS["predecoded"])
    _assert_within_bound(y, layout, x, None, 0.0, fixed_point=isa == "avx2")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bits, perm", [(4, True), (5, False), (8, True)])
@pytest.mark.parametrize("m", [1, 3, 9, 70])
def test_col_scale_in_the_op_equals_scaling_x_first(isa, path, bits, perm, m):
    """α applied inside the op (original column order, before the permutation) gives the very bits of
    runtime.scale_input(x, α) fed to the op without α: one float32 product and one rounding to bf16."""
    layout = _layout(64, 256, bits, 64, seed=bits + m, perm=perm, row_scale=True, col_scale=True)
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    with_alpha = cpu_lut.pack(layout, isa)
    assert torch.equal(with_alpha.col_scale, layout.col_scale)
    without = dataclasses.replace(with_alpha, col_scale=torch.empty(0))
    y = cpu_lut.lut_linear(with_alpha, x, **PATHS[path])
    assert torch.equal(y, cpu_lut.lut_linear(without, runtime.scale_input(x, layout.col_scale), **PATHS[path]))
    assert not torch.equal(y, cpu_lut.lut_linear(without, x, **PATHS[path]))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits, perm, n, k, group", [(4, True, 64, 256, 32), (5, False, 48, 384, 64), (8, True, 32, 128, 32),
                                                     (4, False, 32, 200, 40),      # 100 pairs: 8 per pass, then 4
                                                     (5, True, 2064, 2048, 32)])   # 8.1 MiB: two tiles
@pytest.mark.parametrize("m", [1, 33])
def test_dense_path_is_pytorch_bf16_linear_on_the_weights_rounded_once(isa, bits, perm, n, k, group, m):
    """From `dense_from` rows the op dequantizes tiles of rows to bf16 in stored column order,
    (S ⊙ Z + R) · row_scale rounded once, and runs F.linear on x ⊙ α in stored order: bit for bit
    torch's own bf16 linear on those weights, bias included."""
    layout = _layout(n, k, bits, group, seed=n + bits + m, perm=perm, row_scale=bits != 4, col_scale=True)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    y = cpu_lut.lut_linear(cpu_lut.pack(layout, isa), x, bias, dense_from=m, act8_from=NEVER)
    unscaled = dataclasses.replace(layout, col_scale=None)
    order = layout.perm if perm else torch.arange(k)
    weight = runtime.dequantize(unscaled)[:, order].to(torch.bfloat16)
    x_stored = runtime.scale_input(x, layout.col_scale)[:, order]
    assert torch.equal(y, torch.nn.functional.linear(x_stored, weight, bias))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("group, bits", [(32, 4), (None, 4), (None, 8)])
def test_default_dispatch_takes_the_dense_path_from_the_variants_crossover(isa, group, bits, monkeypatch):
    """A packed layout carries its variant's DENSE_FROM (by group scales or none, and 8-bit blocks without):
    from that many rows the default call is the dense path bit for bit, one row fewer the codes' path
    (int8 activations off: they take precedence over the dense path)."""
    monkeypatch.setenv(cpu_lut.ACT8_ENV, "0")
    layout = _layout(32, 128, bits, group or 128, seed=5, row_scale=group is None)
    packed = cpu_lut.pack(layout, isa)
    assert packed.dense_from == (cpu_lut.DENSE_FROM[isa][cpu_lut.dense_class(group is not None, bits)]
                                 if cpu_lut.bf16_gemm_native(HOST) else NEVER)
    if packed.dense_from == cpu_lut.NEVER:
        return
    x = torch.randn(packed.dense_from, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    assert torch.equal(cpu_lut.lut_linear(packed, x), cpu_lut.lut_linear(packed, x, dense_from=1))
    assert torch.equal(cpu_lut.lut_linear(packed, x[1:]), cpu_lut.lut_linear(packed, x[1:], dense_from=NEVER))


def test_bf16_gemm_native_by_host_features_and_onednn_cap(monkeypatch):
    """PyTorch's bf16 GEMM counts as multiplying in bf16 on a host with AVX-512 BF16 (or AMX-BF16, or
    AVX-NE-CONVERT), unless ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA caps oneDNN below those instructions."""
    for name in cpu_lut.ONEDNN_ISA_ENVS:
        monkeypatch.delenv(name, raising=False)
    assert cpu_lut.bf16_gemm_native(frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
    assert cpu_lut.bf16_gemm_native(frozenset({"avx2", "amx_bf16"}))
    assert not cpu_lut.bf16_gemm_native(frozenset({"avx2", "fma", "f16c", "avx512f", "avx512_vnni"}))
    for name in cpu_lut.ONEDNN_ISA_ENVS:
        for cap, native in (("avx2", False), ("AVX512_CORE_VNNI", False), ("AVX512_CORE_BF16", True), ("ALL", True)):
            monkeypatch.setenv(name, cap)
            assert cpu_lut.bf16_gemm_native(frozenset({"avx2", "avx512_bf16"})) is native, (name, cap)
        monkeypatch.delenv(name)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act8", ["0", ""])
def test_no_dense_path_where_pytorchs_bf16_gemm_is_not_native(isa, act8, monkeypatch):
    """With oneDNN capped at AVX2 (as on an AVX2-only host, where PyTorch's bf16 GEMM converts to float and
    runs ~10x slower than the codes' paths) a packed layout never takes the dense path, and its default call
    at a large M is the codes' path bit for bit."""
    monkeypatch.setenv(cpu_lut.ACT8_ENV, act8)
    layout = _layout(32, 128, 4, 32, seed=5)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    packed = cpu_lut.pack(layout, isa)
    assert packed.dense_from == NEVER
    x = torch.randn(600, 128, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    assert torch.equal(cpu_lut.lut_linear(packed, x), cpu_lut.lut_linear(packed, x, dense_from=NEVER))
    assert not torch.equal(cpu_lut.lut_linear(packed, x), cpu_lut.lut_linear(packed, x, dense_from=1, act8_from=NEVER))


@pytest.mark.parametrize("isa", ISAS)
def test_empty_residual_and_empty_batch(isa):
    layout = _layout(32, 64, 4, 32, seed=1, rate=0.0)
    assert layout.residual.nnz == 0
    packed = cpu_lut.pack(layout, isa)
    x = torch.randint(-3, 4, (2, 64)).to(torch.bfloat16)
    assert torch.equal(cpu_lut.lut_linear(packed, x), _exact(layout, x).to(torch.bfloat16))
    assert cpu_lut.lut_linear(packed, x[:0]).shape == (0, 32)


@pytest.mark.parametrize("isa", ISAS)
def test_avx2_rounds_to_nearest_even_like_torch(isa):
    """Outputs that sit exactly halfway between two bf16 numbers (x = 1 + 2⁻⁸ + …) and NaN: the
    variants' float32 → bf16 conversions agree with torch's."""
    layout = runtime.DenseResidual(torch.ones(16, 64, dtype=torch.int8), 4, torch.ones(16, 1),
                                   runtime.Residual.from_dense(torch.zeros(16, 64)), None, None)
    packed = cpu_lut.pack(layout, isa)
    x = torch.zeros(4, 64)
    x[0, 0], x[0, 1] = 1, 2 ** -8                    # 1 + 2⁻⁸: tie, rounds down to even 1
    x[1, 0], x[1, 1], x[1, 2] = 1, 2 ** -7, 2 ** -8   # 1 + 3·2⁻⁸: tie, rounds up to 1 + 2⁻⁶
    x[2, 0] = float("nan")
    x[3, 0], x[3, 1] = -1, -(2 ** -8)
    xb = x.to(torch.bfloat16)
    y = cpu_lut.lut_linear(packed, xb)
    expected = (x.double() @ torch.ones(64, 16, dtype=torch.float64)).float().to(torch.bfloat16)
    assert torch.equal(y[[0, 1, 3]], expected[[0, 1, 3]]) and bool(y[2].isnan().all())


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
    layout.widths = ((8, 4), (24, 4))
    assert "each dense width's rows divisible by 16" in cpu_lut.check_layout(layout)
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
    assert torch.equal(cpu_lut.lut_linear(packed, x), _exact(layout, x).to(torch.bfloat16))


def test_bad_activations_are_refused_by_the_op():
    packed = cpu_lut.pack(_layout(32, 64, 4, 32, seed=4))
    with pytest.raises(RuntimeError, match="x must be \\(M, K\\) bfloat16"):
        cpu_lut.lut_linear(packed, torch.randn(2, 64))
    with pytest.raises(RuntimeError, match="packed must be .* wrong size for x's K"):
        cpu_lut.lut_linear(packed, torch.randn(2, 96).to(torch.bfloat16))


def _faulty(fault: str, packed: cpu_lut.LutPacked) -> cpu_lut.LutPacked:
    """A copy of `packed` whose CSR residual has one fault."""
    off, cols = packed.offsets.clone(), packed.cols.clone()
    if fault == "first offset not 0":
        off[0] = 3
    elif fault == "last offset beyond nnz":
        off[-1] = 50_000_000
    elif fault == "last offset short of nnz":
        off[-1] -= 1
    elif fault == "decreasing offsets":
        off[5] = off[6] + 1
    elif fault == "negative offset":
        off[5] = -7
    elif fault == "column beyond K":
        cols[0] = 30_000
    return dataclasses.replace(packed, offsets=off, cols=cols)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fault, message", [
    ("first offset not 0", r"offsets\[0\] must be 0, got 3"),
    ("last offset beyond nnz", r"offsets\[N\] must equal the number of entries \d+, got 50000000"),
    ("last offset short of nnz", r"offsets\[N\] must equal the number of entries"),
    ("decreasing offsets", r"offsets must not decrease: offsets\[6\]"),
    ("negative offset", r"offsets must not decrease"),
    ("column beyond K", r"column 30000 is out of range for K = 256")])
def test_malformed_residual_is_refused_by_the_public_op(isa, fault, message):
    """The faults a review drove the unchecked op into (segfault, reads past x, NaN) now raise."""
    layout = _layout(64, 256, 4, 64, seed=9, rate=0.05)
    bad = _faulty(fault, cpu_lut.pack(layout, isa))
    x = torch.randn(3, 256).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="babai_cpu::lut_linear: residual " + message):
        torch.ops.babai_cpu.lut_linear(x, bad.packed, bad.block_bits, bad.scales, bad.group_size, bad.perm, bad.col_scale,
                                       bad.offsets, bad.cols, bad.vals, bad.row_scale, x.new_empty(0), isa)


@pytest.mark.parametrize("fault, message", [
    ("first offset not 0", r"offsets\[0\] must be 0"), ("last offset short of nnz", r"offsets\[64\] must equal"),
    ("negative offset", "offsets must not decrease"), ("column beyond K", r"columns must lie in \[0, 256\)")])
def test_malformed_residual_is_refused_by_pack(fault, message):
    layout = _layout(64, 256, 4, 64, seed=9, rate=0.05)
    r = layout.residual
    if fault == "first offset not 0":
        r.offsets[0] = 1
    elif fault == "last offset short of nnz":
        r.offsets[-1] -= 1
    elif fault == "negative offset":
        r.offsets[5] = -1
    else:
        r.cols[0] = 256
    with pytest.raises(ValueError, match="residual: " + message):
        cpu_lut.pack(layout)


def test_other_bad_arguments_are_refused_by_the_op():
    p = cpu_lut.pack(_layout(32, 64, 4, 32, seed=5))
    x = torch.randn(2, 64).to(torch.bfloat16)
    args = dict(x=x, packed=p.packed, block_bits=p.block_bits, scales=p.scales, group_size=p.group_size, perm=p.perm,
                col_scale=p.col_scale, offsets=p.offsets, cols=p.cols, vals=p.vals, row_scale=p.row_scale, bias=x.new_empty(0))
    for change, message in [(dict(group_size=0), "group_size must be a positive multiple of 8"),
                            (dict(scales=p.scales[:1]), "scales must be float16"),
                            (dict(perm=torch.arange(63)), r"perm must be \(K\) int64"),
                            (dict(col_scale=torch.ones(63)), r"col_scale must be contiguous float32 \(K\)"),
                            (dict(col_scale=torch.ones(64).half()), r"col_scale must be contiguous float32 \(K\)"),
                            (dict(vals=p.vals[:-1]), "residual must be CSR"),
                            (dict(row_scale=torch.ones(5)), "row_scale must be"),
                            (dict(bias=torch.ones(31)), r"bias must be \(N\)"),
                            (dict(isa="sse2"), "isa must be 'auto', 'avx2' or 'avx512'"),
                            (dict(block_bits=torch.tensor([4, 6], dtype=torch.uint8)),
                             "block_bits must be 4, 5 or 8, block 1 has 6"),
                            (dict(block_bits=torch.tensor([4, 5], dtype=torch.uint8)), "packed must be .* wrong size"),
                            (dict(block_bits=p.block_bits.int()), r"block_bits must be contiguous uint8 \(N/16\)")]:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.babai_cpu.lut_linear(**{**args, **change})
    with pytest.raises(RuntimeError, match=r"perm entries must lie in \[0, K\)"):
        torch.ops.babai_cpu.lut_linear(**{**args, "perm": torch.full((64,), 64)})


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
    assert torch.equal(cpu_lut.lut_linear(packed, x), _exact(layout, x).to(torch.bfloat16))


# --- the instruction-set guard -------------------------------------------------------------------

def test_cpuid_probe_agrees_with_the_kernel_of_the_os():
    """The op's own CPUID/XGETBV probe and Linux's /proc/cpuinfo flags name the same features."""
    used = {f for fs in cpu_lut.ISA_FEATURES.values() for f in fs} | {cpu_lut.ACT8_FEATURE}
    assert set(torch.ops.babai_cpu.cpu_features()) == HOST & used


@pytest.mark.parametrize("features, forced, expected", [
    ({"avx2", "fma", "f16c"}, None, ("avx2", None)),
    (set(cpu_lut.ISA_FEATURES["avx512"]), None, ("avx512", None)),
    (set(cpu_lut.ISA_FEATURES["avx512"]), "avx2", ("avx2", None)),
    ({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, "avx512", (None, "lacks avx512_bf16")),
    ({"avx2", "fma", "avx512f", "avx512_bf16"}, None, (None, "lacks f16c, which the kernel's build")),
    ({"avx2", "fma", "f16c"}, "neon", (None, "is not one of"))])
def test_variant_choice_follows_the_host_features(features, forced, expected):
    isa, why = cpu_lut.choose_isa(frozenset(features), forced)
    assert isa == expected[0] and (why is None if expected[1] is None else expected[1] in why)


def test_build_name_is_keyed_by_flags_and_host_features():
    feats = frozenset(cpu_lut.ISA_FEATURES["avx512"])
    name = cpu_lut.build_name(cpu_lut.build_flags(), feats)
    assert name != cpu_lut.build_name(cpu_lut.build_flags(), feats - {"avx512_bf16"})
    assert name != cpu_lut.build_name(cpu_lut.build_flags(sanitize=True), feats)
    assert name == cpu_lut.build_name(cpu_lut.build_flags(), feats | {"sse4_2"})   # features it never uses


def test_kernel_refuses_a_host_that_does_not_match_the_build(monkeypatch, caplog):
    """A host without the build's AVX2/FMA/F16C (here: the probe monkeypatched) is refused before anything
    is built or loaded, the reason returned and logged; the real host is accepted again afterwards."""
    monkeypatch.setattr(cpu_lut, "host_features", lambda: frozenset({"sse4_2", "avx", "avx512f", "avx512_bf16"}))
    cpu_lut.load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=cpu_lut.__name__):
            ok, why = cpu_lut.load()
        assert not ok and "lacks avx2, f16c, fma" in why
        assert any("babai CPU kernel refused" in r.message and "lacks avx2" in r.message for r in caplog.records)
        monkeypatch.setenv(cpu_lut.ISA_ENV, "avx512")
        monkeypatch.setattr(cpu_lut, "host_features", lambda: HOST - {"avx512_bf16"})
        cpu_lut.load.cache_clear()
        ok, why = cpu_lut.load()
        assert not ok and "BABAI_CPU_ISA=avx512 but this CPU lacks avx512_bf16" in why
    finally:
        monkeypatch.undo()
        cpu_lut.load.cache_clear()
    assert cpu_lut.load() == (True, None)


# ------------------------------------------------------------------ int8 activations (avx512 + VNNI: q8; avx2: y8)

ACT8 = pytest.mark.skipif(cpu_lut.choose_isa(HOST, "avx512")[0] != "avx512" or cpu_lut.ACT8_FEATURE not in HOST,
                          reason="int8 activations need the avx512 variant and AVX-512 VNNI")
# The variants whose int8 path this host runs.
ACT8_ISAS = [pytest.param("avx512", marks=ACT8),
             pytest.param("avx2", marks=pytest.mark.skipif(cpu_lut.choose_isa(HOST, "avx2")[0] != "avx2",
                                                           reason="the avx2 variant needs AVX2, FMA and F16C"))]


def _act8_x(layout, x):
    """(x̂, steps) float64 in original column order: x ⊙ α (rounded to bf16) rounded per row and block to int8
    as the kernel does (tests/fixtures/act8.py), and the step s of each element."""
    k = x.shape[1]
    order = layout.perm if layout.perm is not None else torch.arange(k)
    a = act8_block(k if layout.one_scale_per_row else layout.group_size, layout.col_scale is not None)
    stored, steps = round_blocks(runtime.scale_input(x, layout.col_scale)[:, order].float(), a)
    xh, st = torch.empty_like(stored), torch.empty_like(steps)
    xh[:, order], st[:, order] = stored, steps
    return xh, st


@pytest.mark.parametrize("isa", ACT8_ISAS)
@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("group, n, k, alpha", [(32, 48, 256, False), (64, 64, 384, False), (128, 32, 256, True),
                                                (None, 48, 256, True), (40, 32, 200, False), (None, 32, 200, True)])
@pytest.mark.parametrize("m", [1, 7, 20, 300])
def test_int8_activations_give_the_product_of_x_rounded_per_block(isa, bits, group, n, k, alpha, m):
    """From `act8_from` rows a variant rounds x ⊙ α per row and block of columns to int8 (_act8_x) and
    multiplies it with S ⊙ Z exactly (avx512: VPDPBUSD; avx2: VPMADDUBSW), the residual with x ⊙ α itself:
    equal to the fp64 product within float32 accumulation and the bf16 rounding; and within Σ_k |W_nk| · s_k / 2
    more of the product with x ⊙ α itself."""
    layout = _layout(n, k, bits, group or k, seed=bits * 7 + m + k, row_scale=group is None, col_scale=alpha, rate=0.01)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    x[0, : k // 8] *= 30                                    # an outlier block
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    y = cpu_lut.lut_linear(cpu_lut.pack(layout, isa), x, bias, act8_from=1, dense_from=NEVER).double()
    unscaled = dataclasses.replace(layout, col_scale=None)
    dense = runtime.dequantize(dataclasses.replace(unscaled, residual=runtime.Residual.from_dense(torch.zeros(n, k))))
    resid = runtime.dequantize(dataclasses.replace(unscaled, codes=torch.zeros_like(layout.codes)))
    xh, steps = _act8_x(layout, x)
    xa = runtime.scale_input(x, layout.col_scale).double()
    ref = xh @ dense.double().T + xa @ resid.double().T + bias.double()
    mag = xh.abs() @ dense.double().abs().T + xa.abs() @ resid.double().abs().T
    assert bool(((y - ref).abs() <= 2 ** -8 * ref.abs() + k * 2 ** -24 * mag).all())
    exact = xa @ (dense + resid).double().T + bias.double()   # the product with x ⊙ α as the kernel reads it
    half = steps * (0.5 + 2 ** -16)             # |x̂ − x ⊙ α| ≤ s / 2 per element, + float32's rounding of x · r
    rounding = half @ dense.double().abs().T
    assert bool(((y - exact).abs() <= 2 ** -8 * exact.abs() + k * 2 ** -24 * mag + (1 + 2 ** -8) * rounding).all())
    assert bool(((xh - xa).abs() <= half).all())


@pytest.mark.parametrize("isa", ACT8_ISAS)
@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activations_keep_a_row_with_nan_or_infinity_to_itself(isa, bits):
    layout = _layout(32, 128, bits, 64, seed=3)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    x[1, 5], x[2, 70] = float("nan"), float("inf")
    packed = cpu_lut.pack(layout, isa)
    y = cpu_lut.lut_linear(packed, x, act8_from=1, dense_from=NEVER)
    assert bool(y[[1, 2]].isnan().all()) and not bool(y[[0, 3]].isnan().any())
    assert torch.equal(y[[0, 3]], cpu_lut.lut_linear(packed, x[[0, 3]], act8_from=1, dense_from=NEVER))


@pytest.mark.parametrize("isa", ACT8_ISAS)
@pytest.mark.parametrize("bits", [4, 8])
def test_default_dispatch_takes_int8_activations_from_act8_from_unless_switched_off(isa, bits, monkeypatch):
    """A packed layout carries its variant's int8 threshold (avx512 on an AVX-512 VNNI host: ACT8_FROM by class;
    avx2: ACT8_FROM_AVX2 by width, 8-bit layouts NEVER): from that many rows the default call is the int8 path
    bit for bit (avx512: whatever DENSE_FROM; avx2: below its DENSE_FROM, at least ACT8_DENSE_FROM_AVX2, from
    which the dense path takes over), one row fewer the bf16 path; BABAI_CPU_ACT8=0 carries NEVER."""
    layout = _layout(32, 128, bits, 32, seed=9)
    packed = cpu_lut.pack(layout, isa)
    assert packed.act8_from == (cpu_lut.ACT8_FROM[cpu_lut.dense_class(True, bits)] if isa == "avx512"
                                else cpu_lut.ACT8_FROM_AVX2[bits])
    if packed.act8_from == NEVER:
        return
    x = torch.randn(packed.act8_from, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    dense_from = 1 if isa == "avx512" else NEVER
    assert torch.equal(cpu_lut.lut_linear(packed, x), cpu_lut.lut_linear(packed, x, act8_from=1, dense_from=dense_from))
    assert torch.equal(cpu_lut.lut_linear(packed, x[1:]), cpu_lut.lut_linear(packed, x[1:], act8_from=NEVER))
    if isa == "avx2" and cpu_lut.bf16_gemm_native(HOST):
        assert packed.dense_from == max(cpu_lut.DENSE_FROM[isa][cpu_lut.dense_class(True, bits)], cpu_lut.ACT8_DENSE_FROM_AVX2)
        big = torch.randn(packed.dense_from, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
        assert torch.equal(cpu_lut.lut_linear(packed, big), cpu_lut.lut_linear(packed, big, act8_from=NEVER, dense_from=1))
    monkeypatch.setenv(cpu_lut.ACT8_ENV, "0")
    assert cpu_lut.pack(layout, isa).act8_from == NEVER
