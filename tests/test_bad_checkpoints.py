"""Corrupted copies of real (tiny) checkpoints: both loaders refuse them with the same error, naming the
layer and the tensor — the transformers integration (`from_pretrained`, and so babai-eval) and the
vLLM plugin's loading path (config check before loading, then shard_layer, which the linear method
runs on the loaded tensors)."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from babai_kernels.contract import read_quantization_config
import transformers_babai
from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint
from babai_kernels.layer_spec import FORMATS, Sibling, shard_layer

LAYER = "model.layers.0.mlp.up_proj"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{name: folder} of intact tiny checkpoints: ssqr 3-bit, ssqr 4-bit, hptq."""
    root = tmp_path_factory.mktemp("tiny-intact")
    out = {}
    for name, fmt, bits in (("ssqr3", "ssqr", 3), ("ssqr4", "ssqr", 4), ("hptq", "hptq", 4)):
        build_tiny_checkpoint(root / name, fmt, bits=bits)
        out[name] = root / name
    return out


def corrupted(src, dest, change_tensors=None, change_config=None):
    """A copy of checkpoint `src` at `dest` with tensors and/or quantization_config changed."""
    import shutil

    shutil.copytree(src, dest)
    if change_tensors:
        tensors = load_file(dest / "model.safetensors")
        change_tensors(tensors)
        save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    if change_config:
        config = json.loads((dest / "config.json").read_text())
        change_config(config["quantization_config"])
        (dest / "config.json").write_text(json.dumps(config))
    return dest


def plugin_load(folder, module=LAYER, k=128):
    """What the vLLM linear method does with one module's loaded tensors (TP=1)."""
    config = read_quantization_config(folder)
    tensors = {name.rpartition(".")[2]: t for name, t in load_file(folder / "model.safetensors").items()
               if name.rpartition(".")[0] == module}
    n = (tensors.get("qweight", tensors.get("chunk_bits"))).shape[1 if "qweight" in tensors else 0]
    return shard_layer(FORMATS[config.format], [Sibling(module, tensors, None, n)], k, None,
                       torch.device("cpu"), config)


def hf_load(folder):
    """What a user runs: from_pretrained through transformers_babai (bfloat16: the CPU kernels)."""
    return transformers_babai.load_model(folder, dtype=torch.bfloat16)


def both_loaders_refuse(folder, *fragments, layer=LAYER):
    """Both loaders raise a ValueError naming the layer (any layer when None) and every fragment; where
    both fail on the same layer, with the same message."""
    messages = []
    for load in (lambda: hf_load(folder), lambda: plugin_load(folder)):
        with pytest.raises(ValueError) as e:
            load()
        assert re.search(r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj" if layer is None else re.escape(layer),
                         str(e.value)), str(e.value)
        for f in fragments:
            assert f in str(e.value), (f, str(e.value))
        messages.append(str(e.value))
    if layer is not None:
        assert messages[0] == messages[1], messages


def test_intact_checkpoints_load_in_both(tiny):
    for folder in tiny.values():
        hf_load(folder)
        plugin_load(folder)


def test_4bit_shaped_qweight_in_a_3bit_checkpoint(tiny, tmp_path):
    """Probe 1: the shape fits 4 bits, the config says 3: never reinterpret it."""
    def swap(t):
        k, n = 128, t[f"{LAYER}.qweight"].shape[1]
        t[f"{LAYER}.qweight"] = torch.randint(-2**31, 2**31 - 1, (k * 4 // 32, n), dtype=torch.int32)

    both_loaders_refuse(corrupted(tiny["ssqr3"], tmp_path / "c", swap), "qweight", "3-bit")


def test_wrong_config_bits_on_an_intact_checkpoint(tiny, tmp_path):
    folder = corrupted(tiny["ssqr4"], tmp_path / "c", change_config=lambda qc: qc.update(bits=3))
    both_loaders_refuse(folder, "qweight", "3-bit", layer=None)


def test_wrong_config_group_size(tiny, tmp_path):
    folder = corrupted(tiny["ssqr4"], tmp_path / "c", change_config=lambda qc: qc.update(group_size=64))
    both_loaders_refuse(folder, "scales", "group_size is 64", layer=None)


@pytest.mark.parametrize("tensor", ["scales", "outlier_vals"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_ssqr_values(tiny, tmp_path, tensor, value):
    """Probe 2: a NaN/inf scale or outlier value is refused, not served as garbage."""
    def poison(t):
        bad = t[f"{LAYER}.{tensor}"].clone()
        bad.view(-1)[3] = value
        t[f"{LAYER}.{tensor}"] = bad

    both_loaders_refuse(corrupted(tiny["ssqr4"], tmp_path / "c", poison), tensor, "non-finite")


def test_non_finite_hptq_scale(tiny, tmp_path):
    def poison(t):
        t[f"{LAYER}.hptq_scale"] = torch.tensor([math.nan])

    both_loaders_refuse(corrupted(tiny["hptq"], tmp_path / "c", poison), "hptq_scale", "finite")


def test_corrupt_perm_names_layer(tiny, tmp_path):
    def dup(t):
        perm = t[f"{LAYER}.perm"].clone()
        perm[1] = perm[0]
        t[f"{LAYER}.perm"] = perm

    both_loaders_refuse(corrupted(tiny["ssqr4"], tmp_path / "c", dup), "perm", "permutation")


def test_corrupt_outlier_cols_names_layer(tiny, tmp_path):
    def out_of_range(t):
        cols = t[f"{LAYER}.outlier_cols"].clone()
        cols[0, 0] = 5000
        t[f"{LAYER}.outlier_cols"] = cols

    both_loaders_refuse(corrupted(tiny["ssqr4"], tmp_path / "c", out_of_range), "outlier_cols")


def test_corrupt_hptq_stream_names_layer(tiny, tmp_path):
    def flip(t):
        stream = t[f"{LAYER}.stream"].clone()
        stream[:4] = -1
        t[f"{LAYER}.stream"] = stream

    both_loaders_refuse(corrupted(tiny["hptq"], tmp_path / "c", flip), "stream", "corrupt")


@pytest.mark.parametrize("fmt", ["ssqr4", "hptq"])
def test_unknown_tensor_in_a_quantized_layer(tiny, tmp_path, fmt):
    """Probe 5: an extra tensor is named before anything loads (transformers integration, and vLLM's config hook)."""
    folder = corrupted(tiny[fmt], tmp_path / "c", lambda t: t.update({f"{LAYER}.qzeros": torch.zeros(4, 4)}))
    with pytest.raises(ValueError, match=rf"quantized layer {LAYER} has an unexpected tensor {LAYER}.qzeros"):
        hf_load(folder)
    pytest.importorskip("vllm")
    from vllm_babai.config import BabaiConfig

    cfg = BabaiConfig.from_config(json.loads((folder / "config.json").read_text())["quantization_config"])
    with pytest.raises(ValueError, match=rf"quantized layer {LAYER} has an unexpected tensor {LAYER}.qzeros"):
        cfg.maybe_update_config(str(folder))
    cfg.maybe_update_config(str(tiny[fmt]))  # the intact checkpoint passes


def test_quantized_layer_listed_as_skipped(tiny, tmp_path):
    folder = corrupted(tiny["ssqr4"], tmp_path / "c",
                       change_config=lambda qc: qc.update(modules_to_not_convert=["lm_head", "model.layers.0.mlp"]))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.\w+_proj is stored quantized but listed in "
                                         r"modules_to_not_convert"):
        hf_load(folder)


def test_fused_siblings_with_different_perms(tiny, tmp_path):
    """SSQR q/k/v must share their permutation (docs/format.md §2): vLLM fuses them and refuses; the
    transformers integration runs them one by one but refuses the checkpoint with vLLM's message."""
    attn = "model.layers.1.self_attn"

    def shuffle(t):
        t[f"{attn}.k_proj.perm"] = t[f"{attn}.k_proj.perm"].flip(0).contiguous()

    folder = corrupted(tiny["ssqr4"], tmp_path / "c", shuffle)
    config = read_quantization_config(folder)
    tensors = load_file(folder / "model.safetensors")
    siblings = [Sibling(f"{attn}.{m}", {n: tensors[f"{attn}.{m}.{n}"] for n in config.tensor_names}, None, rows)
                for m, rows in (("q_proj", 128), ("k_proj", 64), ("v_proj", 64))]
    with pytest.raises(ValueError) as vllm_error:
        shard_layer(FORMATS["ssqr"], siblings, 128, None, torch.device("cpu"), config)
    with pytest.raises(ValueError) as hf_error:
        hf_load(folder)
    assert "different perm" in str(vllm_error.value) and str(hf_error.value) == str(vllm_error.value)
