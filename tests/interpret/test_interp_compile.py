"""A transformers Llama whose linears are BabaiLinears on the Triton kernels (babai::ssqr_linear,
babai::hptq_linear: opaque custom ops with fake implementations) compiles as one graph: the
compiled forward, and `generate` with a static cache and torch.compile, give what eager gives
(benchmarks/gpu_e2e.py compiles the same modules on the GPU, mode reduce-overhead)."""
import os

import pytest
import torch

DEVICE = torch.device(os.environ.get("BABAI_TEST_DEVICE", "cpu"))
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 at process start (run via tests/test_triton_interpreter.py)",
                allow_module_level=True)

from torch._dynamo.utils import counters  # noqa: E402
from transformers import CompileConfig, StaticCache  # noqa: E402

from babai_kernels.choices.cuda import HuffmanLanes, TritonSSQR  # noqa: E402
from benchmarks import gpu_e2e  # noqa: E402
from transformers_babai import BabaiLinear  # noqa: E402


def tiny_model(fmt: str, tmp_path):
    """(model with BabaiLinears of `fmt` on the Triton kernels, its bf16 base) of gpu_e2e's tiny
    config, one layer (the kernels built directly: the CPU chooser never picks Triton ones)."""
    config = gpu_e2e.llama_config("tiny", 1)
    torch.manual_seed(0)
    base, model = gpu_e2e.skeleton(config, DEVICE), gpu_e2e.skeleton(config, "meta")
    shapes, quantized, sources = gpu_e2e.decoder_linears(model), {}, {}
    for name, (k, n) in shapes.items():
        layer = BabaiLinear(f"model.layers.0.{name}", fmt, k, n, False, torch.bfloat16)
        if fmt == "ssqr":
            spec = gpu_e2e.ssqr_spec(layer, DEVICE, seed=len(quantized))
            layer.adopt(spec, kernel=TritonSSQR(spec))
        else:
            rows = max(nn for kk, nn in shapes.values() if kk == k)
            source = sources.setdefault(k, gpu_e2e.HptqSource(tmp_path, k, rows, DEVICE))
            spec = source.spec(n, DEVICE)
            layer.adopt(spec, kernel=HuffmanLanes(spec))
        quantized[layer.name] = layer
    return gpu_e2e.install(model, base, quantized), config


@pytest.mark.parametrize("fmt", ["ssqr", "hptq"])
def test_babai_llama_compiles_as_one_graph(fmt, tmp_path):
    model, config = tiny_model(fmt, tmp_path)
    ids = torch.randint(0, config.vocab_size, (1, 8), device=DEVICE)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        want = model(ids).logits
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(ids).logits
    assert torch.equal(got, want) and not counters["graph_break"]
    compile_config = CompileConfig(fullgraph=True, backend="aot_eager", mode=None)
    compile_config._compile_all_devices = True            # transformers compiles on CUDA only otherwise
    tokens = {}
    for compiled in (True, False):
        cache = StaticCache(config=config, max_cache_len=16)
        tokens[compiled] = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                                          max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                          disable_compile=not compiled, compile_config=compile_config)
    assert torch.equal(tokens[True], tokens[False]) and tokens[True].shape == (1, 12)
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] >= 2   # forward + decode step
