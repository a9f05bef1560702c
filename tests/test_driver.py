"""Layer-wise driver: calibration capture, GPTQ layout, dequantizing loader, end to end on a tiny Llama."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.fixtures.dequantized import load_dequantized
from babai_kernels.contract import FORMAT_VERSION
from babai_kernels.gptq import dequantize_gptq, pack_gptq, pack_rows, unpack_rows
from babai_quantizer.hessian_capture import GramAccumulator, capture_inputs, catch_layer_inputs
from tests.fixtures.tiny_checkpoint import CORPUS, build_tiny_checkpoint, save_tiny_tokenizer, tiny_llama_config

WORDS = CORPUS.split()
TEXT = " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(900))  # 900 words, shuffled order


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random GQA Llama folder (2 layers, hidden 64) with a trained BPE tokenizer."""
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = save_tiny_tokenizer(folder)
    torch.manual_seed(0)
    config = tiny_llama_config(vocab)
    config.initializer_range = 0.1
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "calib.txt").write_text(TEXT)
    return folder


def test_gram_accumulator_is_token_weighted_mean_of_outer_products():
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(1, n, 5, generator=g) for n in (3, 7, 1)]
    cross = [torch.randn(1, n, 5, generator=g) for n in (3, 7, 1)]
    h, c = GramAccumulator(), GramAccumulator()
    for a, b in zip(chunks, cross):
        h.add(a)
        c.add(a, b)
    x = np.concatenate([a.reshape(-1, 5).numpy() for a in chunks]).astype(np.float64)
    y = np.concatenate([b.reshape(-1, 5).numpy() for b in cross]).astype(np.float64)
    np.testing.assert_allclose(h.result().numpy(), x.T @ x / len(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.result().numpy(), x.T @ y / len(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(h.result(), h.result().T)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_packing_matches_a_bit_stream_and_round_trips(bits):
    g = torch.Generator().manual_seed(bits)
    u = torch.randint(0, 1 << bits, (64, 3), generator=g)
    words = pack_rows(u, bits)
    assert words.dtype == torch.int32 and words.shape == (64 * bits // 32, 3)
    # independent reference: column-wise little-endian bit stream, value t at bits b·t … b·t+b-1
    for col in range(3):
        stream = "".join(format(int(v), f"0{bits}b")[::-1] for v in u[:, col])
        ref = [int(stream[32 * w:32 * w + 32][::-1], 2) for w in range(len(stream) // 32)]
        assert [int(x) & 0xFFFFFFFF for x in words[:, col]] == ref
    assert torch.equal(unpack_rows(words, bits, 64), u)


def test_gptq_dequantize_is_scale_times_signed_code():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-8, 8, (32, 128), generator=g)
    scales = torch.rand(32, 2, generator=g) + 0.1
    t = pack_gptq(codes, scales, bits=4)
    assert t["qweight"].shape == (16, 32) and t["qzeros"].shape == (2, 4) and t["scales"].shape == (2, 32)
    assert (t["qzeros"].view(torch.int32) == 0x77777777).all()  # GPTQ v1: zero 8 stored as 7
    ref = codes.double() * scales.half().double().repeat_interleave(64, dim=1)
    assert torch.equal(dequantize_gptq(t, 4).double(), ref)


def test_captured_gram_matches_transformers_hidden_states(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    windows = torch.randint(3, model.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    inputs, kwargs = catch_layer_inputs(model, model.model.layers, windows, torch.device("cpu"))
    layer = model.model.layers[1]
    acc = GramAccumulator()
    for x in inputs:  # layer-1 inputs: run layer 0 first
        h1 = model.model.layers[0](x, **kwargs)
        acc.add(capture_inputs(layer, ["mlp.down_proj"], h1, kwargs)["mlp.down_proj"])
    # independent reference: hidden states from a full forward, then the MLP's own math
    with torch.no_grad():
        hs = model(windows, output_hidden_states=True).hidden_states[1]
        attn = layer.self_attn(layer.input_layernorm(hs), position_embeddings=model.model.rotary_emb(
            hs, torch.arange(16)[None]), attention_mask=None)[0]
        mid = layer.post_attention_layernorm(hs + attn)
        x = (torch.nn.functional.silu(layer.mlp.gate_proj(mid)) * layer.mlp.up_proj(mid)).reshape(-1, layer.mlp.down_proj.in_features)
    ref = x.double().T @ x.double() / x.shape[0]
    torch.testing.assert_close(acc.result().double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt", ["ssqr", "hptq"])
def test_eval_loader_serves_the_dequantized_weights_of_babai_checkpoints(tmp_path, fmt):
    """babai-eval's loader (transformers_babai, float32: the dense torch reference) computes x Wᵀ with
    exactly the fixture's dequantized W (identity input), and keeps the other tensors."""
    from babai_quantizer.evaluate import load_for_eval

    dequant = build_tiny_checkpoint(tmp_path / "ckpt", fmt)
    model, tokenizer = load_for_eval(tmp_path / "ckpt", dtype=torch.float32)
    state = model.state_dict()
    with torch.no_grad():
        for name, w in dequant.items():
            module = name.removesuffix(".weight")
            if name in state:
                assert torch.equal(state[name], w), name
            else:
                layer = model.get_submodule(module)
                assert type(layer).__name__ == "BabaiLinear", name
                assert torch.equal(layer(torch.eye(w.shape[1])).T, w), name
    assert tokenizer("hello")["input_ids"]


def test_eval_loader_rejects_a_folder_without_config(tmp_path):
    from babai_quantizer.evaluate import load_for_eval

    with pytest.raises(ValueError, match="no config.json"):
        load_for_eval(tmp_path)


FORMAT_ARGS = {
    "ssqr": dict(format="ssqr", bits=4, group_size=32, outlier_rate=0.02),
    "hptq": dict(format="hptq", target_bits=4.5),
    "gptq": dict(format="gptq", bits=4, group_size=32),
    "rtn": dict(format="rtn", bits=4, group_size=32),
}
LAYER_TENSORS = {
    "ssqr": {"qweight", "scales", "perm", "outlier_cols", "outlier_vals"},
    "hptq": {"hptq_scale", "code_values", "code_lengths", "chunk_bits", "stream"},
    "gptq": {"qweight", "qzeros", "scales"},
    "rtn": {"qweight", "qzeros", "scales"},
}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def quantize_tiny(model_dir, **kwargs):
    from babai_quantizer.calibration import calibration_windows, load_causal_lm
    from babai_quantizer.driver import quantize_model
    from babai_quantizer.options import QuantizeOptions

    model, tokenizer = load_causal_lm(model_dir)
    windows = calibration_windows(tokenizer, (model_dir / "calib.txt").read_text(), 6, 32, seed=0)
    options = QuantizeOptions(row_parallel_blocks=2, **kwargs)
    return quantize_model(model, windows, options, progress=False), options, windows


@pytest.mark.parametrize("fmt", sorted(FORMAT_ARGS))
def test_driver_end_to_end_checkpoint_matches_in_memory_model(tiny_model_dir, tmp_path, fmt):
    from babai_quantizer.export import save_quantized

    result, options, windows = quantize_tiny(tiny_model_dir, **FORMAT_ARGS[fmt])
    dest = save_quantized(result, options, tmp_path / fmt, tiny_model_dir)

    config = json.loads((dest / "config.json").read_text())
    qc = config["quantization_config"]
    if fmt in ("gptq", "rtn"):
        assert (qc["quant_method"], qc["sym"], qc["desc_act"], qc["bits"]) == ("gptq", True, False, 4)
    else:
        assert (qc["quant_method"], qc["format"], qc["version"]) == ("babai", fmt, FORMAT_VERSION)
    from tests.fixtures.dequantized import read_tensors
    names = set(read_tensors(dest))
    for i in range(2):
        for lin in LINEARS:
            prefix = f"model.layers.{i}.{lin}"
            assert {n[len(prefix) + 1:] for n in names if n.startswith(prefix + ".")} == LAYER_TENSORS[fmt]
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names

    report = json.loads((dest / "quant_report.json").read_text())
    assert len(report["layers"]) == 2 * len(LINEARS)
    for name, entry in report["layers"].items():
        assert entry["clipped"] == (fmt in ("gptq", "rtn")), name
        if not entry["clipped"]:
            assert entry["bound_holds"] is True, name
            if entry["clipped_rows"] == 0:
                assert entry["bound"] >= entry["error"] > 0, name

    if fmt in ("gptq", "rtn"):
        loaded, _ = load_dequantized(dest, dtype=torch.float32)   # the reference dequantizer (GPTQ layout)
    else:
        from babai_quantizer.evaluate import load_for_eval      # babai-eval's loader: transformers_babai
        loaded, _ = load_for_eval(dest, dtype=torch.float32)
    with torch.no_grad():
        expected = result.model(windows[:2]).logits
        got = loaded(windows[:2]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the quantized model really differs from the float one
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    x = torch.eye(base.model.layers[0].mlp.down_proj.in_features)
    with torch.no_grad():
        assert not torch.equal(loaded.model.layers[0].mlp.down_proj(x), base.model.layers[0].mlp.down_proj(x))


def test_non_finite_weight_is_named(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from babai_quantizer.driver import quantize_model
    from babai_quantizer.options import QuantizeOptions
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.model.layers[1].self_attn.o_proj.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.o_proj\.weight"):
        quantize_model(model, torch.zeros(1, 8, dtype=torch.long), QuantizeOptions(format="rtn"), progress=False)


def test_driver_babai_back_to_front_gives_the_gptq_checkpoint(tiny_model_dir):
    spec = dict(format="gptq", bits=3, group_size=32, dtype="float64")
    gptq, _, _ = quantize_tiny(tiny_model_dir, **spec)
    babai, _, _ = quantize_tiny(tiny_model_dir, algorithm="babai", **spec)
    assert babai.linears.keys() == gptq.linears.keys()
    for name, q in babai.linears.items():
        for key, t in q.tensors.items():
            assert torch.equal(t, gptq.linears[name].tensors[key]), (name, key)
        assert q.report["trace_D"] == pytest.approx(gptq.linears[name].report["trace_D"], rel=1e-9)


def test_babai_algorithm_needs_gptq_format():
    from babai_quantizer.options import QuantizeOptions
    with pytest.raises(ValueError, match="algorithm"):
        QuantizeOptions(format="ssqr", algorithm="babai").validate()
    with pytest.raises(ValueError, match="algorithm"):
        QuantizeOptions(format="gptq", algorithm="lll").validate()
