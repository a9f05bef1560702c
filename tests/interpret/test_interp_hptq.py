"""HPTQ Triton kernels (decode, fused decode-GEMV, hptq_linear) in the interpreter vs the torch reference."""
import numpy as np
import pytest
import torch

from babai_kernels.hptq import (decode_hptq, dequantize_hptq, encode_hptq, hptq_linear_reference,
                          prepare_hptq)
from babai_kernels.hptq.decode import hptq_decode
from babai_kernels.hptq.gemv import GEMV_MAX_M
from babai_kernels.hptq.linear import hptq_linear

TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def layer(n, k, chunk_cols, width, seed):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, k, generator=gen, dtype=torch.float64) * width).round().to(torch.int64)
    z[0, 1], z[n - 1, k - 2] = 31000, -30000          # escapes
    return z, encode_hptq(z, 0.02, chunk_cols)


@pytest.mark.parametrize("n,k,chunk_cols", [(13, 48, 16), (5, 40, 8), (70, 32, 32)])
def test_decode_kernel_matches_reference(n, k, chunk_cols):
    z, tensors = layer(n, k, chunk_cols, 5.0, n)
    prepared = prepare_hptq(tensors, k, "cpu")
    assert torch.equal(hptq_decode(prepared), z.to(torch.int32))
    weight = dequantize_hptq(tensors, k)
    assert torch.equal(hptq_decode(prepared, torch.float32), weight)
    assert torch.equal(hptq_decode(prepared, torch.float16), weight.to(torch.float16))
    # The interpreter converts float32 → bfloat16 by truncation (GPUs round): within one ulp.
    bf16 = hptq_decode(prepared, torch.bfloat16).float()
    assert ((bf16 - weight).abs() <= weight.abs() * 2.0**-7).all()


@pytest.mark.parametrize("m", [1, 3, 5, GEMV_MAX_M + 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hptq_linear_matches_reference(m, dtype):
    n, k = 11, 48
    _, tensors = layer(n, k, 16, 3.0, m)
    prepared = prepare_hptq(tensors, k, "cpu")
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=gen).to(dtype)
    bias = torch.randn(n, generator=gen).to(dtype)
    for b in (None, bias):
        got, want = hptq_linear(x, prepared, b), hptq_linear_reference(x, tensors, b)
        assert got.dtype == dtype and got.shape == (m, n)
        scale = want.float().abs().max()
        assert (got.float() - want.float()).abs().max() <= TOL[dtype] * scale


def test_leading_dims_and_reference_path(monkeypatch):
    _, tensors = layer(6, 32, 16, 2.0, 0)
    x = torch.randn(2, 3, 32)
    want = hptq_linear_reference(x, tensors)
    assert torch.allclose(hptq_linear(x, prepare_hptq(tensors, 32, "cpu")), want, atol=1e-4)
    monkeypatch.setattr("babai_kernels.hptq.prepare.use_triton", lambda device: False)
    monkeypatch.setattr("babai_kernels.hptq.linear.use_triton", lambda device: False)
    prepared = prepare_hptq(tensors, 32, "cpu")
    assert prepared.weight is not None
    assert torch.allclose(hptq_linear(x, prepared), want, atol=1e-5)


def test_custom_op_has_a_fake_impl():
    _, tensors = layer(6, 32, 16, 2.0, 1)
    p = prepare_hptq(tensors, 32, "cpu")
    x = torch.randn(2, 32)
    torch.library.opcheck(torch.ops.babai.hptq_linear.default,
                          (x, p.stream, p.chunk_starts, p.lut_value, p.lut_info, p.scale,
                           p.out_features, p.chunk_cols, None),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs_raise_value_errors():
    _, tensors = layer(6, 32, 16, 2.0, 2)
    prepared = prepare_hptq(tensors, 32, "cpu")
    with pytest.raises(ValueError, match="x"):
        hptq_linear(torch.randn(2, 31), prepared)
    with pytest.raises(ValueError, match="x"):
        hptq_linear(torch.randn(2, 32, dtype=torch.float64), prepared)
    with pytest.raises(ValueError, match="bias"):
        hptq_linear(torch.randn(2, 32), prepared, torch.randn(5))
    with pytest.raises(ValueError, match="in_features"):
        prepare_hptq(tensors, 33, "cpu")


def test_kernels_stay_in_bounds_on_corrupt_streams():
    """Random words and shifted chunk sizes: garbage values of the right shape, no crash."""
    z, tensors = layer(9, 32, 16, 4.0, 3)
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.integers(-2**31, 2**31, size=tensors["stream"].numel(),
                                          dtype=np.int64).astype(np.int32))
    bits = tensors["chunk_bits"].clone()
    bits[0, 0] = 0                                  # every later chunk starts too early
    bits[-1, -1] += tensors["chunk_bits"][0, 0]
    for bad in ({**tensors, "stream": noise}, {**tensors, "chunk_bits": bits}):
        prepared = prepare_hptq(bad, 32, "cpu")
        assert hptq_decode(prepared).shape == z.shape
        assert hptq_linear(torch.randn(2, 32), prepared).isfinite().all()
        with pytest.raises(ValueError, match="corrupt"):
            decode_hptq(bad, 32)


def test_bench_cases_hit_the_target_rate_and_agree():
    from benchmarks.hptq_cases import hptq_bench_cases
    (case,) = hptq_bench_cases([(64, 64)], "cpu", target_bits=3.125)
    assert abs(case["bits_per_weight"] - 3.125) < 0.35      # a 64×64 layer: the code table weighs in
    x = torch.randn(2, 64)
    dense = x @ case["weight_bf16"].float().T
    scale = dense.abs().max()
    assert (case["fused"](x) - dense).abs().max() <= 2e-2 * scale
    assert (case["decode_matmul"](x) - dense).abs().max() <= 2e-2 * scale
