"""The kernel chooser's decision table (babai_kernels.chooser), without vLLM and without a GPU.

For every format and bit width the CLI writes × activation dtype × platform (CPU with AVX-512 BF16,
with AVX2 only, and with neither; CUDA with Triton ≥ 3.9's Gluon and with an older Triton) the
kernel picked is asserted. CUDA is simulated: `plan` never touches a device; resident bytes of the CUDA kernels are
measured by building them on the CPU (same tensors, same sizes). Layers are SmolLM2-135M's decoder
shapes, with codes drawn as a real checkpoint's are (Gaussian weights, heavy columns, rounded to
the format's grid at the step that gives the target rate).
"""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from babai_kernels import aot, chooser, common, cpu_lut
from babai_kernels.choices import cuda as cuda_choices
from babai_kernels.hptq import prepare as hptq_prepare
from babai_kernels.hptq.pack import choose_chunk_cols, encode_hptq
from babai_kernels.layer_spec import FORMATS, Sibling, shard_layer
from babai_kernels.ssqr.pack import pack_ssqr

HIDDEN, INTER, KV = 576, 1536, 192
LAYERS = {"qkv_proj": ([HIDDEN, KV, KV], HIDDEN), "o_proj": ([HIDDEN], HIDDEN),
          "gate_up_proj": ([INTER, INTER], HIDDEN), "down_proj": ([HIDDEN], INTER)}
CHECKPOINTS = ["ssqr-w2", "ssqr-w3", "ssqr-w4", "hptq-3.3", "hptq-4.3", "hptq-6"]
PLATFORMS = ["cpu-avx512bf16", "cpu-avx2", "cpu-no-avx2", "cuda-triton-gluon", "cuda-triton-old"]
NO_AVX2 = "this CPU lacks avx2, f16c, fma, which the kernel's build (-mavx2 -mfma -mf16c) needs"


def _weights(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    w = torch.randn(n, k, generator=g) * 0.02
    w[:, torch.randint(0, k, (k // 16,), generator=g)] *= 5.0
    return w


def _ssqr_module(w: torch.Tensor, bits: int, g: torch.Generator, group: int = 64) -> dict:
    """RTN at the b-bit grid with scale = 2.5·rms of each group; values beyond it are outliers."""
    n, k = w.shape
    qmax = 2 ** (bits - 1) - 1
    scales = (w.reshape(n, k // group, group).pow(2).mean(-1).sqrt() * 2.5 / qmax).half()
    s = scales.float().repeat_interleave(group, dim=1)
    z = torch.round(w / s)
    far = (z < -qmax - 1) | (z > qmax)
    outliers = torch.where(far, w, 0).half()
    return pack_ssqr(torch.where(far, 0, z).long(), scales, torch.randperm(k, generator=g), outliers, bits)


def _hptq_module(w: torch.Tensor, target_bits: float) -> dict:
    """RTN on the unbounded grid at the step whose entropy ≈ target_bits (Gaussian: 2.05 + log2 σ/step)."""
    step = float(w.std()) * 2 ** (2.05 - target_bits)
    return encode_hptq(torch.round(w / step).to(torch.int32), step, choose_chunk_cols(w.shape[1]))


@pytest.fixture(scope="module")
def checkpoints() -> dict[str, dict[str, tuple[list[dict], int]]]:
    """{checkpoint: {layer: ([module tensors of each sibling], K)}} — one decoder layer each."""
    out = {}
    for name in CHECKPOINTS:
        fmt, _, rate = name.partition("-")
        g = torch.Generator().manual_seed(len(out))
        layers = {}
        for layer, (sizes, k) in LAYERS.items():
            ws = [_weights(n, k, g) for n in sizes]
            if fmt == "ssqr":            # fused siblings share a permutation: one matrix
                modules = [_ssqr_module(torch.cat(ws), int(rate[1:]), g)]
            else:
                modules = [_hptq_module(w, float(rate)) for w in ws]
            layers[layer] = (modules, k)
        out[name] = layers
    return out


def specs(layers, act_dtype: torch.dtype, device: str):
    fmt = "ssqr" if "qweight" in next(iter(layers.values()))[0][0] else "hptq"
    for name, (modules, k) in layers.items():
        n = lambda t: t["qweight"].shape[1] if fmt == "ssqr" else t["chunk_bits"].shape[0]  # noqa: E731
        siblings = [Sibling(f"model.layers.0.{name}.{i}", t, None, n(t)) for i, t in enumerate(modules)]
        yield name, shard_layer(FORMATS[fmt], siblings, k, None, torch.device(device), act_dtype=act_dtype)


@pytest.fixture()
def platform(request, monkeypatch):
    """Simulate the platform named by the test's `platform_name` parameter."""
    name = request.param
    if name.startswith("cpu"):
        ok = name != "cpu-no-avx2"
        monkeypatch.setattr(cpu_lut, "load", lambda: (True, None) if ok else (False, NO_AVX2))
    else:   # an older Triton (3.6, the lent GPU image's): the AOT bundle launches what it holds
        monkeypatch.setattr(cuda_choices, "triton_available", lambda: True)
        monkeypatch.setattr(hptq_prepare, "triton_available", lambda: True)
        monkeypatch.setattr(hptq_prepare, "triton_interpret", lambda: False)
        monkeypatch.setattr(aot, "triton_version", lambda: (3, 9) if name == "cuda-triton-gluon" else (3, 6))
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        common.gluon_available.cache_clear()
        request.addfinalizer(common.gluon_available.cache_clear)
        if name == "cuda-triton-gluon":
            monkeypatch.setattr(hptq_prepare, "gluon_available", lambda: True)
    return name


def expected_kernel(platform: str, checkpoint: str, act: torch.dtype, spec) -> str:
    fmt = checkpoint.partition("-")[0]
    if platform.startswith("cuda"):
        if fmt == "ssqr":
            return "TritonSSQR"
        return "HuffmanLanes" if platform == "cuda-triton-gluon" else "TritonHPTQDense"
    if act != torch.bfloat16:
        return "TorchReference"
    if platform != "cpu-no-avx2":
        return "BabaiLutCPU"                   # its AVX-512 BF16 or AVX2 variant (cpu_lut.isa())
    return {4: "TorchInt4CPU", 5: "TorchInt8CPU", 8: "TorchInt8CPU"}[spec.dense_layout().bits]


CASES = [(p, c, a) for p in PLATFORMS for c in CHECKPOINTS
         for a in ((torch.bfloat16, torch.float32) if p.startswith("cpu") else (torch.float16, torch.bfloat16))]


@pytest.mark.parametrize("platform, checkpoint, act", CASES, indirect=["platform"],
                         ids=[f"{p}-{c}-{str(a)[6:]}" for p, c, a in CASES])
def test_decision_table(platform, checkpoint, act, checkpoints):
    device = "cuda" if platform.startswith("cuda") else "cpu"
    for name, spec in specs(checkpoints[checkpoint], act, device):
        cls, reasons = chooser.plan(spec)
        assert cls.__name__ == expected_kernel(platform, checkpoint, act, spec), (name, reasons)
        assert len(reasons) == chooser.KERNELS[device].index(cls)     # a reason from each kernel above


@pytest.mark.parametrize("platform", ["cuda-triton-gluon", "cuda-triton-old"], indirect=True)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_cuda_resident_bytes_stay_near_the_checkpoint(platform, checkpoint, checkpoints):
    """On CUDA the quantized linears hold ≤ 1.10x their stored bytes (built here on the CPU)."""
    resident = stored = 0
    for name, spec in specs(checkpoints[checkpoint], torch.bfloat16, "cuda"):
        cls, _ = chooser.plan(spec)
        if platform == "cuda-triton-old" and cls.__name__ == "TritonHPTQDense":
            continue                            # the fallback of an old Triton: checked below
        resident += cls(dataclasses.replace(spec, device=torch.device("cpu"))).resident_bytes()
        stored += spec.stored_bytes()
    if stored:
        assert resident <= 1.10 * stored, (resident / stored)


def test_cpu_resident_bytes_count_the_per_column_steps():
    """HPTQ with α: HuffmanDecodeCPU keeps the checkpoint tensors and α as float32; BabaiLutCPU's packed
    tensors include α (K float32) too."""
    from babai_kernels.choices.cpu import BabaiLutCPU
    from babai_kernels.choices.reference import HuffmanDecodeCPU
    from babai_kernels.layer_spec import LinearSpec
    g = torch.Generator().manual_seed(2)
    alpha = (torch.rand(64, generator=g) + 0.5).half()
    tensors = encode_hptq(torch.randint(-9, 10, (32, 64), generator=g, dtype=torch.int32), 0.01, 32, col_steps=alpha)
    spec = LinearSpec("hptq", None, (32, 64), torch.bfloat16, torch.device("cpu"), [tensors])
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert HuffmanDecodeCPU(spec).resident_bytes() == stored + 64 * 4
    if BabaiLutCPU.can_implement(spec)[0]:
        plain = LinearSpec("hptq", None, (32, 64), torch.bfloat16, torch.device("cpu"),
                           [{n: t for n, t in tensors.items() if n != "col_steps"}])
        kernel = BabaiLutCPU(spec)
        assert torch.equal(kernel.packed.col_scale, alpha.float())
        assert kernel.resident_bytes() == BabaiLutCPU(plain).resident_bytes() + 64 * 4


def test_cpu_kernel_packs_the_layout_of_its_variant():
    """HPTQ's widths per 32 rows follow the measured costs of the variant that runs (runtime.CPU_COSTS):
    rows within 4 bits get 4 for AVX-512 and 8 for AVX2; BabaiLutCPU packs its own variant's layout,
    the spec builds each layout once per variant, and one of an explicit width only once."""
    from babai_kernels.choices.cpu import BabaiLutCPU
    from babai_kernels.layer_spec import LinearSpec
    g = torch.Generator().manual_seed(3)
    tensors = encode_hptq(torch.randint(-8, 8, (32, 64), generator=g, dtype=torch.int32), 0.01, 32)
    spec = LinearSpec("hptq", None, (32, 64), torch.bfloat16, torch.device("cpu"), [tensors])
    assert spec.dense_layout().bits == 4 and spec.dense_layout(isa="avx2").bits == 8
    assert spec.dense_layout(isa="avx2") is spec.dense_layout(isa="avx2")
    assert spec.dense_layout(5, isa="avx2") is spec.dense_layout(5)
    if BabaiLutCPU.can_implement(spec)[0]:
        kernel = BabaiLutCPU(spec)
        assert kernel.variant == kernel.packed.isa == cpu_lut.isa()
        assert kernel.packed.block_bits.tolist() == [spec.dense_layout(isa=kernel.variant).bits] * 2


def test_old_triton_dense_route_memory_is_logged_not_hidden(checkpoints, monkeypatch, caplog):
    """HPTQ-3.3 on a Triton without Gluon: the 4-bit SSQR form, its resident bits in the log line."""
    monkeypatch.setattr(hptq_prepare, "gluon_available", lambda: False)
    monkeypatch.setattr(hptq_prepare, "triton_interpret", lambda: False)
    (_, spec), *_ = specs(checkpoints["hptq-3.3"], torch.bfloat16, "cpu")
    kernel = cuda_choices.TritonHPTQDense(spec)
    bits = 8 * kernel.resident_bytes() / (spec.shape[0] * spec.shape[1])
    assert 4 < bits < 6, bits              # 4-bit codes + fp16 group scales + the outliers


def test_cuda_never_falls_to_the_reference_unless_everything_is_disabled(checkpoints, monkeypatch, caplog):
    monkeypatch.setattr(cuda_choices, "triton_available", lambda: True)
    (_, spec), *_ = specs(checkpoints["ssqr-w4"], torch.bfloat16, "cuda")
    others = [k.__name__ for k in chooser.KERNELS["cuda"] if k.__name__ != "TorchReference"]
    monkeypatch.setenv("VLLM_DISABLED_KERNELS", ",".join(others))
    cls, reasons = chooser.plan(spec)
    assert cls.__name__ == "TorchReference"
    assert reasons == [f"{k}: disabled by VLLM_DISABLED_KERNELS" for k in others]
    spec = dataclasses.replace(spec, device=torch.device("cpu"))
    monkeypatch.setenv("VLLM_DISABLED_KERNELS", ",".join(k.__name__ for k in chooser.KERNELS["cpu"][:-1]))
    with caplog.at_level(logging.WARNING, logger="vllm.babai"):
        chooser.choose_kernel(spec, "model.layers.0.qkv_proj")
    assert "TorchReference (" in caplog.text and "dense float32 weights" in caplog.text
    assert all(f"{k.__name__}: disabled" in caplog.text for k in chooser.KERNELS["cpu"][:-1])


def test_the_log_line_names_the_winner_and_why_better_kernels_refused(checkpoints, monkeypatch, caplog):
    monkeypatch.setattr(cpu_lut, "load", lambda: (False, NO_AVX2))
    (_, spec), *_ = specs(checkpoints["ssqr-w3"], torch.bfloat16, "cpu")
    with caplog.at_level(logging.INFO, logger="vllm.babai"):
        kernel = chooser.choose_kernel(spec, "model.layers.0.qkv_proj")
        chooser.choose_kernel(spec, "model.layers.1.qkv_proj")            # same shape: logged once
    assert type(kernel).__name__ == "TorchInt4CPU"
    lines = [r.getMessage() for r in caplog.records if "babai kernel for" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "ssqr 960x576 (bfloat16, cpu): TorchInt4CPU (" in lines[0]
    assert f"BabaiLutCPU: {NO_AVX2}" in lines[0]
    assert "HuffmanDecodeCPU: HPTQ with VLLM_BABAI_HPTQ_RUNTIME=huffman only" in lines[0]


def test_hptq_runtime_override(checkpoints, monkeypatch):
    monkeypatch.setattr(cuda_choices, "triton_available", lambda: True)
    monkeypatch.setattr(hptq_prepare, "triton_available", lambda: True)
    monkeypatch.setattr(hptq_prepare, "gluon_available", lambda: True)
    monkeypatch.setattr(hptq_prepare, "triton_interpret", lambda: False)
    layers = checkpoints["hptq-4.3"]
    picks = lambda device: {chooser.plan(s)[0].__name__ for _, s in specs(layers, torch.bfloat16, device)}  # noqa: E731
    monkeypatch.setenv("VLLM_BABAI_HPTQ_RUNTIME", "dense")
    assert picks("cuda") == {"TritonHPTQDense"}
    monkeypatch.setenv("VLLM_BABAI_HPTQ_RUNTIME", "huffman")
    assert picks("cuda") == {"HuffmanLanes"} and picks("cpu") == {"HuffmanDecodeCPU"}
    monkeypatch.setenv("VLLM_BABAI_HPTQ_RUNTIME", "fast")
    with pytest.raises(ValueError, match="VLLM_BABAI_HPTQ_RUNTIME='fast'"):
        picks("cuda")


def test_unknown_platform_and_bad_checkpoint_errors_name_the_layer(checkpoints):
    (_, spec), *_ = specs(checkpoints["ssqr-w4"], torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="model.layers.0.qkv_proj: no babai kernel can serve ssqr 960x576"):
        chooser.choose_kernel(dataclasses.replace(spec, device=torch.device("meta")), "model.layers.0.qkv_proj")


@pytest.mark.parametrize("platform", ["cuda-triton-old"], indirect=True)
def test_old_triton_serves_hptq_lanes_where_the_aot_bundle_holds_the_shape(platform):
    """The lent GPU image (Triton 3.6): Llama-3-8B's K = 4096 in bfloat16 is in the bundle (lanes),
    float16 is not (the dense route on the SSQR kernel, compiled by the old Triton)."""
    g = torch.Generator().manual_seed(0)
    module = _hptq_module(_weights(64, 4096, g), 3.3)
    for act, expected in ((torch.bfloat16, "HuffmanLanes"), (torch.float16, "TritonHPTQDense")):
        spec = shard_layer(FORMATS["hptq"], [Sibling("model.layers.0.o_proj", module, None, 64)], 4096, None,
                           torch.device("cuda"), act_dtype=act)
        cls, reasons = chooser.plan(spec)
        assert cls.__name__ == expected, reasons


def test_the_cpu_kernel_log_line_names_its_instruction_set(checkpoints, caplog):
    if not cpu_lut.load()[0]:
        pytest.skip(f"the CPU kernel cannot run here: {cpu_lut.load()[1]}")
    (_, spec), *_ = specs(checkpoints["hptq-4.3"], torch.bfloat16, "cpu")
    chooser._logged.clear()
    with caplog.at_level(logging.INFO, logger="vllm.babai"):
        kernel = chooser.choose_kernel(spec, "model.layers.0.qkv_proj")
    assert kernel.variant == cpu_lut.isa()
    assert f"BabaiLutCPU ({cpu_lut.isa()} variant, " in caplog.text
