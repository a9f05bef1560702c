"""Load a quantized checkpoint (babai ssqr/hptq, or the GPTQ layout) into a plain transformers
model whose linears hold the dequantized weights (torch reference dequantizers; no vLLM).

Used by evaluation: `load_dequantized(path)` → (model, tokenizer), like `from_pretrained`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from babai_quantizer.checkpoint import INDEX_NAME, SINGLE_SHARD_NAME, validate_quantization_config
from babai_quantizer.gptq_export import dequantize_gptq

SSQR_KEYS = ("qweight", "scales", "perm", "outlier_cols", "outlier_vals")
HPTQ_KEYS = ("hptq_scale", "code_values", "code_lengths", "chunk_bits", "stream")
GPTQ_KEYS = ("qweight", "qzeros", "scales")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's safetensors (single file or sharded with an index)."""
    index = path / INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / SINGLE_SHARD_NAME).is_file():
        files = [SINGLE_SHARD_NAME]
    else:
        raise ValueError(f"{path}: no {SINGLE_SHARD_NAME} or {INDEX_NAME}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(path / f)))
    return tensors


def _layer_dequantizer(qc: dict, source: str):
    """(tensor names of one quantized linear, function (tensors, K) → (N, K) float32) for a config."""
    method = qc.get("quant_method")
    if method == "gptq":
        if qc.get("desc_act") or not qc.get("sym", False):
            raise ValueError(f"{source}: only symmetric GPTQ with desc_act false is supported")
        return GPTQ_KEYS, lambda t, k: dequantize_gptq(t, qc["bits"])
    validate_quantization_config(qc, source)
    if qc["format"] == "ssqr":
        from babai_kernels.ssqr.reference import dequantize_ssqr
        return SSQR_KEYS, lambda t, k: dequantize_ssqr(t)
    from babai_kernels.hptq.pack import dequantize_hptq
    return HPTQ_KEYS, dequantize_hptq


def read_config(path: Path) -> tuple[dict, dict]:
    """(config.json without quantization_config, quantization_config) of a quantized folder."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path}: no config.json (not a model folder)")
    config = json.loads(config_file.read_text())
    qc = config.pop("quantization_config", None)
    if qc is None:
        raise ValueError(f"{config_file}: has no quantization_config (not a quantized checkpoint)")
    return config, qc


def dequantized_state_dict(path: str | Path, qc: dict, in_features, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """State dict with every quantized `<prefix>.weight` dequantized to `dtype`;
    in_features(prefix) gives the layer's K."""
    path = Path(path)
    keys, dequantize = _layer_dequantizer(qc, str(path / "config.json"))
    tensors = read_tensors(path)
    prefixes = sorted({name.rsplit(".", 1)[0] for name in tensors if name.endswith(f".{keys[0]}")})
    state: dict[str, torch.Tensor] = {}
    for prefix in prefixes:
        parts = {}
        for key in keys:
            name = f"{prefix}.{key}"
            if name not in tensors:
                raise ValueError(f"{path}: quantized layer {prefix} has no tensor {name}")
            parts[key] = tensors.pop(name)
        state[f"{prefix}.weight"] = dequantize(parts, in_features(prefix)).to(dtype)
    state.update({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()})
    return state


def load_dequantized(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16):
    """(model, tokenizer) of a quantized checkpoint folder with dequantized weights, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config_dict, qc = read_config(Path(path))
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = dequantized_state_dict(path, qc, lambda prefix: model.get_submodule(prefix).in_features, dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: checkpoint does not match {type(model).__name__}: "
                         f"missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)
