"""The project's main job, end to end: `python -m babai_serve.demo`.

1. fetch/verify the embedded assets (SmolLM2-135M-Instruct, Jane Austen's novels);
2. quantize the model with `babai-quantize` (the checkpoint is cached under the asset cache and
   reused on the next run);
3. start `vllm serve CKPT --quantization babai` (OpenAI server on 127.0.0.1) through babai_serve.launch,
   send one streamed OpenAI chat request, stop the server;
4. do the same with the unquantized bf16 model;
5. print both answers side by side with their decode tokens/s and weight bits.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROMPT = "Who is Mr. Darcy in Pride and Prejudice?"
DEFAULT_FORMAT = "hptq"      # best quality per bit (quality table) that the fast CPU path serves
DEFAULT_TARGET_BITS = 4.3


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


def quantize(model_dir: Path, args) -> Path:
    """The cached checkpoint for the chosen format and size, quantizing it first if it is not there
    yet (the cache key holds quantizer_fingerprint(), so after a quantizer change it is rebuilt). The
    quantizer writes atomically, so an existing folder is a complete checkpoint."""
    from babai_quantizer import assets
    from babai_quantizer.cli import main as quantize_main
    from babai_quantizer.fingerprint import quantizer_fingerprint

    size = ["--target-bits", str(args.target_bits)] if args.format == "hptq" else ["--bits", str(args.bits),
                                                                                   "--group-size", "64"]
    # Keyed by the quantizer's code too: a checkpoint that older code wrote (other defaults) is not reused.
    dest = (assets.cache_dir() / "checkpoints"
            / f"{model_dir.name}-{args.format}-{'-'.join(size[1::2])}-{quantizer_fingerprint()}")
    if (dest / "config.json").is_file():
        print(f"reusing {dest}")
        return dest
    argv = ["--model", str(model_dir), "--output", str(dest), "--format", args.format, *size]
    print("babai-quantize " + " ".join(argv), flush=True)
    if quantize_main(argv) != 0:
        raise RuntimeError("quantization failed (see the error above)")
    return dest


@dataclass
class Answer:
    text: str
    tokens: int
    decode_tokens_per_s: float


def ask(base_url: str, prompt: str, args) -> Answer:
    """One streamed OpenAI chat completion; decode speed = (tokens − 1) / (last − first token time)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused")
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, stream=True,
        stream_options={"include_usage": True}, extra_body={"repetition_penalty": args.repetition_penalty})
    pieces, times, tokens = [], [], 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            times.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    rate = (tokens - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    return Answer("".join(pieces), tokens, rate)


def resident_bits(log: Path) -> float | None:
    """Bits/weight of the quantized linears as served, from the plugin's `babai resident bytes` line."""
    found = re.findall(r"babai resident bytes: \d+ over \d+ weights \(([\d.]+) bits/weight\)",
                       log.read_text(errors="replace"))
    return float(found[-1]) if found else None


def serve_and_ask(folder: Path, label: str, args) -> tuple[Answer, float | None]:
    from babai_serve.launch import BabaiServer

    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log = Path(tempfile.mkstemp(prefix=f"babai-demo-{label}-", suffix=".log")[1])
    print(f"starting vLLM on {folder} (log {log})", flush=True)
    with BabaiServer(folder, "--max-model-len", "2048", env=env, log_path=log) as server:
        answer = ask(server.base_url, args.prompt, args)
    bits = resident_bits(log)
    log.unlink()
    return answer, bits


def side_by_side(rows: list[tuple[str, Answer, str]], prompt: str) -> str:
    """The two answers with their decode speed and weight bits, one block each."""
    out = [f"user: {prompt}"]
    for label, answer, bits in rows:
        out.append(f"\n--- {label}  |  {answer.decode_tokens_per_s:.1f} decode tokens/s  |  {bits}\n{answer.text}")
    base = rows[-1][1].decode_tokens_per_s
    out.append(f"\nspeed ratio (quantized / bf16): {rows[0][1].decode_tokens_per_s / base:.2f}x")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m babai_serve.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default=PROMPT, help="the chat message sent to both servers")
    p.add_argument("--max-tokens", type=int, default=96, help="longest answer, in tokens")
    p.add_argument("--format", choices=("ssqr", "hptq"), default=DEFAULT_FORMAT, help="checkpoint format")
    p.add_argument("--bits", type=int, default=4, help="SSQR inlier bits (2, 3, 4)")
    p.add_argument("--target-bits", type=float, default=DEFAULT_TARGET_BITS, help="HPTQ target bits/weight")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    p.add_argument("--repetition-penalty", type=float, default=1.1,
                   help="vLLM repetition penalty (>1 discourages loops; 1.0 disables it)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args(argv)
    start = time.perf_counter()

    from babai_quantizer.assets import AssetError

    try:
        step("1. assets")
        model_dir = prepare_assets()
        step(f"2. quantize ({args.format})")
        ckpt = quantize(model_dir, args)
        report = json.loads((ckpt / "quant_report.json").read_text())["totals"]
        step("3. serve the quantized checkpoint with vLLM (--quantization babai) and ask")
        quantized, resident = serve_and_ask(ckpt, args.format, args)
        step("4. serve the bf16 model with vLLM and ask the same")
        base, _ = serve_and_ask(model_dir, "bf16", args)
        step("5. side by side")
        print(side_by_side([
            (f"babai {args.format} ({ckpt.name})", quantized,
             f"{report['effective_bits']:.2f} bits/weight on disk, "
             f"{resident if resident is not None else float('nan'):.2f} resident"),
            ("bf16 (unquantized)", base, "16 bits/weight"),
        ], args.prompt))
    except (AssetError, RuntimeError, ValueError, OSError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
