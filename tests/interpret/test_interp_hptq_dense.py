"""HPTQ's dense route (babai_kernels.choices.cuda.TritonHPTQDense: the SSQR Triton kernel over the
4-bit SSQR form of an HPTQ layer) under TRITON_INTERPRET=1, against the HPTQ reference.

Tolerance: the SSQR form rounds each weight once to float16 (≤ 2^-11 relative, see
runtime.to_ssqr_tensors), then the kernel's output rounding and fp32 reassociation, as in
test_interp_ssqr.py.
"""
import os

import pytest
import torch

DEVICE = os.environ.get("BABAI_TEST_DEVICE", "cpu")
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 at process start (run via tests/test_triton_interpreter.py)",
                allow_module_level=True)

from babai_kernels.choices.cuda import TritonHPTQDense  # noqa: E402
from babai_kernels.hptq.pack import dequantize_hptq  # noqa: E402
from babai_kernels.hptq.reference import hptq_linear_reference  # noqa: E402
from babai_kernels.layer_spec import FORMATS, Sibling, shard_layer  # noqa: E402
from tests.fixtures.tiny_checkpoint import quantize_hptq  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 5])
def test_dense_route_matches_the_hptq_reference(dtype, m):
    g = torch.Generator().manual_seed(m)
    parts = [quantize_hptq(torch.randn(n, 128, generator=g), chunk=32, levels=10)[0] for n in (48, 16)]
    spec = shard_layer(FORMATS["hptq"], [Sibling(f"l.{i}", p, None, p["chunk_bits"].shape[0])
                                         for i, p in enumerate(parts)], 128, None, torch.device(DEVICE),
                       act_dtype=dtype)
    kernel = TritonHPTQDense(spec)
    x, bias = torch.randn(m, 128, generator=g).to(dtype), torch.randn(64, generator=g).to(dtype)
    y = kernel.apply(x.to(DEVICE), bias.to(DEVICE)).cpu()
    ref = torch.cat([hptq_linear_reference(x.float(), p) for p in parts], dim=-1) + bias.float()
    eps = torch.finfo(dtype).eps
    w = torch.cat([dequantize_hptq(p, 128) for p in parts])
    bound = 2.0 ** -11 * (x.float().abs() @ w.abs().T) + 2 * eps * ref.abs() + 4 * eps * ref.abs().max()
    assert y.dtype == dtype
    assert ((y.float() - ref).abs() <= bound).all()
