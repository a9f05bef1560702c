"""transformers integration (transformers_babai): `from_pretrained` on babai checkpoints against
independent references.

References: the test oracle tests/fixtures/dequantized.py (the kernels' torch reference dequantizers
in a plain transformers model) and the fixture's own dequantized weights; vLLM on the same
checkpoint (slow tests). float32 runs the dense torch reference kernel, so greedy tokens must be
equal. bfloat16 runs the CPU kernels (BabaiLutCPU), which compute in bf16: tokens can flip at near
ties, so we compare teacher-forced per-token log-probabilities, with the tolerance derived as in
tests/test_vllm_kernels.py: the oracle itself in bf16 deviates from its fp32 run by at most d; the
kernel's bf16 run is another bf16 evaluation with its roundings elsewhere, the two deviations can
add, and a factor 2 covers the different rounding points: |lp_babai − lp_fp32| ≤ 4·d.
"""
from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import transformers_babai
from babai_kernels import cpu_lut
from transformers_babai import BabaiLinear, load_model, resident_bytes
from tests.fixtures.act8 import act8_block, round_blocks
from tests.fixtures.dequantized import load_dequantized
from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint, max_deviation, transformers_greedy
from tests.fixtures.tiny_checkpoint import teacher_forced_logprobs as teacher_forced

SEQUENCES = [[1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110],
             [1, 200, 7, 9, 11, 13, 300, 21, 23, 25],
             [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]
PROMPTS, NEW_TOKENS = [s[:5] for s in SEQUENCES], 10
# name -> build_tiny_checkpoint kwargs
TINY = {"ssqr-w4": dict(fmt="ssqr", bits=4), "ssqr-w3": dict(fmt="ssqr", bits=3), "ssqr-w2": dict(fmt="ssqr", bits=2),
        "hptq": dict(fmt="hptq"), "ssqr-w4-bias": dict(fmt="ssqr", bits=4, bias=True),
        "hptq-bias": dict(fmt="hptq", bias=True), "hptq-alpha": dict(fmt="hptq", col_steps=True)}
LUT = "BabaiLutCPU" if cpu_lut.load()[0] else None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{name: (folder, dequantized fp32 state dict)} of the tiny checkpoints."""
    root = tmp_path_factory.mktemp("hf-tiny")
    return {name: (root / name, build_tiny_checkpoint(root / name, **kw)) for name, kw in TINY.items()}


def greedy(model, prompts, new_tokens) -> list[list[int]]:
    """Greedy continuations (end-of-sequence ignored) of `model.generate`, one prompt at a time."""
    with torch.no_grad():
        return [model.generate(torch.tensor([p]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                               pad_token_id=0)[0, len(p):].tolist() for p in prompts]


def babai_layers(model) -> dict[str, BabaiLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BabaiLinear)}


@pytest.mark.parametrize("name", sorted(TINY))
def test_float32_greedy_tokens_equal_transformers_on_the_dequantized_weights(tiny, name):
    folder, state = tiny[name]
    model, _ = load_model(folder, dtype=torch.float32)
    assert len(babai_layers(model)) == 14            # every decoder linear of the 2 layers
    assert greedy(model, PROMPTS, NEW_TOKENS) == transformers_greedy(folder, state, PROMPTS, NEW_TOKENS)


@pytest.mark.skipif(LUT is None, reason="the CPU kernel cannot run on this host")
@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_kernel_logprobs_within_the_bf16_tolerance(tiny, name, monkeypatch):
    """bf16 x throughout (BABAI_CPU_ACT8=0; int8 activations: the test below)."""
    monkeypatch.setenv(cpu_lut.ACT8_ENV, "0")
    folder, _ = tiny[name]
    fp32 = teacher_forced(load_dequantized(folder, dtype=torch.float32)[0], SEQUENCES)
    d = max_deviation(teacher_forced(load_dequantized(folder, dtype=torch.bfloat16)[0], SEQUENCES), fp32)
    assert 0 < d < 0.5, d                             # a sane bf16 reference (not identical, not broken)
    model, _ = load_model(folder, dtype=torch.bfloat16)
    assert {type(m.kernel).__name__ for m in babai_layers(model).values()} == {LUT}
    assert max_deviation(teacher_forced(model, SEQUENCES), fp32) <= 4 * d


def _residual_weight(packed, k: int) -> torch.Tensor:
    """The kernel's CSR residual R (N, K) float64 as the oracle's weight holds it: · row scale, original column
    order, · α."""
    n = packed.block_bits.numel() * cpu_lut.ROWS
    rows = torch.repeat_interleave(torch.arange(n), (packed.offsets[1:] - packed.offsets[:-1]).long())
    r = torch.zeros(n, k, dtype=torch.float64)
    r.index_put_((rows, packed.cols.long() & 0xFFFF), packed.vals.double(), accumulate=True)
    if packed.row_scale.numel():
        r *= packed.row_scale.double().repeat_interleave(n // packed.row_scale.numel())[:, None]
    if packed.perm.numel():
        r[:, packed.perm] = r.clone()
    return r * packed.col_scale.double() if packed.col_scale.numel() else r


def _int8_x_like(packed):
    """A forward hook for the oracle's linear: from act8_from rows its output recomputed as the kernel's int8
    path computes it: x ⊙ α rounded per row and block (tests/fixtures/act8.py) times the codes' part of the
    weight, x itself times the residual part (the kernel adds R with x as it is)."""
    def hook(module, args, output):
        x = args[0]
        x2 = x.reshape(-1, x.shape[-1]).double()
        if x2.shape[0] < packed.act8_from:
            return None
        k = x2.shape[1]
        alpha = packed.col_scale.double() if packed.col_scale.numel() else torch.ones(k, dtype=torch.float64)
        order = packed.perm if packed.perm.numel() else torch.arange(k)
        stored, _ = round_blocks((x2 * alpha)[:, order].float(), act8_block(packed.group_size, packed.col_scale.numel() > 0))
        xh = torch.empty_like(stored)
        xh[:, order] = stored
        resid = _residual_weight(packed, k)
        y = (xh / alpha) @ (module.weight.double() - resid).T + x2 @ resid.T
        y = y + module.bias.double() if module.bias is not None else y
        return y.to(output.dtype).view_as(output)
    return hook


@pytest.mark.skipif(LUT is None or cpu_lut.isa() != "avx512" or cpu_lut.ACT8_FEATURE not in cpu_lut.host_features(),
                    reason="int8 activations need the kernel's avx512 variant and AVX-512 VNNI")
@pytest.mark.parametrize("name", sorted(TINY))
def test_int8_activations_logprobs_within_the_bf16_tolerance_of_the_same_rounding_in_float32(tiny, name):
    """From act8_from rows the kernel rounds x to int8 per row and block: its bf16 run is within 4·d (module
    docstring) of the float32 oracle whose linears round x the same way (forward hooks), and that rounding
    does move the oracle."""
    folder, _ = tiny[name]
    oracle, _ = load_dequantized(folder, dtype=torch.float32)
    fp32 = teacher_forced(oracle, SEQUENCES)
    d = max_deviation(teacher_forced(load_dequantized(folder, dtype=torch.bfloat16)[0], SEQUENCES), fp32)
    model, _ = load_model(folder, dtype=torch.bfloat16)
    layers = babai_layers(model)
    assert {type(m.kernel).__name__ for m in layers.values()} == {LUT}
    assert min(m.kernel.packed.act8_from for m in layers.values()) <= max(map(len, SEQUENCES))
    for name_, m in layers.items():
        oracle.get_submodule(name_).register_forward_hook(_int8_x_like(m.kernel.packed))
    rounded = teacher_forced(oracle, SEQUENCES)
    assert max_deviation(rounded, fp32) > 0
    assert max_deviation(teacher_forced(model, SEQUENCES), rounded) <= 4 * d


@pytest.mark.skipif(LUT is None, reason="the CPU kernel cannot run on this host")
@pytest.mark.parametrize("name", ["ssqr-w4", "hptq"])   # SSQR 2/3-bit codes are widened to 4 bits on CPU
def test_resident_bytes_without_a_dense_copy(tiny, name):
    """SSQR keeps its codes, scales and outliers (≤ 1.25x the disk bytes); HPTQ's CPU kernel keeps dense
    codes of 4 or 8 bits per 32 rows (runtime.hptq_dense_widths: rows needing more than 4 bits take 8, the
    faster width) plus side tensors: at most 9 bits a weight here, never a float copy (16 bits)."""
    folder, _ = tiny[name]
    model, _ = load_model(folder, dtype=torch.bfloat16)
    resident, disk = resident_bytes(model)
    on_disk = sum(t.numel() * t.element_size() for n, t in load_file(folder / "model.safetensors").items()
                  if n.rpartition(".")[2] not in ("weight", "bias"))
    assert disk == on_disk
    weights = sum(m.in_features * m.out_features for m in babai_layers(model).values())
    limit = 1.25 * disk if name.startswith("ssqr") else weights * 9 / 8
    assert 0 < resident <= limit, (resident, disk, 8 * resident / weights)
    for layer in babai_layers(model).values():       # nothing but the kernel's form (and the bias)
        assert [n for n, _ in layer.named_buffers()] == [] and not hasattr(layer, "weight")


def test_save_pretrained_round_trips_the_checkpoint(tiny, tmp_path):
    folder, _ = tiny["ssqr-w4-bias"]
    model, _ = load_model(folder, dtype=torch.float32)       # the checkpoint's own dtype
    model.save_pretrained(tmp_path / "saved")
    before, after = load_file(folder / "model.safetensors"), load_file(tmp_path / "saved" / "model.safetensors")
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    qc = lambda f: json.loads((f / "config.json").read_text())["quantization_config"]  # noqa: E731
    assert qc(tmp_path / "saved") == qc(folder)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    assert greedy(reloaded, PROMPTS[:1], 5) == greedy(model, PROMPTS[:1], 5)


def test_from_pretrained_after_one_import(tiny):
    """The README's three lines: the import registers quant_method babai with transformers."""
    from transformers import AutoModelForCausalLM
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    assert AUTO_QUANTIZER_MAPPING["babai"] is transformers_babai.BabaiHfQuantizer
    transformers_babai.register()                      # idempotent
    model = AutoModelForCausalLM.from_pretrained(tiny["hptq"][0])
    assert model.is_quantized and len(babai_layers(model)) == 14


def test_inference_only_backward_and_device_moves_are_refused(tiny):
    folder, _ = tiny["ssqr-w4"]
    model, _ = load_model(folder, dtype=torch.float32)
    model.model.embed_tokens.weight.requires_grad_(True)
    loss = model(torch.tensor([SEQUENCES[0]])).logits.sum()
    with pytest.raises(RuntimeError, match=r"model\.layers\.\d+\.\w+\.\w+_proj: babai linears are inference-only"):
        loss.backward()
    with pytest.raises(RuntimeError, match=r"cannot move from cpu to meta"):
        model.to("meta")
    assert not model.hf_quantizer.is_trainable


def test_peft_lora_refuses_babai_linears_and_trains_on_plain_ones(tiny):
    """LoRA cannot wrap a babai linear (PEFT refuses the module type, naming it); LoRA on lm_head (16-bit)
    trains one step, and its gradient equals the one computed by hand."""
    peft = pytest.importorskip("peft")
    folder, _ = tiny["ssqr-w4"]
    model, _ = load_model(folder, dtype=torch.float32)
    with pytest.raises(ValueError, match="BabaiLinear"):
        peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj"]))
    model, _ = load_model(folder, dtype=torch.float32)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False))
    params = [p for p in lora.parameters() if p.requires_grad]
    assert len(params) == 2
    ids = torch.tensor([SEQUENCES[0]])
    loss = lora(ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    torch.optim.SGD(params, lr=1e-2).step()
    with torch.no_grad():
        assert lora(ids, labels=ids).loss < loss


def test_skipped_and_fp16_modules_stay_plain_linears(tiny, caplog):
    """The kernel chooser's log names every layer shape; lm_head stays a plain nn.Linear."""
    folder, _ = tiny["hptq"]
    with caplog.at_level(logging.INFO, logger="vllm.babai"):
        model, _ = load_model(folder, dtype=torch.bfloat16)
    assert type(model.lm_head) is torch.nn.Linear
    assert "babai: 14 quantized linears" in caplog.text


def run_python(code: str, *args) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_is_cheap_and_registers_before_or_after_transformers(tiny):
    """Importing the package does not import transformers; registration happens whichever comes first;
    loading works with vLLM made unimportable and never imports its plugin."""
    check = ("import sys, torch\nsys.modules['vllm'] = None  # any vllm import raises, as if not installed\n"
             "{first}\n{second}\n"
             "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)\n"
             "assert not [m for m in sys.modules if m.startswith(('vllm.', 'vllm_babai'))]\n"
             "print(type(m.model.layers[0].mlp.up_proj).__name__)")
    mine, theirs = "import transformers_babai", "from transformers import AutoModelForCausalLM"
    for first, second in ((mine + "\nassert 'transformers' not in sys.modules", theirs), (theirs, mine)):
        assert run_python(check.format(first=first, second=second), tiny["hptq"][0]).split()[-1] == "BabaiLinear"


def test_startup_hook_makes_a_program_that_never_imports_us_load_babai(tiny, tmp_path):
    """The .pth line of `python -m transformers_babai install-hook`, processed from a scratch site dir
    (site.addsitedir) instead of the real site-packages: transformers alone then loads the checkpoint."""
    from transformers_babai._autoload import PTH_LINE, PTH_NAME

    (tmp_path / PTH_NAME).write_text(PTH_LINE)
    code = ("import site, sys, torch\nsite.addsitedir(sys.argv[2])\n"
            "from transformers import AutoModelForCausalLM\n"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)\n"
            "print(type(m.model.layers[0].mlp.up_proj).__name__)")
    assert run_python(code, tiny["ssqr-w4"][0], tmp_path).split()[-1] == "BabaiLinear"


# ------------------------------------------------------------------ against vLLM (slow)

@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("name", ["ssqr-w4", "ssqr-w3", "ssqr-w2", "hptq"])
def test_float32_greedy_tokens_equal_vllm(tiny, name):
    """float32: both engines run the dense torch reference, so greedy tokens must be equal."""
    pytest.importorskip("vllm")
    from tests.fixtures.vllm_engine import run_engine

    folder, _ = tiny[name]
    tokens, _ = run_engine(folder, 1, PROMPTS, new_tokens=NEW_TOKENS)
    assert greedy(load_model(folder, dtype=torch.float32)[0], PROMPTS, NEW_TOKENS) == tokens


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(LUT is None, reason="the CPU kernel cannot run on this host")
@pytest.mark.parametrize("name", ["ssqr-w4", "hptq"])
def test_bfloat16_logprobs_equal_vllm_within_the_bf16_tolerance(tiny, name):
    """bfloat16: the same kernel in both engines, the rest of each engine's bf16 arithmetic differs:
    |lp_transformers − lp_vllm| ≤ 4·d (d: the oracle's own bf16 deviation, module docstring)."""
    pytest.importorskip("vllm")
    from tests.fixtures.vllm_engine import kernels_used, run_engine

    folder, _ = tiny[name]
    fp32 = teacher_forced(load_dequantized(folder, dtype=torch.float32)[0], SEQUENCES)
    d = max_deviation(teacher_forced(load_dequantized(folder, dtype=torch.bfloat16)[0], SEQUENCES), fp32)
    vllm_lp, log = run_engine(folder, 1, SEQUENCES, dtype="bfloat16")
    assert kernels_used(log) == {LUT}
    assert max_deviation(teacher_forced(load_model(folder, dtype=torch.bfloat16)[0], SEQUENCES), vllm_lp) <= 4 * d


# ------------------------------------------------------------------ the embedded model (slow)

@pytest.fixture(scope="module")
def smollm2_checkpoints():
    """{row: folder}: the serving benchmark's cached SSQR-w4 and HPTQ-4.3 checkpoints of SmolLM2-135M
    (quantized on first use, several minutes each)."""
    from benchmarks.serving_cpu import ensure_checkpoint

    return {row: ensure_checkpoint(row) for row in ("ssqr-w4", "hptq-4.3")}


def token_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """Per-token next-token NLL (L-1,) float64 of one window `ids` (L,)."""
    with torch.no_grad():
        logits = model(ids[None]).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none").double()


@pytest.mark.slow
@pytest.mark.parametrize("row", ["ssqr-w4", "hptq-4.3"])
def test_embedded_model_resident_bytes_tied_embeddings(smollm2_checkpoints, row):
    model, _ = load_model(smollm2_checkpoints[row], dtype=torch.bfloat16)
    resident, disk = resident_bytes(model)
    layers = babai_layers(model)
    weights = sum(m.in_features * m.out_features for m in layers.values())
    assert len(layers) == 210 and 0 < resident, (resident, disk)
    # No float copy of any weight (bf16 would be 16 bits each): SSQR keeps its codes, scales and outliers
    # (≈ the disk bytes); HPTQ's CPU kernel keeps dense codes of 4, 5 or 8 bits per 32 rows, picked by
    # measured kernel time (runtime.hptq_dense_widths), so at most 8 bits a weight plus side tensors.
    limit = 1.25 * disk if row.startswith("ssqr") else weights * 8.5 / 8
    assert resident <= limit, (row, resident, disk, 8 * resident / weights)
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.slow
@pytest.mark.vllm
def test_embedded_hptq_greedy_tokens_equal_vllm(smollm2_checkpoints, austen_text):
    pytest.importorskip("vllm")
    from tests.fixtures.vllm_engine import run_engine

    folder = smollm2_checkpoints["hptq-4.3"]
    model, tokenizer = load_model(folder, dtype=torch.float32)
    words = austen_text["eval"].split()
    prompts = [tokenizer(" ".join(words[i:i + 12]))["input_ids"] for i in (100, 2000, 30000)]
    tokens, _ = run_engine(folder, 1, prompts, new_tokens=16)
    assert greedy(model, prompts, 16) == tokens


@pytest.mark.slow
def test_embedded_perplexity_on_4_windows_matches_babai_eval(smollm2_checkpoints, austen_text, tmp_path):
    """babai-eval (float32, through the integration) equals the oracle's float32 perplexity; the
    integration in bfloat16 (the CPU kernel) is within the bf16 tolerance of it: per window,
    |mean NLL_babai16 − mean NLL_32| ≤ 4 · mean |NLL_oracle16 − NLL_oracle32| per token."""
    from babai_quantizer.evaluate import main as babai_eval
    from babai_quantizer.evaluate import token_windows

    folder = smollm2_checkpoints["hptq-4.3"]
    assert babai_eval([str(folder), "--split", "eval", "--window", "1024", "--max-windows", "4",
                       "--json", str(tmp_path / "ppl.json")]) == 0
    ppl_eval = json.loads((tmp_path / "ppl.json").read_text())["ppl"]
    oracle32, tokenizer = load_dequantized(folder, dtype=torch.float32)
    oracle16, _ = load_dequantized(folder, dtype=torch.bfloat16)
    babai16, _ = load_model(folder, dtype=torch.bfloat16)
    ids = torch.tensor(tokenizer(austen_text["eval"], add_special_tokens=False)["input_ids"])
    windows = token_windows(ids, 1024)[:4]
    nll32 = [token_nll(oracle32, w) for w in windows]
    ppl32 = float(torch.cat(nll32).mean().exp())
    assert ppl_eval == pytest.approx(ppl32, rel=1e-4)
    for w, n32 in zip(windows, nll32):
        d = (token_nll(oracle16, w) - n32).abs().mean()
        assert 0 < d < 0.5, d
        assert abs(token_nll(babai16, w).mean() - n32.mean()) <= 4 * d


# ------------------------------------------------------------------ lm-eval, both backends (slow)

def lm_eval_results(tmp_path, backend: str, model_args: str, tasks) -> dict:
    """Run `python -m eval.run` (lm_eval with the integration) on a local task; its results JSON."""
    import os
    import subprocess
    import sys

    out = tmp_path / backend
    cmd = [sys.executable, "-m", "eval.run", "--model", backend, "--model_args", model_args, "--include_path",
           str(tasks), "--tasks", "austen_cloze", "--limit", "12", "--batch_size", "4", "--output_path", str(out)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (result,) = out.rglob("results_*.json")
    return json.loads(result.read_text())["results"]["austen_cloze"]


@pytest.mark.slow
@pytest.mark.vllm
def test_lm_eval_hf_and_vllm_backends_agree_on_the_local_task(tiny, tmp_path, austen_text):
    """float32 (the dense reference kernel in both engines): same accuracy, perplexity within 1e-3.
    Paragraphs of at most 48 words, so no request exceeds the tiny model's 256 positions (the two
    backends truncate long contexts differently)."""
    pytest.importorskip("vllm")
    pytest.importorskip("lm_eval")
    from eval.austen_tasks import paragraphs, write_tasks

    short = [p for p in paragraphs(austen_text["eval"]) if len(p.split()) <= 48]
    write_tasks(tmp_path / "tasks", "\n\n".join(short))
    folder, _ = tiny["ssqr-w4"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    docs = [json.loads(line) for line in (tmp_path / "tasks" / "austen_cloze.jsonl").read_text().splitlines()[:12]]
    assert max(len(tokenizer(d["context"] + " " + d["target"])["input_ids"]) for d in docs) < 256
    hf = lm_eval_results(tmp_path, "hf", f"pretrained={folder},dtype=float32", tmp_path / "tasks")
    vllm = lm_eval_results(tmp_path, "vllm", f"pretrained={folder},quantization=babai,dtype=float32,"
                                             "enforce_eager=True,max_model_len=256", tmp_path / "tasks")
    assert hf["acc,none"] == vllm["acc,none"]
    assert hf["perplexity,none"] == pytest.approx(vllm["perplexity,none"], rel=1e-3)


def test_local_austen_tasks_cover_the_text(tmp_path):
    """The cloze documents are paragraphs of ≥ 40 words minus their last word (the target; paragraphs
    whose last word is glued to an opening quote are left out); the perplexity documents are all
    paragraphs, re-flowed, in order; the YAMLs point at the written data."""
    import yaml

    from eval.austen_tasks import MIN_WORDS, write_tasks

    long = " ".join(f"word{i}" for i in range(MIN_WORDS)) + " the final Answer."
    text = f"Title\n\n{long}\nwrapped line, ending in \"quoted\".\n\nshort one.\n\n{long}\n"
    assert write_tasks(tmp_path, text) == {"austen_cloze": 1, "austen_ppl": 1}
    cloze = [json.loads(line) for line in (tmp_path / "austen_cloze.jsonl").read_text().splitlines()]
    assert cloze == [{"context": long.removesuffix(" Answer."), "target": "Answer"}]
    (ppl,) = [json.loads(line) for line in (tmp_path / "austen_ppl.jsonl").read_text().splitlines()]
    assert ppl["text"] == f"Title\n\n{long} wrapped line, ending in \"quoted\".\n\nshort one.\n\n{long}"
    for task in ("austen_cloze", "austen_ppl"):
        config = yaml.safe_load((tmp_path / f"{task}.yaml").read_text())
        assert config["task"] == task
        assert config["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / f"{task}.jsonl")


def test_lm_eval_runner_answers_vllms_version_under_vllm_cpu():
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
        pytest.skip("the real vllm distribution is installed: nothing to alias")
    except metadata.PackageNotFoundError:
        pass
    try:
        expected = metadata.version("vllm-cpu") + "+cpu"
    except metadata.PackageNotFoundError:
        pytest.skip("no vllm-cpu")
    code = "from eval.run import alias_vllm_cpu\nimport importlib.metadata as m\nalias_vllm_cpu()\nprint(m.version('vllm'))"
    assert run_python(code).split()[-1] == expected


@pytest.mark.parametrize("arch", ["MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"])
@pytest.mark.parametrize("fmt", ["ssqr", "hptq"])
def test_every_architecture_the_quantizer_accepts(tmp_path, arch, fmt):
    """A tiny model of each architecture babai-quantize accepts (Llama: the tests above; Qwen2 has q/k/v
    biases, Qwen3 q/k norms), quantized by the CLI: float32 logits through from_pretrained equal the
    reference dequantizer's."""
    import transformers

    from babai_quantizer.calibration import SUPPORTED_ARCHITECTURES
    from babai_quantizer.cli import main
    from tests.fixtures.tiny_checkpoint import CORPUS, save_tiny_tokenizer

    assert arch in SUPPORTED_ARCHITECTURES
    cls = getattr(transformers, arch)
    config = cls.config_class(vocab_size=save_tiny_tokenizer(tmp_path / "base"), hidden_size=128, intermediate_size=256,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                              max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp_path / "base")
    words = CORPUS.split()
    (tmp_path / "calib.txt").write_text(" ".join(words[(7 * i) % len(words)] for i in range(900)))
    settings = ["--group-size", "32"] if fmt == "ssqr" else ["--target-bits", "4.5"]
    assert main(["--model", str(tmp_path / "base"), "--calib-text", str(tmp_path / "calib.txt"), "--output",
                 str(tmp_path / "q"), "--nsamples", "4", "--seqlen", "32", "--format", fmt, *settings,
                 "--threads", "1"]) == 0
    model, _ = load_model(tmp_path / "q", dtype=torch.float32)
    assert type(model).__name__ == arch and len(babai_layers(model)) == 14
    reference, _ = load_dequantized(tmp_path / "q", dtype=torch.float32)
    ids = torch.tensor([SEQUENCES[0]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)
