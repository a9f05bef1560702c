"""Every kernel path the chooser can pick on this CPU, inside vLLM, against transformers on the same
dequantized weights (tiny checkpoints; fresh engine per case: tests/fixtures/vllm_engine.py).

bfloat16 paths (BabaiLutCPU, TorchInt4CPU, TorchInt8CPU, VllmMixedPrecision): vLLM computes in bf16, so tokens can
flip at near ties; we compare teacher-forced per-token log-probabilities instead. Tolerance, derived
per checkpoint: transformers itself in bf16 (weights and activations rounded to bf16, the same
dequantized values) deviates from its fp32 run by at most d on these tokens. vLLM's bf16 run is
another bf16 evaluation whose roundings fall elsewhere (kernel accumulation order, fused ops, the
int4 kernel's bf16 group scales), so it may deviate by about d on its own; the two deviations can
add, and we keep a factor 2 for the different rounding points: |lp_vllm − lp_fp32| ≤ 4·d.
float32 path (HuffmanDecodeCPU decodes to float32): greedy tokens must be equal.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm")

from tests.fixtures.act8 import int8_x_like  # noqa: E402
from tests.fixtures.dequantized import load_dequantized  # noqa: E402
from tests.fixtures.tiny_checkpoint import (build_tiny_checkpoint, max_deviation,  # noqa: E402
                                           teacher_forced_logprobs, transformers_greedy)
from tests.fixtures.vllm_engine import kernels_used, run_engine  # noqa: E402

SEQUENCES = [[1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110],
             [1, 200, 7, 9, 11, 13, 300, 21, 23, 25],
             [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]
# name -> (format, build_tiny_checkpoint kwargs)
CHECKPOINTS = {
    "ssqr-w4": ("ssqr", dict(bits=4)), "ssqr-w3": ("ssqr", dict(bits=3)), "ssqr-w2": ("ssqr", dict(bits=2)),
    "hptq-4bit-dense": ("hptq", dict(hptq_levels=12)),     # codes ≈ ±12: 4-bit dense + residual wins
    "hptq-5bit-dense": ("hptq", dict(hptq_levels=24)),     # codes ≈ ±24: 5-bit dense + residual wins
    "hptq-8bit-dense": ("hptq", dict(hptq_levels=100)),    # codes ≈ ±100: 8-bit dense wins
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("kernels")
    out = {}
    for name, (fmt, kwargs) in CHECKPOINTS.items():
        build_tiny_checkpoint(root / name, fmt, **kwargs)
        out[name] = root / name
    return out


def reference_logprobs(folder, dtype: torch.dtype) -> list[list[float]]:
    """Teacher-forced log p(token_t | tokens_<t) of transformers on the reference dequantizer's weights."""
    return teacher_forced_logprobs(load_dequantized(folder, dtype=dtype)[0], SEQUENCES)


from babai_kernels import cpu_lut  # noqa: E402

LUT = "BabaiLutCPU" if cpu_lut.load()[0] else "TorchInt4CPU"
LUT8 = "BabaiLutCPU" if cpu_lut.load()[0] else "TorchInt8CPU"
NO_LUT = {"VLLM_DISABLED_KERNELS": "BabaiLutCPU"}
BF16_X = {cpu_lut.ACT8_ENV: "0"}   # BabaiLutCPU with bf16 x at every M (int8 activations: the test below)


@pytest.mark.parametrize("name, tp, env, kernel", [
    ("ssqr-w4", 1, BF16_X, LUT),
    ("ssqr-w4", 2, BF16_X, LUT),
    ("ssqr-w3", 1, BF16_X, LUT),
    ("ssqr-w2", 1, BF16_X, LUT),
    ("hptq-4bit-dense", 1, BF16_X, LUT),
    ("hptq-4bit-dense", 2, BF16_X, LUT),
    ("hptq-5bit-dense", 1, BF16_X, LUT8),
    ("hptq-8bit-dense", 1, BF16_X, LUT8),
    ("ssqr-w4", 1, NO_LUT, "TorchInt4CPU"),
    ("hptq-8bit-dense", 1, NO_LUT, "TorchInt8CPU"),
    ("ssqr-w4", 1, {"VLLM_DISABLED_KERNELS": "BabaiLutCPU,TorchInt4CPU"}, "VllmMixedPrecision[CPUWNA16LinearKernel]"),
])
def test_bf16_kernel_logprobs_match_transformers(checkpoints, name, tp, env, kernel):
    folder = checkpoints[name]
    fp32, bf16 = reference_logprobs(folder, torch.float32), reference_logprobs(folder, torch.bfloat16)
    d = max_deviation(bf16, fp32)
    assert 0 < d < 0.5, d                      # a sane bf16 reference (not identical, not broken)
    logprobs, log = run_engine(folder, tp, SEQUENCES, dtype="bfloat16", env=env)
    assert kernels_used(log) == {kernel}, log[-5:]
    assert max_deviation(logprobs, fp32) <= 4 * d, (max_deviation(logprobs, fp32), d)


@pytest.mark.skipif(cpu_lut.isa() != "avx512" or cpu_lut.ACT8_FEATURE not in cpu_lut.host_features(),
                    reason="int8 activations need the kernel's avx512 variant and AVX-512 VNNI")
@pytest.mark.parametrize("name", ["ssqr-w4", "hptq-5bit-dense", "hptq-8bit-dense"])
def test_int8_activations_logprobs_match_the_oracle_rounding_x_alike(checkpoints, name, monkeypatch):
    """BABAI_CPU_ACT8=1: every call rounds x to int8 per row and block (kernels/cpu_lut.cpp, q8). vLLM's bf16
    run is within 4·d + 2·r of the float32 oracle whose linears round x the same way (tests/fixtures/act8.py:
    hooks from the same layers packed here through transformers_babai), r its deviation from the plain
    oracle (rounding is discontinuous: tests/test_transformers_integration.py's int8 test)."""
    from transformers_babai import BabaiLinear, load_model

    monkeypatch.setenv(cpu_lut.ACT8_ENV, "1")
    folder = checkpoints[name]
    fp32, bf16 = reference_logprobs(folder, torch.float32), reference_logprobs(folder, torch.bfloat16)
    d = max_deviation(bf16, fp32)
    oracle, _ = load_dequantized(folder, dtype=torch.float32)
    layers = {n: m for n, m in load_model(folder, dtype=torch.bfloat16)[0].named_modules() if isinstance(m, BabaiLinear)}
    assert {m.kernel.packed.act8_from for m in layers.values()} == {1}
    for n, m in layers.items():
        oracle.get_submodule(n).register_forward_hook(int8_x_like(m.kernel.packed))
    rounded = teacher_forced_logprobs(oracle, SEQUENCES)
    logprobs, log = run_engine(folder, 1, SEQUENCES, dtype="bfloat16", env={cpu_lut.ACT8_ENV: "1"})
    assert kernels_used(log) == {"BabaiLutCPU"}, log[-5:]
    r = max_deviation(rounded, fp32)
    assert r > 0
    assert max_deviation(logprobs, rounded) <= 4 * d + 2 * r, (max_deviation(logprobs, rounded), d, r)


@pytest.mark.parametrize("tp", [1, 2])
def test_huffman_resident_hptq_gives_transformers_greedy_tokens(checkpoints, tp):
    folder = checkpoints["hptq-4bit-dense"]
    model, _ = load_dequantized(folder, dtype=torch.float32)
    expected = transformers_greedy(folder, model.state_dict(), [s[:5] for s in SEQUENCES], 10)
    tokens, log = run_engine(folder, tp, [s[:5] for s in SEQUENCES], new_tokens=10,
                             env={"VLLM_BABAI_HPTQ_RUNTIME": "huffman"})
    assert kernels_used(log) == {"HuffmanDecodeCPU"}
    assert tokens == expected
