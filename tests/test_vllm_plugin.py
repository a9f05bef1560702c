"""vllm_babai without an engine: TP sharding of fused layers, loading errors, config, registration.

shard_layer is checked against the dense dequantized weights that vllm_babai.tiny's RTN returns
(computed before packing, so independent of kernels' unpackers).
"""
from __future__ import annotations

import importlib.metadata

import pytest
import torch

from babai_kernels.choices.reference import TorchReference
from babai_kernels.layer_spec import FORMATS, Sibling, shard_layer
from tests.fixtures.tiny_checkpoint import _perm, quantize_hptq, quantize_ssqr

K = 128
CPU = torch.device("cpu")


def _siblings(fmt: str, sizes: list[int], blocks: int, seed: int = 0):
    """Checkpoint tensors and dense weights of fused siblings with output sizes `sizes`."""
    g = torch.Generator().manual_seed(seed)
    perm = _perm(K, blocks, g)
    out = []
    for n in sizes:
        w = torch.randn(n, K, generator=g)
        out.append(quantize_ssqr(w, perm, 3, 32, g) if fmt == "ssqr" else quantize_hptq(w, chunk=32))
    return out


def _reference_layer(fmt, layers, names, tp, rank, row_parallel):
    """This rank's parts and the dense weight block it must reproduce."""
    siblings, dense = [], []
    for name, (tensors, w) in zip(names, layers):
        n = w.shape[0]
        rows = None if row_parallel else (rank * n // tp, (rank + 1) * n // tp)
        siblings.append(Sibling(name, dict(tensors), rows, n))
        dense.append(w if rows is None else w[rows[0]:rows[1]])
    dense = torch.cat(dense)
    if row_parallel:
        dense = dense[:, rank * K // tp:(rank + 1) * K // tp]
    spec = shard_layer(FORMATS[fmt], siblings, K, (rank, tp) if row_parallel else None, CPU)
    return spec, dense


@pytest.mark.parametrize("fmt", ["ssqr", "hptq"])
@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("row_parallel", [False, True])
def test_shard_layer_matches_dense_weights(fmt, tp, row_parallel):
    sizes, names = ([64, 32, 32], ["q_proj", "k_proj", "v_proj"]) if not row_parallel else ([48], ["o_proj"])
    layers = _siblings(fmt, sizes, blocks=2)
    x = torch.randn(5, K, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(sum(sizes) // (1 if row_parallel else tp))
    for rank in range(tp):
        spec, dense = _reference_layer(fmt, layers, names, tp, rank, row_parallel)
        assert len(spec.parts) == (len(sizes) if fmt == "hptq" else 1)
        assert spec.shape == tuple(dense.shape)
        x_local = x[:, rank * K // tp:(rank + 1) * K // tp] if row_parallel else x
        y = TorchReference(spec).apply(x_local, bias)
        expected = (x_local.double() @ dense.double().T + bias.double()).float()
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)


def _one(fmt, n=32, blocks=2, seed=0):
    tensors, _ = _siblings(fmt, [n], blocks, seed)[0]
    return dict(tensors)


@pytest.mark.parametrize("fmt", ["ssqr", "hptq"])
def test_missing_tensor_names_module_and_tensor(fmt):
    tensors = _one(fmt)
    victim = FORMATS[fmt].tensor_names[1]
    del tensors[victim]
    with pytest.raises(ValueError, match=rf"model.layers.3.mlp.down_proj: checkpoint has no tensor "
                                         rf"model.layers.3.mlp.down_proj.{victim}"):
        shard_layer(FORMATS[fmt], [Sibling("model.layers.3.mlp.down_proj", tensors, None, 32)], K, None, CPU)


@pytest.mark.parametrize("fmt", ["ssqr", "hptq"])
def test_wrong_row_count_names_module(fmt):
    with pytest.raises(ValueError, match=r"layers.0.self_attn.k_proj: tensors have N=32 output rows, "
                                         r"the model expects 64"):
        shard_layer(FORMATS[fmt], [Sibling("layers.0.self_attn.k_proj", _one(fmt), (0, 32), 64)], K, None, CPU)


def test_misshaped_tensor_names_module_and_tensor():
    tensors = _one("ssqr")
    tensors["scales"] = tensors["scales"][:, :-1]
    with pytest.raises(ValueError, match=r"layers.0.mlp.up_proj: scales: expected shape"):
        shard_layer(FORMATS["ssqr"], [Sibling("layers.0.mlp.up_proj", tensors, None, 32)], K, None, CPU)
    with pytest.raises(ValueError, match=r"layers.0.mlp.up_proj: perm: K=128 input features, the model expects 256"):
        shard_layer(FORMATS["ssqr"], [Sibling("layers.0.mlp.up_proj", _one("ssqr"), None, 32)], 256, None, CPU)


def test_non_local_perm_cannot_split_row_parallel():
    tensors = _one("ssqr", blocks=1, seed=3)  # a permutation over the whole of K
    with pytest.raises(ValueError, match=r"layers.1.self_attn.o_proj: perm is not block-local"):
        shard_layer(FORMATS["ssqr"], [Sibling("layers.1.self_attn.o_proj", tensors, None, 32)], K, (1, 2), CPU)


def test_group_size_that_cannot_split():
    g = torch.Generator().manual_seed(0)
    tensors, _ = quantize_ssqr(torch.randn(8, K, generator=g), _perm(K, 1, g), 4, 128, g)
    with pytest.raises(ValueError, match=r"layers.0.mlp.down_proj: K=128 cannot be split into 2 parts"):
        shard_layer(FORMATS["ssqr"], [Sibling("layers.0.mlp.down_proj", tensors, None, 8)], K, (0, 2), CPU)


def test_hptq_chunks_that_cannot_split():
    tensors, _ = quantize_hptq(torch.randn(8, K, generator=torch.Generator().manual_seed(0)), chunk=128)
    with pytest.raises(ValueError, match=r"layers.0.mlp.down_proj: slice_cols: cannot take part 0 of 2"):
        shard_layer(FORMATS["hptq"], [Sibling("layers.0.mlp.down_proj", tensors, None, 8)], K, (0, 2), CPU)


def test_fused_siblings_must_share_perm():
    a, b = _one("ssqr", seed=0), _one("ssqr", seed=1)
    with pytest.raises(ValueError, match=r"l.gate_proj \+ l.up_proj: .*different perm"):
        shard_layer(FORMATS["ssqr"], [Sibling("l.gate_proj", a, None, 32), Sibling("l.up_proj", b, None, 32)],
                    K, None, CPU)


# --- vLLM-facing pieces (need vllm importable, no engine) ---------------------------------------

QC = {"quant_method": "babai", "version": 1, "format": "ssqr", "bits": 4, "group_size": 32,
      "modules_to_not_convert": ["lm_head", "model.layers.1.mlp"]}


@pytest.fixture(scope="module")
def babai_config():
    pytest.importorskip("vllm")
    import vllm_babai

    vllm_babai.register()
    vllm_babai.register()  # idempotent
    from vllm_babai.config import BabaiConfig

    return BabaiConfig


@pytest.mark.vllm
def test_registered_with_vllm(babai_config):
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config

    assert QUANTIZATION_METHODS.count("babai") == 1
    assert get_quantization_config("babai") is babai_config
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert any(ep.name == "babai" and ep.value == "vllm_babai:register" for ep in eps)


@pytest.mark.vllm
@pytest.mark.parametrize("change, message", [({"version": 7}, "version=7"), ({"format": "nf4"}, "format=.nf4.")])
def test_config_rejects_unknown_version_and_format(babai_config, change, message):
    with pytest.raises(ValueError, match=message):
        babai_config.from_config({**QC, **change})


@pytest.mark.vllm
def test_skip_list_matches_fused_layers(babai_config):
    cfg = babai_config.from_config(QC)
    cfg.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    assert cfg.checkpoint_modules("model.layers.0.self_attn.qkv_proj") == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]
    assert cfg.is_skipped("model.layers.1.mlp.gate_up_proj") and cfg.is_skipped("lm_head")
    assert not cfg.is_skipped("model.layers.0.mlp.gate_up_proj")
    assert not cfg.is_skipped("model.layers.11.mlp.down_proj")  # a prefix match stops at a dot
    cfg.modules_to_not_convert = ["*.self_attn.o_proj"]  # fnmatch, as babai-quantize --skip writes
    assert cfg.is_skipped("model.layers.5.self_attn.o_proj") and not cfg.is_skipped("model.layers.5.mlp.down_proj")
    cfg.modules_to_not_convert = ["model.layers.0.self_attn.k_proj"]
    with pytest.raises(ValueError, match="model.layers.0.self_attn.qkv_proj: skip patterns .* keep only some"):
        cfg.is_skipped("model.layers.0.self_attn.qkv_proj")


@pytest.mark.vllm
def test_checkpoint_weight_mapper_drops_nothing(babai_config):
    mapper = babai_config.get_checkpoint_weight_mapper()
    names = ["model.layers.0.mlp.down_proj.perm", "model.layers.0.mlp.down_proj.g_idx", "x.stream"]
    assert mapper.apply_list(names) == names
