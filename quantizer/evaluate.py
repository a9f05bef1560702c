"""Perplexity of a causal LM on a text, in fixed non-overlapping token windows.

The text is tokenized once (no BOS added) and cut into windows of `window` tokens with stride
`window`; a trailing partial window of at least 2 tokens is kept. Within a window, token t is
predicted from tokens < t of the same window, so a window of L tokens scores L - 1 tokens.
Perplexity = exp(sum of NLL / number of scored tokens), i.e. the token-weighted mean over windows.

CLI: `babai-eval [MODEL_DIR] [--text FILE | --split eval] [--window 1024] [--max-windows N]
[--device cpu] [--dtype float32] [--json OUT]` (MODEL_DIR defaults to the embedded SmolLM2).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll_sum: float
    scored_tokens: int
    windows: int
    window: int


def load_for_eval(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load `(model, tokenizer)` from a Hugging Face model folder, in eval mode on `device`, computing in
    `dtype` (default float32: exact for bf16 weights, and on CPUs without AMX ~4x faster than bf16 matmul).

    One loader for every folder: transformers' `from_pretrained`, with quantized `babai` checkpoints
    (config.json `quantization_config.quant_method == "babai"`, docs/format.md) served by the
    transformers integration (transformers_babai: the kernel chooser's kernels; in float32 on CPU the
    dense torch reference, i.e. the exact dequantized weights). GPTQ-layout checkpoints (`--format
    gptq|rtn`) go through transformers' own GPTQ support, which needs its GPTQ backend installed.
    """
    import transformers_babai

    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"model folder {path}: no config.json (not a Hugging Face model folder)")
    try:
        json.loads(config_path.read_text())
    except ValueError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    return transformers_babai.load_model(path, device, dtype)


def token_windows(ids: torch.Tensor, window: int) -> list[torch.Tensor]:
    """Cut a 1-D id tensor into consecutive windows of `window` tokens; keep a tail of >= 2 tokens."""
    if window < 2:
        raise ValueError(f"window: must be >= 2 tokens, got {window}")
    windows = list(torch.split(ids, window))
    if windows and windows[-1].numel() < 2:
        windows.pop()
    return windows


@torch.no_grad()
def window_nll(model, ids: torch.Tensor) -> float:
    """Sum of next-token NLL (fp32 log-softmax) over one window `ids` (L,) int64; scores L - 1 tokens."""
    logits = model(ids[None]).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum").item()


def evaluate_text(model, tokenizer, text: str, window: int = 1024, device: str | torch.device | None = None,
                  max_windows: int | None = None, progress: bool = False) -> PerplexityResult:
    """Token-weighted perplexity of `model` on `text` over non-overlapping `window`-token windows."""
    if not text:
        raise ValueError("text: empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    windows = token_windows(ids, window)[:max_windows]
    if not windows:
        raise ValueError(f"text: only {ids.numel()} tokens, too short for one window")
    nll_sum = 0.0
    for w in tqdm(windows, desc="perplexity", unit="window", disable=not progress):
        nll_sum += window_nll(model, w.to(device))
    scored = sum(w.numel() - 1 for w in windows)
    return PerplexityResult(math.exp(nll_sum / scored), nll_sum, scored, len(windows), window)


def perplexity(model, tokenizer, text: str, window: int = 1024, device: str | torch.device | None = None,
               max_windows: int | None = None) -> float:
    """Perplexity of `model` on `text` (see evaluate_text)."""
    return evaluate_text(model, tokenizer, text, window, device, max_windows).ppl


@torch.no_grad()
def greedy_chat(model, tokenizer, prompt: str, max_new_tokens: int = 64) -> str:
    """The model's greedy answer to one user message, formatted with the tokenizer's chat template."""
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"].to(next(model.parameters()).device)
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="babai-eval", description="Perplexity of a model folder on a text.")
    p.add_argument("model_dir", nargs="?", help="Hugging Face model folder (default: the embedded SmolLM2)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", type=Path, help="UTF-8 text file to score")
    src.add_argument("--split", choices=["calib", "eval"], default="eval",
                     help="embedded Austen split to score (default: eval = Pride and Prejudice)")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype (default float32)")
    p.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from babai_quantizer import assets

    args = parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else assets.model_dir()
    text_file = args.text if args.text else assets.text_path(args.split)
    if not text_file.is_file():
        print(f"babai-eval: --text {text_file}: no such file", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        model, tokenizer = load_for_eval(model_dir, args.device, DTYPES[args.dtype])
    except (ValueError, ImportError) as e:   # ImportError: e.g. transformers' GPTQ backend is not installed
        print(f"babai-eval: {e}", file=sys.stderr)
        return 2
    result = evaluate_text(model, tokenizer, text_file.read_text(encoding="utf-8"), args.window, args.device,
                           args.max_windows, progress=True)
    seconds = time.perf_counter() - start
    print(f"perplexity {result.ppl:.3f} over {result.scored_tokens} tokens in {result.windows} windows "
          f"of {result.window} ({model_dir}, {text_file.name}, {args.dtype}, {seconds:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({**asdict(result), "model": str(model_dir), "text": str(text_file),
                                         "dtype": args.dtype, "device": args.device, "seconds": seconds},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
