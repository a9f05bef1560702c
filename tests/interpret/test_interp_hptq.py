"""HPTQ Triton kernels (decode, fused decode-GEMV, hptq_linear) in the interpreter vs the torch reference.

On CUDA the same cases run on the GPU (`pytest tests/interpret` with BABAI_TEST_DEVICE=cuda)."""
import os

import numpy as np
import pytest
import torch

from babai_kernels.hptq import dequantize_hptq, encode_hptq, hptq_linear_reference, prepare_hptq
from babai_kernels.hptq.gemv import GEMV_MAX_M, hptq_decode, hptq_gemv
from babai_kernels.hptq.huffman import package_merge_lengths
from babai_kernels.hptq.lanes import LANE_CODE_LEN, build_lane_layout
from babai_kernels.hptq.linear import hptq_linear

DEVICE = os.environ.get("BABAI_TEST_DEVICE", "cpu")
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def layer(n, k, chunk_cols, width, seed):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, k, generator=gen, dtype=torch.float64) * width).round().to(torch.int64)
    z[0, 1], z[n - 1, k - 2] = 31000, -30000          # escapes
    return z, encode_hptq(z, 0.02, chunk_cols)


@pytest.mark.parametrize("n,k,chunk_cols", [(13, 48, 16), (5, 40, 8), (70, 32, 32), (9, 512, 256)])
def test_decode_kernel_matches_reference(n, k, chunk_cols):
    _, tensors = layer(n, k, chunk_cols, 5.0, n)
    prepared = prepare_hptq(tensors, k, DEVICE)
    assert prepared.lut.numel() == 1024
    weight = dequantize_hptq(tensors, k)
    assert torch.equal(hptq_decode(prepared, torch.float32).cpu(), weight)
    assert torch.equal(hptq_decode(prepared, torch.float16).cpu(), weight.to(torch.float16))
    # The interpreter converts float32 → bfloat16 by truncation (GPUs round): within one ulp.
    bf16 = hptq_decode(prepared, torch.bfloat16).cpu().float()
    assert ((bf16 - weight).abs() <= weight.abs() * 2.0**-7).all()


@pytest.mark.parametrize("m", [1, 3, 5, GEMV_MAX_M + 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hptq_linear_matches_reference(m, dtype):
    n, k = 11, 48
    _, tensors = layer(n, k, 16, 3.0, m)
    prepared = prepare_hptq(tensors, k, DEVICE)
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=gen).to(dtype)
    bias = torch.randn(n, generator=gen).to(dtype)
    for b in (None, bias):
        got = hptq_linear(x.to(DEVICE), prepared, None if b is None else b.to(DEVICE)).cpu()
        want = hptq_linear_reference(x, tensors, b)
        assert got.dtype == dtype and got.shape == (m, n)
        scale = want.float().abs().max()
        assert (got.float() - want.float()).abs().max() <= TOL[dtype] * scale


def test_leading_dims_and_refusal_without_triton(monkeypatch):
    _, tensors = layer(6, 32, 16, 2.0, 0)
    x = torch.randn(2, 3, 32)
    want = hptq_linear_reference(x, tensors)
    got = hptq_linear(x.to(DEVICE), prepare_hptq(tensors, 32, DEVICE)).cpu()
    assert torch.allclose(got, want, atol=1e-4)
    monkeypatch.setattr("babai_kernels.hptq.linear.use_triton", lambda device: False)
    with pytest.raises(ValueError, match="Triton cannot run"):
        hptq_linear(x, prepare_hptq(tensors, 32, "cpu"))


def test_fused_gemv_is_one_kernel_with_bias_and_cast():
    _, tensors = layer(7, 256, 32, 3.0, 5)
    p = prepare_hptq(tensors, 256, DEVICE)
    x, bias = torch.randn(3, 256).half(), torch.randn(7).half()
    y = hptq_gemv(x.to(DEVICE), p, bias.to(DEVICE)).cpu()
    assert y.dtype == torch.float16
    want = hptq_linear_reference(x, tensors, bias).float()
    assert (y.float() - want).abs().max() <= TOL[torch.float16] * want.abs().max()


def test_lane_code_is_the_optimal_10_bit_code():
    z, tensors = layer(32, 512, 256, 4.0, 6)
    lanes = build_lane_layout(z)
    assert lanes.padded_k == 512 and lanes.offsets.shape == (32 * 4,)   # (row, 128-column span)
    assert lanes.bases.shape == (32,)                                    # one group of 16 spans
    counts = torch.unique(z, return_counts=True)[1].numpy()
    assert lanes.payload_bits == int((package_merge_lengths(counts, LANE_CODE_LEN) * counts).sum())
    # the 10-bit limit (four codes per 64-bit window) costs little against the file's 12-bit code
    assert lanes.payload_bits <= 1.01 * int(tensors["chunk_bits"].to(torch.int64).sum())
    wide = z.clone()
    wide[0, 0] = 1 << 17                                   # beyond the float32 entry trick
    assert build_lane_layout(wide) is None
    with pytest.raises(ValueError, match="lane code"):        # the chooser serves it another way
        prepare_hptq(encode_hptq(wide, 0.02, 256), 512, DEVICE)


def test_custom_op_has_a_fake_impl():
    _, tensors = layer(6, 32, 16, 2.0, 1)
    p = prepare_hptq(tensors, 32, DEVICE)
    x = torch.randn(2, 32, device=DEVICE)
    torch.library.opcheck(torch.ops.babai.hptq_linear.default,
                          (x, p.words, p.bases, p.offsets, p.lut, p.scale, p.out_features, p.padded_k,
                           None),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("k,m", [(2200, 5), (4600, 8)])
def test_wide_layers_several_lane_groups(k, m):
    """K > 2048: lanes start from several int32 bases (16 lanes each); where x does not fit
    shared memory (K = 4600, M = 8) hptq_linear decodes, then multiplies."""
    from babai_kernels.hptq.gemv import gemv_fits
    _, tensors = layer(5, k, 200, 6.0, k)
    prepared = prepare_hptq(tensors, k, DEVICE)
    assert prepared.bases.numel() == 32 * -(-prepared.padded_k // 2048)
    assert gemv_fits(m, prepared.padded_k) == (k < 4096)
    assert torch.equal(hptq_decode(prepared, torch.float32).cpu(), dequantize_hptq(tensors, k))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k))
    got = hptq_linear(x.to(DEVICE), prepared).cpu()
    want = hptq_linear_reference(x, tensors)
    assert (got - want).abs().max() <= TOL[torch.float32] * want.abs().max()


def test_bad_inputs_raise_value_errors():
    _, tensors = layer(6, 32, 16, 2.0, 2)
    prepared = prepare_hptq(tensors, 32, DEVICE)
    with pytest.raises(ValueError, match="x"):
        hptq_linear(torch.randn(2, 31, device=DEVICE), prepared)
    with pytest.raises(ValueError, match="x"):
        hptq_linear(torch.randn(2, 32, dtype=torch.float64, device=DEVICE), prepared)
    with pytest.raises(ValueError, match="bias"):
        hptq_linear(torch.randn(2, 32, device=DEVICE), prepared, torch.randn(5, device=DEVICE))
    with pytest.raises(ValueError, match="in_features"):
        prepare_hptq(tensors, 33, "cpu")


def test_corrupt_streams_fail_at_load():
    """Random words or shifted chunk sizes: prepare_hptq decodes every chunk and names the bad one."""
    _, tensors = layer(9, 32, 16, 4.0, 3)
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.integers(-2**31, 2**31, size=tensors["stream"].numel(),
                                          dtype=np.int64).astype(np.int32))
    bits = tensors["chunk_bits"].clone()
    bits[0, 0] = 0                                  # every later chunk starts too early
    bits[-1, -1] += tensors["chunk_bits"][0, 0]
    for bad in ({**tensors, "stream": noise}, {**tensors, "chunk_bits": bits}):
        with pytest.raises(ValueError, match="corrupt"):
            prepare_hptq(bad, 32, "cpu")


def test_bench_cases_hit_the_target_rate_and_agree():
    from benchmarks.hptq_cases import hptq_bench_cases
    (case,) = hptq_bench_cases([(64, 64)], DEVICE, target_bits=3.125)
    assert abs(case["bits_per_weight"] - 3.125) < 0.35      # a 64×64 layer: the code table weighs in
    x = torch.randn(2, 64, device=DEVICE)
    dense = x @ case["weight_bf16"].float().T
    scale = dense.abs().max()
    assert (case["fused"](x) - dense).abs().max() <= 2e-2 * scale
    assert (case["decode_matmul"](x) - dense).abs().max() <= 2e-2 * scale


def test_without_gluon_the_kernel_says_why(monkeypatch):
    """A CUDA Triton older than 3.9 (no Gluon gather): the lane kernel reports why it cannot run."""
    from babai_kernels.hptq import prepare
    monkeypatch.setattr(prepare, "triton_interpret", lambda: False)
    monkeypatch.setattr(prepare, "gluon_available", lambda: False)
    assert "Gluon" in prepare.gpu_kernel_reason()
    monkeypatch.setattr(prepare, "gluon_available", lambda: True)
    assert prepare.gpu_kernel_reason() is None


def test_a_row_prefix_of_a_lane_layout_is_the_layer_of_those_rows():
    """benchmarks.gpu_stages serves 4096x4096 and 4096->6144 from the 4096->14336 layout's first
    rows: the prefix decodes to exactly those rows (K spanning two lane groups)."""
    from benchmarks.gpu_stages import prefix_layer
    torch.manual_seed(3)
    z = (torch.randn(96, 2304) * 3).round().to(torch.int64)
    lanes = build_lane_layout(z)
    for n in (32, 40, 96):
        p = prefix_layer(lanes.__dict__, 0.5, 2304, n, DEVICE)
        assert torch.equal(hptq_decode(p, torch.float32), (z[:n].float() * 0.5).to(DEVICE))
    with pytest.raises(ValueError, match="rows"):
        prefix_layer(lanes.__dict__, 0.5, 2304, 97, DEVICE)
