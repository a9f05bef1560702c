"""`babai-quantize` / `python -m quantizer`: quantize a Hugging Face causal LM into a checkpoint.

Defaults: the embedded SmolLM2-135M-Instruct, calibrated on the Austen calibration split,
SSQR 4-bit, group size 64, 1 % outliers, act-order.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from babai_quantizer.options import (ALGORITHMS, ALLOCATIONS, FORMATS, ORDERINGS, RATE_MODES, SCALE_INITS, SSQR_GROUP_SIZES,
                                     QuantizeOptions)

DESCRIPTION = """Quantize a Llama-family causal LM (Llama, Mistral, Qwen2, Qwen3) layer by layer with
GPTQ/Babai and write a Hugging Face checkpoint folder (config.json quantization_config per
docs/format.md, safetensors, tokenizer, quant_report.json). The folder is written to a temporary
directory and renamed at the end, so a failed run leaves nothing at --output."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="babai-quantize", description=DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=None,
                   help="Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct, built on first use)")
    p.add_argument("--calib-text", type=Path, default=None,
                   help="UTF-8 calibration text file (default: the embedded Austen calibration split)")
    p.add_argument("--output", type=Path, default=None,
                   help="checkpoint folder to create (default: ./checkpoints/<model>-<format>-<bits>)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it already exists")
    p.add_argument("--format", choices=FORMATS, default="ssqr",
                   help="ssqr: b-bit groups + 16-bit outliers, no clipping; hptq: one scale per matrix, "
                        "Huffman-coded unbounded integers (GPTQ); hrtn: the same with round-to-nearest; "
                        "gptq: classic clipped GPTQ, written in the standard GPTQ layout; rtn: round-to-nearest "
                        "with clipping, GPTQ layout")
    p.add_argument("--bits", type=int, default=4,
                   help="integer bits per weight: ssqr inliers 2, 3 or 4; gptq and rtn 2, 3, 4 or 8")
    p.add_argument("--target-bits", type=float, default=None,
                   help="target effective bits/weight for hptq/hrtn (required for them), e.g. 4.125")
    p.add_argument("--group-size", type=int, default=None,
                   help="columns per scale group (ssqr, gptq, rtn); must divide every layer's input size. Default: "
                        f"ssqr the largest of {list(SSQR_GROUP_SIZES)} dividing every input size (the measured best, "
                        "benchmarks/results/quality.md), gptq/rtn 64")
    p.add_argument("--outlier-rate", type=float, default=0.01,
                   help="ssqr: target fraction of 16-bit outliers per row (the scale search aims at it)")
    p.add_argument("--scale-init", choices=SCALE_INITS, default="rms",
                   help="ssqr: shape of the group scales the per-row multiplier scales: mse = GPTQ's "
                        "clipping-tuned MSE scales; rms = each group's root mean square; absmax")
    p.add_argument("--rate-mode", choices=RATE_MODES, default="cap",
                   help="ssqr: closest = each row's outlier count closest to rate·K; cap = round(rate·K) is a "
                        "hard per-row limit (the stored ELL width) and each row keeps its least-error point "
                        "within it")
    p.add_argument("--ordering", choices=ORDERINGS, default="act",
                   help="quantization order: act = descending diag(H) (GPTQ act-order); min-pivot = greedy "
                        "pivoted LDL minimizing tr(D); identity = original column order")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="gptq",
                   help="gptq format only: gptq = the blocked GPTQ sweep; babai = Babai's nearest plane run "
                        "back-to-front on reverse(order), same scales and grid (same integers, slower); the "
                        "report counts codes that differ from the GPTQ sweep per layer")
    p.add_argument("--damping", type=float, default=0.01,
                   help="relative damping: H += damping · mean(diag H) · I")
    p.add_argument("--float-target", action=argparse.BooleanOptionalAction, default=None,
                   help="Qronos-style target: fit the float model's layer outputs on the quantized model's "
                        "inputs (adds one float forward per layer and G = X̂ᵀX). Default: on for hptq (measured "
                        "-0.09 ppl at 3.3 and 4.3 bits for ~+50 %% quantize time, "
                        "benchmarks/results/quality_issue23.md), off for the other formats")
    p.add_argument("--no-true-sequential", dest="true_sequential", action="store_false",
                   help="capture every linear's H in one pass instead of re-running the layer after "
                        "q/k/v, o_proj and gate/up are quantized")
    p.add_argument("--nsamples", type=int, default=16, help="number of calibration windows")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0, help="seed for the calibration window offsets")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="compute device; only one decoder layer lives there at a time")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="floating-point dtype of the quantization sweep")
    p.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="linears to keep in 16 bit, repeatable: a module prefix ('model.layers.0'), a "
                        "dotted suffix ('mlp.down_proj') or an fnmatch pattern ('*.self_attn.*'); q/k/v and "
                        "gate/up must be kept together (vLLM fuses them); lm_head and the embeddings are always kept")
    p.add_argument("--row-parallel-blocks", type=int, default=None,
                   help="make o_proj/down_proj permutations block-local for this many tensor-parallel "
                        "parts (lowered per layer to what its shape allows). Default: ssqr 1 (one global "
                        "order, the measured best; pass 8 to serve o_proj/down_proj split over tensor-parallel "
                        "ranks), other formats 8")
    p.add_argument("--reduce", default="none", metavar="{none,lll,bkz-B}",
                   help="hptq only: reduce each layer's lattice basis (fpylll LLL, δ=0.99, or BKZ with block size "
                        "B, on 256-column windows of the Babai order) before Babai's nearest plane; the codes "
                        "are mapped back (z = T·z'), so the checkpoint format is unchanged. Needs the "
                        "'reduce' extra (pip install 'vllm-babai[reduce]'); ~1 %% lower layer error at equal bits")
    p.add_argument("--col-steps", default=None, metavar="{none,ldl,ldlP}",
                   help="hptq/hrtn: one step per input column, α ∝ D^(-1/2) from the LDL diagonal of the Hessian in "
                        "the Babai order (WaterSIC's waterfilling; 'ldlP': α ∝ D^(-P/2)), stored as one float16 per "
                        "column (format version 2, counted in the bits); 'none': one step per matrix. Default: hptq "
                        "ldl (the measured best, benchmarks/results/quality_issue23.md), none with --reduce and "
                        "for other formats")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="hptq/hrtn: 'uniform' = every linear at --target-bits; 'fisher' = one Lagrange multiplier "
                        "for the model: bits where the Fisher-weighted Babai error falls most per bit (one float "
                        "backward pass and Hessian pass first), the model average held to --target-bits "
                        "(quant_report.json: allocation, and each layer's effective_bits). Default: hptq fisher "
                        "(the measured best), others uniform")
    p.add_argument("--allocation-span", type=float, default=1.5,
                   help="--allocation fisher: each linear's target stays within this many bits of --target-bits")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads. On a shared, busy machine use 1: OpenMP threads spin when cores "
                        "are oversubscribed and a sweep can run 100x slower")
    return p


def default_group_size(fmt: str, in_features: list[int] | None) -> int:
    """--group-size's default: ssqr the largest of SSQR_GROUP_SIZES dividing every input size (64 when
    the sizes are unknown), other formats 64."""
    if fmt != "ssqr" or not in_features:
        return 64
    return next((g for g in SSQR_GROUP_SIZES if all(k % g == 0 for k in in_features)), 32)


def model_in_features(model_dir: Path) -> list[int]:
    """The input sizes of a Llama-family model's decoder linears, from its config.json."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return [c["hidden_size"], c["intermediate_size"], c["num_attention_heads"] * head_dim]


def options_from_args(args: argparse.Namespace, in_features: list[int] | None = None) -> QuantizeOptions:
    """The validated options; a ValueError names the command-line flag (--target-bits, not target_bits).
    in_features: the model's linear input sizes, for --group-size's ssqr default."""
    group_size = args.group_size if args.group_size is not None else default_group_size(args.format, in_features)
    blocks = args.row_parallel_blocks if args.row_parallel_blocks is not None else (1 if args.format == "ssqr" else 8)
    options = QuantizeOptions(
        format=args.format, bits=args.bits, target_bits=args.target_bits, group_size=group_size,
        outlier_rate=args.outlier_rate, ordering=args.ordering, algorithm=args.algorithm, damping=args.damping,
        float_target=args.float_target if args.float_target is not None else args.format == "hptq",
        true_sequential=args.true_sequential,
        row_parallel_blocks=blocks, skip=tuple(args.skip), device=args.device,
        dtype=args.dtype, reduce=args.reduce, scale_init=args.scale_init, rate_mode=args.rate_mode,
        col_steps=args.col_steps if args.col_steps is not None else (
            "ldl" if args.format == "hptq" and args.reduce == "none" else "none"),
        allocation=args.allocation if args.allocation is not None else ("fisher" if args.format == "hptq" else "uniform"),
        allocation_span=args.allocation_span)
    try:
        options.validate()
    except ValueError as e:
        field, _, rest = str(e).partition(":")
        if field in {f.name for f in dataclasses.fields(QuantizeOptions)}:
            raise ValueError(f"--{field.replace('_', '-')}:{rest}") from None
        raise
    return options


def run(args: argparse.Namespace) -> Path:
    """Quantize per `args` and write the checkpoint; returns its path. ValueError/OSError on bad input."""
    from babai_quantizer import assets
    from babai_quantizer.calibration import calibration_windows, load_causal_lm
    from babai_quantizer.allocation import quantize_allocated
    from babai_quantizer.export import default_output, save_quantized

    options = options_from_args(args)
    if args.threads < 1:
        raise ValueError(f"--threads: must be ≥ 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    model_dir = args.model if args.model is not None else assets.model_dir()
    if args.group_size is None and args.format == "ssqr" and (Path(model_dir) / "config.json").is_file():
        options = options_from_args(args, model_in_features(Path(model_dir)))
    calib = args.calib_text if args.calib_text is not None else assets.text_path("calib")
    output = args.output if args.output is not None else default_output(Path(model_dir), options)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {output} already exists; pass --overwrite to replace it")
    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"--model {model_dir}: not a Hugging Face model folder (no config.json)")
    if not Path(calib).is_file():
        raise ValueError(f"--calib-text {calib}: no such file")
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(model_dir)
    windows = calibration_windows(tokenizer, Path(calib).read_text(encoding="utf-8"),
                                  args.nsamples, args.seqlen, args.seed)
    result, allocation = quantize_allocated(model, windows, options)
    extra = {"model": str(model_dir), "calib_text": str(calib), "nsamples": args.nsamples,
             "seqlen": args.seqlen, "seed": args.seed, "wall_seconds": time.perf_counter() - start,
             **({"allocation": allocation} if allocation else {})}
    path = save_quantized(result, options, output, model_dir, overwrite=args.overwrite, extra_report=extra)
    totals = result.report()["totals"]
    print(f"wrote {path}: {totals['quantized_linears']} linears, {totals['effective_bits']:.3f} bits/weight, "
          f"{time.perf_counter() - start:.0f} s")
    return path


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so that a checkpoint being written is cleaned up as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        run(args)
    except (ValueError, OSError) as e:   # FileExistsError is an OSError
        print(f"babai-quantize: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        name = "SIGTERM" if isinstance(e, Terminated) else "interrupted (SIGINT)"
        print(f"babai-quantize: {name}: stopped; --output is unchanged", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
