"""The project's main job, end to end: `python -m serve.demo`.

Steps today: fetch/verify the embedded assets, load the bf16 SmolLM2 model, answer one chat prompt
greedily. (Later: quantize it, serve it with vLLM, and answer the prompt through the OpenAI API.)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PROMPT = "Who is Mr. Darcy?"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def prepare_assets() -> Path:
    """Build or verify the embedded model and text; return the model folder."""
    from quantizer import assets

    for split in ("calib", "eval"):
        print(f"text {split}: {assets.text_path(split)}")
    folder = assets.model_dir()
    print(f"model: {folder}")
    return folder


def load_model(folder: Path):
    """(model, tokenizer) of the unquantized model on CPU (see quantizer.evaluate.load_for_eval)."""
    from quantizer.evaluate import load_for_eval

    return load_for_eval(folder)


def answer(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    from quantizer.evaluate import greedy_chat

    return greedy_chat(model, tokenizer, prompt, max_new_tokens=max_new_tokens)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve.demo", description=__doc__)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    start = time.perf_counter()

    step("1. assets")
    from quantizer.assets import AssetError

    try:
        folder = prepare_assets()
    except AssetError as e:
        print(f"assets: {e}", file=sys.stderr)
        return 1
    step("2. load the unquantized model (bf16 weights, fp32 compute)")
    model, tokenizer = load_model(folder)
    step("3. greedy answer")
    print(f"user: {args.prompt}\nassistant: {answer(model, tokenizer, args.prompt, args.max_new_tokens)}")

    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
