"""SSQR Triton kernel under TRITON_INTERPRET=1 (CPU) against the torch reference.

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
from babai_kernels.ssqr.tuning import INTERPRET
from tests.test_ssqr_pack import random_layer

CONFIGS = {  # name: (config, M values)
    "small-m-split-k": (INTERPRET, (1, 3, 6)),
    "small-m-one-part": (dict(INTERPRET, SPLIT_K=1, BLOCK_K=64), (2, 5)),
    "split-more-than-tiles": (dict(INTERPRET, SPLIT_K=16, BLOCK_N=16), (1,)),
    "two-m-tiles": (dict(INTERPRET, BLOCK_M=16, BLOCK_K=128), (17, 33)),   # BLOCK_K > G
    "large-m-tile": (dict(INTERPRET, BLOCK_M=32, SPLIT_K=1), (3, 40)),
}


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
    cfg, m_values = CONFIGS[case]
    n, k, group = 40, 192, 64  # N ragged for every BLOCK_N; K spans several groups and tiles
    tensors = pack_ssqr(*random_layer(n, k, bits, group, seed=bits), bits=bits)
    prepared = prepare_ssqr(tensors, DEVICE)
    assert prepared.has_perm and prepared.has_outliers
    for i, m in enumerate(m_values):
        dtype = (torch.float16, torch.bfloat16)[(i + bits) % 2]
        x = torch.randn(m, k).to(dtype).to(DEVICE)
        bias = torch.randn(n).to(dtype).to(DEVICE) if i % 2 == 0 else None
        assert_matches_reference(run_kernel(x, prepared, bias, cfg), x, tensors, bias)
        assert not prepared.locks.any()          # the last split-K program reset its counter


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kernel_without_outliers_or_permutation(dtype, bits):
    z, scales, _, outliers = random_layer(24, 64, bits, 32, outlier_rate=0.0, permute=False)
    tensors = pack_ssqr(z, scales, torch.arange(64), outliers, bits)
    prepared = prepare_ssqr(tensors, DEVICE)
    assert not prepared.has_perm and not prepared.has_outliers
    x = torch.randn(5, 64).to(dtype).to(DEVICE)
    assert_matches_reference(run_kernel(x, prepared, None, INTERPRET), x, tensors, None)


@pytest.mark.parametrize("m", [2, 19])
def test_ssqr_linear_dispatches_to_triton(monkeypatch, m):
    tensors = pack_ssqr(*random_layer(16, 96, 3, 32, seed=4), bits=3)
    prepared = prepare_ssqr(tensors, DEVICE)
    x = torch.randn(1, m, 96, dtype=torch.bfloat16).to(DEVICE)
    launched = []
    import babai_kernels.ssqr.linear as linear
    monkeypatch.setattr(linear, "run_kernel", lambda *a: launched.append(a[3]) or run_kernel(*a))
    y = ssqr_linear(x, prepared)
    assert launched and y.shape == (1, m, 16)
    assert_matches_reference(y.reshape(m, 16), x.reshape(m, 96), tensors, None)
