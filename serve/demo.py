"""The project's main job, end to end: `python -m babai_serve.demo`.

1. fetch/verify the embedded assets (SmolLM2-135M-Instruct, Jane Austen's novels);
2. quantize the model with `babai-quantize` (SSQR 4-bit, group 64, 1% outliers by default; the
   checkpoint is cached under the asset cache and reused on the next run);
3. start `vllm serve CKPT --quantization babai` (OpenAI server on 127.0.0.1) through babai_serve.launch;
4. send one OpenAI chat request, print the answer, and shut the server down.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PROMPT = "Who is Mr. Darcy in Pride and Prejudice?"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def prepare_assets() -> Path:
    """Build or verify the embedded model and text; return the model folder."""
    from babai_quantizer import assets

    for split in ("calib", "eval"):
        print(f"text {split}: {assets.text_path(split)}")
    folder = assets.model_dir()
    print(f"model: {folder}")
    return folder


def quantize(model_dir: Path, fmt: str, bits: int) -> Path:
    """The cached checkpoint for (fmt, bits), quantizing it first if it is not there yet.

    The quantizer writes atomically, so an existing folder is a complete checkpoint.
    """
    from babai_quantizer import assets
    from babai_quantizer.cli import main as quantize_main

    dest = assets.cache_dir() / "checkpoints" / f"{model_dir.name}-{fmt}-w{bits}g64"
    if (dest / "config.json").is_file():
        print(f"reusing {dest}")
        return dest
    argv = ["--model", str(model_dir), "--output", str(dest), "--format", fmt, "--bits", str(bits),
            "--group-size", "64"]
    print("babai-quantize " + " ".join(argv), flush=True)
    if quantize_main(argv) != 0:
        raise RuntimeError("quantization failed (see the error above)")
    return dest


def ask(base_url: str, prompt: str, max_tokens: int) -> str:
    """One OpenAI chat completion (greedy) from the server at `base_url`."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused")
    model = client.models.list().data[0].id
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=max_tokens, temperature=0)
    return chat.choices[0].message.content


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m babai_serve.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default=PROMPT, help="the chat message sent to the server")
    p.add_argument("--max-tokens", type=int, default=96, help="longest answer, in tokens")
    p.add_argument("--format", choices=("ssqr", "hptq"), default="ssqr", help="checkpoint format")
    p.add_argument("--bits", type=int, default=4, help="SSQR inlier bits (2, 3, 4)")
    args = p.parse_args(argv)
    start = time.perf_counter()

    from babai_quantizer.assets import AssetError
    from babai_serve.launch import BabaiServer

    try:
        step("1. assets")
        model_dir = prepare_assets()
        step(f"2. quantize ({args.format})")
        ckpt = quantize(model_dir, args.format, args.bits)
        step("3. serve with vLLM (--quantization babai)")
        env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        with BabaiServer(ckpt, "--enforce-eager", "--max-model-len", "2048", env=env) as server:
            print(f"server ready at {server.base_url}")
            step("4. one OpenAI chat request")
            print(f"user: {args.prompt}\nassistant: {ask(server.base_url, args.prompt, args.max_tokens)}")
        print("server stopped")
    except (AssetError, RuntimeError, ValueError, OSError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
