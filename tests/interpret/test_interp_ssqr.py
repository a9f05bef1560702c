"""SSQR Triton kernels under TRITON_INTERPRET=1 (CPU) against the torch reference.

Triton picks the interpreter when a function is decorated — including triton.language's own
helpers (tl.sum, tl.zeros, ...) at `import triton` — so this module runs only in a process started
with TRITON_INTERPRET=1; tests/test_triton_interpreter.py starts one. On CUDA the same cases run on the GPU
(`pytest tests/interpret` with BABAI_TEST_DEVICE=cuda).
"""
import os

import pytest
import torch

DEVICE = os.environ.get("BABAI_TEST_DEVICE", "cpu")
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 at process start (run via tests/test_triton_interpreter.py)",
                allow_module_level=True)

from babai_kernels.ssqr import pack_ssqr, prepare_ssqr, ssqr_linear, ssqr_linear_reference
from babai_kernels.ssqr.linear import run_kernel
from babai_kernels.ssqr.tuning import GEMV_MAX_M, INTERPRET_GEMM, INTERPRET_GEMV
from tests.test_ssqr_pack import random_layer

CONFIGS = {
    "gemv-fused-splitk": ("gemv", INTERPRET_GEMV),
    "gemv-companion": ("gemv", dict(INTERPRET_GEMV, SPLIT_K=1, FUSE_OUTLIERS=False, BLOCK_K=64)),
    "gemm-fused": ("gemm", dict(INTERPRET_GEMM, BLOCK_K=64)),
    "gemm-companion": ("gemm", dict(INTERPRET_GEMM, FUSE_OUTLIERS=False, BLOCK_K=128)),  # > G
}
M_VALUES = {"gemv": (1, 3, 6), "gemm": (3, 17, 33)}


def assert_matches_reference(y, x, tensors, bias):
    """y (in x.dtype) equals the float32 reference up to output rounding and fp32 reassociation."""
    ref = ssqr_linear_reference(x.cpu().float(), tensors, None if bias is None else bias.cpu().float())
    eps = torch.finfo(x.dtype).eps
    assert y.dtype == x.dtype and y.shape == ref.shape
    torch.testing.assert_close(y.cpu().float(), ref, rtol=2 * eps,
                               atol=4 * eps * ref.abs().max().item())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("case", list(CONFIGS))
def test_kernel_matches_reference(bits, case):
    path, cfg = CONFIGS[case]
    n, k, group = 40, 192, 64  # N ragged for BLOCK_N=32; K spans several groups and tiles
    tensors = pack_ssqr(*random_layer(n, k, bits, group, seed=bits), bits=bits)
    prepared = prepare_ssqr(tensors, DEVICE)
    assert prepared.has_perm and prepared.has_outliers
    for i, m in enumerate(M_VALUES[path]):
        dtype = (torch.float16, torch.bfloat16)[(i + bits) % 2]
        x = torch.randn(m, k).to(dtype).to(DEVICE)
        bias = torch.randn(n).to(dtype).to(DEVICE) if i % 2 == 0 else None
        assert_matches_reference(run_kernel(x, prepared, bias, path, cfg), x, tensors, bias)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_kernel_without_outliers_or_permutation(dtype, path):
    z, scales, _, outliers = random_layer(24, 64, 4, 32, outlier_rate=0.0, permute=False)
    tensors = pack_ssqr(z, scales, torch.arange(64), outliers, 4)
    prepared = prepare_ssqr(tensors, DEVICE)
    assert not prepared.has_perm and not prepared.has_outliers
    x = torch.randn(5, 64).to(dtype).to(DEVICE)
    cfg = INTERPRET_GEMV if path == "gemv" else INTERPRET_GEMM
    assert_matches_reference(run_kernel(x, prepared, None, path, cfg), x, tensors, None)


@pytest.mark.parametrize("m", [2, GEMV_MAX_M + 4])
def test_ssqr_linear_dispatches_to_triton(monkeypatch, m):
    tensors = pack_ssqr(*random_layer(16, 96, 3, 32, seed=4), bits=3)
    prepared = prepare_ssqr(tensors, DEVICE)
    x = torch.randn(1, m, 96, dtype=torch.bfloat16).to(DEVICE)
    launched = []
    import babai_kernels.ssqr.linear as linear
    monkeypatch.setattr(linear, "run_kernel", lambda *a: launched.append(a[3]) or run_kernel(*a))
    y = ssqr_linear(x, prepared)
    assert launched[-1] == ("gemv" if m <= GEMV_MAX_M else "gemm")
    assert y.shape == (1, m, 16)
    assert_matches_reference(y.reshape(m, 16), x.reshape(m, 96), tensors, None)
