"""Tiny random Llama checkpoints in both babai formats, with their dequantized fp32 twin.

For tests and smoke checks of the vLLM plugin: `build_tiny_checkpoint(dest, fmt)` writes a
checkpoint folder and returns the dequantized state dict that transformers can run. The
quantization is plain round-to-nearest (the algorithms live in quantizer/); what matters here is
that every format feature appears: SSQR outliers and a non-identity permutation (block-local on
row-parallel layers, shared by fused siblings), HPTQ escapes and several chunks per row.
Depends on torch, transformers, tokenizers — never on vllm.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from kernels.hptq.pack import encode_hptq
from kernels.ssqr.pack import pack_ssqr
from quantizer.checkpoint import save_quantized_checkpoint

# Fused siblings (vLLM's qkv_proj, gate_up_proj) share one permutation; row-parallel layers get a
# permutation local to each of ROW_PARALLEL_BLOCKS input blocks (docs/format.md §2).
SIBLINGS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}
ROW_PARALLEL = ("o_proj", "down_proj")
ROW_PARALLEL_BLOCKS = 2
CORPUS = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
          "must be in want of a wife. The quick brown fox jumps over the lazy dog. Hello, how are you "
          "today? I am fine, thank you. What is the capital of France? Paris is the capital of France.")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_llama_config(vocab_size: int):
    """A 2-layer GQA Llama (4 query heads, 2 key/value heads of size 32) whose linears split in 2."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="float32",
                       architectures=["LlamaForCausalLM"])


def save_tiny_tokenizer(folder: Path) -> int:
    """Train a small byte-level BPE tokenizer (with a chat template) into `folder`; return its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok.train_from_iterator([CORPUS] * 4, trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


def _perm(k: int, blocks: int, g: torch.Generator) -> torch.Tensor:
    """A random permutation of 0..k-1 local to each of `blocks` equal blocks."""
    size = k // blocks
    return torch.cat([b * size + torch.randperm(size, generator=g) for b in range(blocks)])


def quantize_ssqr(w: torch.Tensor, perm: torch.Tensor, bits: int, group: int, g: torch.Generator
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """RTN SSQR of w (N, K) fp32 in stored order `perm`, two forced outliers per row.

    Returns (packed tensors, dequantized weight (N, K) fp32 in original order).
    """
    n, k = w.shape
    ws = w[:, perm]
    qmax = 2 ** (bits - 1) - 1
    scales = (ws.reshape(n, k // group, group).abs().amax(-1) / qmax).clamp_min(1e-4).half()
    s = scales.float().repeat_interleave(group, dim=1)
    z = torch.round(ws / s).clamp(-qmax - 1, qmax)
    outliers = torch.zeros(n, k, dtype=torch.float16)
    cols = torch.stack([torch.randperm(k, generator=g)[:2] for _ in range(n)])
    rows = torch.arange(n)[:, None].expand_as(cols)
    outliers[rows, cols] = (3 * ws[rows, cols] + 0.05).half()
    z[rows, cols] = 0
    stored = s * z + outliers.float()
    dequant = torch.empty_like(stored)
    dequant[:, perm] = stored
    return pack_ssqr(z.to(torch.int32), scales, perm, outliers, bits), dequant


def quantize_hptq(w: torch.Tensor, chunk: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """RTN HPTQ of w (N, K) fp32 with a step of max|w|/12 and a few large codes (escapes)."""
    scale = float(w.abs().max()) / 12
    z = torch.round(w / scale).to(torch.int32)
    z[0, :3] = torch.tensor([400, -1000, 20000], dtype=torch.int32)  # far outside the table
    tensors = encode_hptq(z, scale, chunk)
    return tensors, tensors["hptq_scale"] * z.float()


def build_tiny_checkpoint(dest: str | Path, fmt: str, *, bits: int = 4, group_size: int = 32,
                          seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a tiny random Llama checkpoint in format `fmt` ("ssqr" | "hptq") at `dest`.

    Returns the dequantized fp32 state dict (Hugging Face names) for transformers.
    """
    from transformers import LlamaForCausalLM

    dest = Path(dest)
    tok_dir = dest.parent / f".{dest.name}.tokenizer"
    vocab = save_tiny_tokenizer(tok_dir)
    config = tiny_llama_config(vocab)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config.initializer_range = 0.2  # large weights: confident logits, no greedy near-ties
    state = {k: v.float().contiguous() for k, v in LlamaForCausalLM(config).state_dict().items()}

    tensors, dequant, perms = {}, {}, {}
    for name, w in state.items():
        module, _, kind = name.rpartition(".")
        last = module.rpartition(".")[2]
        if kind != "weight" or not module.startswith("model.layers.") or w.dim() != 2:
            tensors[name] = dequant[name] = w
            continue
        if fmt == "ssqr":
            blocks = ROW_PARALLEL_BLOCKS if last in ROW_PARALLEL else 1
            key = (module.rpartition(".")[0], SIBLINGS.get(last, last))
            perm = perms.setdefault(key, _perm(w.shape[1], blocks, g))
            packed, dequant[name] = quantize_ssqr(w, perm, bits, group_size, g)
        else:
            packed, dequant[name] = quantize_hptq(w, chunk=w.shape[1] // (2 * ROW_PARALLEL_BLOCKS))
        tensors.update({f"{module}.{t}": v for t, v in packed.items()})

    qc = {"quant_method": "babai", "version": 1, "format": fmt,
          "bits": bits if fmt == "ssqr" else None, "group_size": group_size if fmt == "ssqr" else None,
          "outlier_rate": None, "target_bits": None, "max_code_len": 12, "escape_bits": 16,
          "ordering": "identity", "damping": 0.01, "float_target": False,
          "modules_to_not_convert": ["lm_head"]}
    save_quantized_checkpoint(dest, hf_config=config.to_dict(), tensors=tensors, quantization_config=qc,
                              copy_from=tok_dir, overwrite=True)
    shutil.rmtree(tok_dir)
    return dequant


def transformers_greedy(model_dir: str | Path, state: dict[str, torch.Tensor], prompts: list[list[int]],
                        new_tokens: int) -> list[list[int]]:
    """Greedy continuations (token ids, end-of-sequence ignored) of transformers' Llama running the
    dequantized fp32 weights `state` with the config of `model_dir`: the independent reference."""
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    del config.quantization_config
    model = LlamaForCausalLM(config).float().eval()
    model.load_state_dict(state)
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = model.generate(torch.tensor([p]), max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
            out.append(ids[0, len(p):].tolist())
    return out
