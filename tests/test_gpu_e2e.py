"""benchmarks/gpu_e2e.py's dry run (the GPU check's end-to-end stage up to the first CUDA call) at
Llama-3-8B's layer shapes, 2 layers, at most 64 rows per linear: the chooser's pick for CUDA and
the AOT cubin of every launch of a prefill and a decode step at batch 1 and 16."""
import json

import torch

from benchmarks import gpu_e2e
from benchmarks.gpu_stages import Stage

LINEARS = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"}


def test_dry_run_picks_the_gpu_kernels_and_finds_every_launch_in_the_bundle(tmp_path):
    assert gpu_e2e.main(["--stage-dir", str(tmp_path), "--dry-run", "--layers", "2", "--dry-rows", "64"]) == 0
    data = json.loads((tmp_path / "e2e.json").read_text())
    assert data["stage"] == "e2e" and data["dry_run"] and data["info"]["num_hidden_layers"] == 2
    build = [r for r in data["rows"] if r["mode"] == "build"]
    assert {r["linear"] for r in build if r["case"] == "ssqr-w4"} == LINEARS
    assert {(r["case"], r["kernel"]) for r in build} == {("ssqr-w4", "TritonSSQR"), ("hptq-3.3", "HuffmanLanes")}
    assert all(r["refused"] == "TritonSSQR: SSQR checkpoints only" for r in build if r["case"] == "hptq-3.3")
    down = next(r for r in build if r["case"] == "hptq-3.3" and r["linear"] == "mlp.down_proj")
    assert (down["k"], down["n"], down["layers"]) == (14336, 64, 2)
    assert all(3.0 < r["resident_bits"] < 4.0 for r in build if r["case"] == "hptq-3.3")     # lanes, not dense
    plan = {(r["case"], r["m"]): r for r in data["rows"] if r["mode"] == "launch-plan"}
    assert set(plan) == {(v, m) for v in ("ssqr-w4", "hptq-3.3") for m in (1, 16, 32, 512)}
    for row in plan.values():      # one launch per linear per forward, each with a bundled cubin
        assert (row["linears"], row["launches"], row["unserved"]) == (14, 14, 0)
        assert row["resolved"] >= row["launches"] and row["cubins"] >= 1
    assert plan["ssqr-w4", 1]["resolved"] == plan["ssqr-w4", 1]["candidates"]    # every tuner config at M = 1
    assert plan["hptq-3.3", 1]["cubins"] == 2                                      # K = 4096 and 14336


def test_every_layer_holds_its_own_copy_and_shares_the_rest(tmp_path):
    config = gpu_e2e.llama_config("llama3-8b", 2)
    base = gpu_e2e.skeleton(config, "meta")
    model = gpu_e2e.babai_model(base, config, "ssqr-w4", Stage(tmp_path, "e2e", True), tmp_path,
                                torch.device("cpu"), 32)
    first, second = (layer.mlp.down_proj for layer in model.model.layers)
    assert (first.name, second.name) == ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj")
    a, b = first.kernel.prepared.qcodes, second.kernel.prepared.qcodes
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert model.lm_head is base.lm_head and model.model.embed_tokens is base.model.embed_tokens
    assert model.model.layers[1].input_layernorm is base.model.layers[1].input_layernorm
