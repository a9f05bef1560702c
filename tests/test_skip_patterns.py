"""`babai-quantize --skip`: prefix, suffix and fnmatch patterns mean the same thing to the quantizer,
the transformers integration and vLLM (one rule: babai_kernels.contract.matches_skip)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from babai_quantizer.cli import main
from tests.fixtures.dequantized import load_dequantized
from tests.fixtures.tiny_checkpoint import CORPUS, save_tiny_tokenizer, tiny_llama_config, transformers_greedy

WORDS = CORPUS.split()
TEXT = " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(900))
LINEARS = [f"model.layers.{i}.{name}" for i in range(2) for name in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
# pattern -> the linears it keeps in 16 bit, written out by hand
PATTERNS = {
    "prefix": ("model.layers.1.mlp", {"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj",
                                      "model.layers.1.mlp.down_proj"}),
    "suffix": ("o_proj", {"model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"}),
    "dotted-suffix": ("mlp.down_proj", {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}),
    "fnmatch": ("model.layers.0.self_attn.[qkv]_proj", {"model.layers.0.self_attn.q_proj",
                                                       "model.layers.0.self_attn.k_proj",
                                                       "model.layers.0.self_attn.v_proj"}),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-skip")
    config = tiny_llama_config(save_tiny_tokenizer(folder))
    config.initializer_range = 0.2  # confident logits: no greedy near-ties
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "calib.txt").write_text(TEXT)
    return folder


def quantize(model_dir, out, *skips: str) -> None:
    argv = ["--model", str(model_dir), "--calib-text", str(model_dir / "calib.txt"), "--output", str(out),
            "--nsamples", "4", "--seqlen", "32", "--group-size", "32", "--format", "ssqr", "--threads", "1"]
    for s in skips:
        argv += ["--skip", s]
    assert main(argv) == 0


def stored_modules(folder) -> tuple[set[str], set[str]]:
    """(modules stored as plain .weight, modules stored quantized) among the decoder linears."""
    names = set(load_file(folder / "model.safetensors"))
    plain = {m for m in LINEARS if f"{m}.weight" in names}
    quantized = {m for m in LINEARS if f"{m}.qweight" in names}
    return plain, quantized


@pytest.mark.parametrize("kind", sorted(PATTERNS))
def test_transformers_loader_keeps_exactly_the_skipped_linears(model_dir, tmp_path, kind):
    """from_pretrained through transformers_babai (babai-eval's loader): skipped linears stay plain
    nn.Linear with the original weights, every other one is served by a babai kernel."""
    from transformers_babai import BabaiLinear, load_model

    pattern, skipped = PATTERNS[kind]
    quantize(model_dir, tmp_path / "ckpt", pattern)
    plain, quantized = stored_modules(tmp_path / "ckpt")
    assert plain == skipped and quantized == set(LINEARS) - skipped
    model, _ = load_model(tmp_path / "ckpt", dtype=torch.float32)
    original = load_file(model_dir / "model.safetensors")
    for m in LINEARS:
        layer = model.get_submodule(m)
        if m in skipped:
            assert type(layer) is torch.nn.Linear and torch.equal(layer.weight, original[f"{m}.weight"]), m
        else:
            assert isinstance(layer, BabaiLinear), m


def test_skip_that_splits_fused_siblings_is_refused(model_dir, tmp_path, capsys):
    argv = ["--model", str(model_dir), "--calib-text", str(model_dir / "calib.txt"), "--output",
            str(tmp_path / "x"), "--nsamples", "2", "--seqlen", "16", "--group-size", "32", "--skip", "*.q_proj"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "vLLM fuses into one layer" in err and "model.layers.0.self_attn.k_proj" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_loads_every_kind_of_skip_pattern(model_dir, tmp_path):
    """One checkpoint with a prefix, a suffix and an fnmatch pattern: vLLM's greedy tokens equal
    transformers' on the torch loader's weights, and the plain/quantized split is the expected one."""
    pytest.importorskip("vllm")
    from tests.fixtures.vllm_engine import run_engine
    from tests.test_vllm_engine import NEW_TOKENS, PROMPTS

    kinds = ("prefix", "suffix", "fnmatch")
    quantize(model_dir, tmp_path / "ckpt", *(PATTERNS[k][0] for k in kinds))
    skipped = set().union(*(PATTERNS[k][1] for k in kinds))
    plain, quantized = stored_modules(tmp_path / "ckpt")
    assert plain == skipped and quantized == set(LINEARS) - skipped
    model, _ = load_dequantized(tmp_path / "ckpt", dtype=torch.float32)
    expected = transformers_greedy(tmp_path / "ckpt", model.state_dict(), PROMPTS, NEW_TOKENS)
    assert run_engine(tmp_path / "ckpt", 1, PROMPTS, new_tokens=NEW_TOKENS)[0] == expected


def test_fused_layer_names_and_skip_consistency():
    from babai_kernels.contract import check_skip_consistent, fused_layer

    assert fused_layer("model.layers.3.self_attn.v_proj") == "model.layers.3.self_attn.q_proj"
    assert fused_layer("model.layers.3.mlp.up_proj") == "model.layers.3.mlp.gate_proj"
    assert fused_layer("model.layers.3.mlp.down_proj") == "model.layers.3.mlp.down_proj"
    check_skip_consistent(LINEARS, ["model.layers.1.mlp", "*.[qkv]_proj"])      # whole groups: fine
    with pytest.raises(ValueError, match="model.layers.0.mlp.gate_proj"):
        check_skip_consistent(LINEARS, ["*.up_proj"])
