"""Load a quantized checkpoint (babai ssqr/hptq, or the GPTQ layout) into a plain transformers
model whose linears hold the dequantized weights (torch reference dequantizers; no vLLM).

Used by evaluation: `load_dequantized(path)` → (model, tokenizer), like `from_pretrained`.
Every error names the checkpoint, the layer and the tensor.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from babai_kernels.contract import (INDEX_NAME, SINGLE_SHARD_NAME, BabaiCheckpointConfig, GPTQCheckpointConfig,
                                    quantized_modules, read_checkpoint_config)


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


def layer_dequantizer(config: BabaiCheckpointConfig | GPTQCheckpointConfig) -> Callable[[dict, int], torch.Tensor]:
    """Function (one linear's tensors by name, its K) → (N, K) float32 for a checkpoint's config;
    it checks the tensors against the config (bits, group size, finite values)."""
    if isinstance(config, GPTQCheckpointConfig):
        from babai_kernels.gptq import dequantize_gptq
        return lambda t, k: dequantize_gptq(t, config.bits)
    if config.format == "ssqr":
        from babai_kernels.ssqr.pack import ssqr_meta
        from babai_kernels.ssqr.reference import dequantize_ssqr

        def ssqr(t, k):
            _, k_stored, _, _ = ssqr_meta(t, config.bits, config.group_size)
            if k_stored != k:
                raise ValueError(f"perm: K={k_stored} input features, the model expects {k}")
            return dequantize_ssqr(t)
        return ssqr
    from babai_kernels.hptq.pack import dequantize_hptq
    return dequantize_hptq


def dequantized_state_dict(path: str | Path, config: BabaiCheckpointConfig | GPTQCheckpointConfig, in_features,
                           dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """State dict with every quantized `<prefix>.weight` dequantized to `dtype`;
    in_features(prefix) gives the layer's K (None: the model has no such linear)."""
    path = Path(path)
    keys, dequantize = config.tensor_names, layer_dequantizer(config)
    tensors = read_tensors(path)
    state: dict[str, torch.Tensor] = {}
    for prefix in quantized_modules(tensors, config, str(path)):
        where = f"{path}: quantized layer {prefix}"
        k = in_features(prefix)
        if k is None:
            raise ValueError(f"{where}: the model has no linear {prefix}")
        parts = {key: tensors.pop(f"{prefix}.{key}") for key in keys}
        try:
            state[f"{prefix}.weight"] = dequantize(parts, k).to(dtype)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    state.update({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()})
    return state


def load_dequantized(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16):
    """(model, tokenizer) of a quantized checkpoint folder with dequantized weights, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config_dict, qconfig = read_checkpoint_config(path)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)

    def in_features(prefix):
        try:
            return model.get_submodule(prefix).in_features
        except AttributeError:
            return None

    state = dequantized_state_dict(path, qconfig, in_features, dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: checkpoint does not match {type(model).__name__}: "
                         f"missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)

