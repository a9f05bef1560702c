"""The stages of benchmarks/gpu_check.sh, one process each, at Llama-3-8B shapes.

    python3 -m benchmarks.gpu_stages STAGE --stage-dir DIR [--dry-run]

- env: device, versions, the launch route (AOT bundle or Triton JIT) and the bundle.
- inputs: HPTQ-3.3 lane layouts (rounded Laplace codes whose checkpoint Huffman code costs 3.3
  bits/weight, as an HPTQ-3.3 layer's; benchmarks.hptq_cases) for K = 4096 (N = 14336) and K = 14336 (N = 4096), saved in
  DIR; the 4096x4096 and 4096->6144 layers are row prefixes of the first (lanes are stored row by
  row). Built once on the CPU, so the re-encoding stays out of the kernel stages.
- correctness: SSQR 4/3-bit (random packed codes, 1 % outliers, G = 128) and HPTQ lanes against
  torch references built from the format's own tensors (kernels.ssqr.reference.dequantize_ssqr;
  scale · z of the generated HPTQ codes), M = 1, 16, 128; the HPTQ decode kernel bit-exact.
- speed: ssqr_linear / hptq_linear (what the runtime serves) against torch bf16 F.linear at
  M = 1, 16, 128, CUDA-graph timing (benchmarks.kernel_speed.time_us).
- quantizer: one Llama-3-8B decoder layer's seven linears through babai_quantizer's
  quantize_linear on the GPU, GPTQ-w4 (g128) then HPTQ-3.3, Gram matrices from random activations
  of real size (128 × 2048 tokens); extrapolated to 32 layers.
Each stage writes DIR/STAGE.json, rewritten after every row (a stage stopped by its timeout
keeps what it measured). --dry-run stops before the first CUDA call: inputs are built on the CPU
(real K, at most DRY_ROWS rows), every kernel launch resolves its AOT cubin and packs its
arguments (babai_kernels.aot.dry_run) without running, and the quantizer runs on a tiny layer.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.sass import SHAPES as ALL_SHAPES

SHAPES = {name: ALL_SHAPES[name] for name in ("4096x4096", "4096->14336", "14336->4096", "4096->6144")}
M_VALUES = (1, 16, 128)
SSQR_BITS = (4, 3)
HPTQ_BITS = 3.3
GROUP, OUTLIER_RATE = 128, 0.01
DRY_ROWS = 512
LANE_LAYERS = {4096: 14336, 14336: 4096}      # K → N of the HPTQ layers built; others are prefixes
CALIB_TOKENS = 128 * 2048
LAYER_LINEARS = {  # Llama-3-8B decoder layer: name → (K, N, Gram matrix it reads)
    "self_attn.q_proj": (4096, 4096, "attn"), "self_attn.k_proj": (4096, 1024, "attn"),
    "self_attn.v_proj": (4096, 1024, "attn"), "self_attn.o_proj": (4096, 4096, "o"),
    "mlp.gate_proj": (4096, 14336, "mlp"), "mlp.up_proj": (4096, 14336, "mlp"),
    "mlp.down_proj": (14336, 4096, "down"),
}
LAYERS = 32


class Stage:
    """A stage's JSON file: `add` appends a row and rewrites DIR/STAGE.json at once."""

    def __init__(self, directory: Path, name: str, dry: bool):
        self.path = Path(directory) / f"{name}.json"
        self.data = dict(stage=name, dry_run=dry, rows=[], info={})
        self.save()

    def add(self, **row) -> None:
        self.data["rows"].append(row)
        print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
        self.save()

    def info(self, **kv) -> None:
        self.data["info"].update(kv)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _device(dry: bool) -> torch.device:
    if dry:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_stages.py needs a CUDA GPU (or --dry-run)")
    return torch.device("cuda")


def _rows(n: int, dry: bool) -> int:
    return min(n, DRY_ROWS) if dry else n


def stage_env(stage: Stage, dry: bool) -> None:
    import triton
    from babai_kernels import aot
    b = aot.bundle()
    stage.info(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
               gpu=None if dry else torch.cuda.get_device_name(),
               route="aot" if aot.use_aot(torch.device("cuda")) else "jit",   # no CUDA call
               bundle_triton=b.triton, bundle_variants=len(b.variants),
               bundle_bytes=aot.BUNDLE.stat().st_size)
    if not dry:
        stage.info(capability=list(torch.cuda.get_device_capability()),
                   sms=torch.cuda.get_device_properties(0).multi_processor_count)
    print(json.dumps(stage.data["info"]), flush=True)


def hptq_codes(k: int, n: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Laplace codes z (n, k) int64 on the CPU whose checkpoint code costs ≈ HPTQ_BITS per weight,
    and the matrix scale (1 / width, as benchmarks.hptq_cases); the same for the same (k, n, seed)."""
    from babai_kernels.hptq.pack import choose_chunk_cols
    from benchmarks.hptq_cases import laplace_codes, width_for
    gen = torch.Generator().manual_seed(seed)
    width = width_for(k, choose_chunk_cols(k), HPTQ_BITS, gen, "cpu")
    return laplace_codes((n, k), width, gen, "cpu"), 1.0 / width


def stage_inputs(stage: Stage, directory: Path, dry: bool) -> None:
    from babai_kernels.hptq.lanes import build_lane_layout
    for k, n in LANE_LAYERS.items():
        start = time.perf_counter()
        z, scale = hptq_codes(k, _rows(n, dry))
        lanes = build_lane_layout(z)
        torch.save(dict(lanes=lanes.__dict__, scale=scale, k=k, n=z.shape[0]), directory / f"lanes_{k}.pt")
        stage.add(k=k, n=z.shape[0], seconds=time.perf_counter() - start,
                  payload_bits_per_weight=lanes.payload_bits / z.numel(),
                  gpu_bits_per_weight=sum(t.numel() * t.element_size() * 8 for t in (
                      lanes.words, lanes.bases, lanes.offsets, lanes.lut)) / z.numel())


def prefix_lanes(lanes: dict, n: int) -> "LaneLayout":
    """LaneLayout of rows [0, n) of a saved lane layout (LaneLayout fields as a dict): lanes are
    stored row by row, so a row prefix is a prefix of bases and offsets (whole 32-row blocks) and
    of the words, which end with the look-ahead zero words the kernel reads past a lane."""
    from babai_kernels.hptq.lanes import LANE_GROUP, LOOK_AHEAD_WORDS, ROW_BLOCK, SPAN, LaneLayout
    spans = lanes["padded_k"] // SPAN
    groups = -(-spans // LANE_GROUP)
    rows = -(-n // ROW_BLOCK) * ROW_BLOCK
    if rows * spans > lanes["offsets"].numel():
        raise ValueError(f"n: {n} rows is more than the layout holds")
    full = rows * spans == lanes["offsets"].numel()
    bits = lanes["payload_bits"] if full else int(lanes["bases"][rows * groups])   # first bit of row `rows`
    words = torch.cat([lanes["words"][:-(-bits // 32)], torch.zeros(LOOK_AHEAD_WORDS, dtype=torch.int32)])
    return LaneLayout(words, lanes["bases"][:rows * groups].clone(), lanes["offsets"][:rows * spans].clone(),
                      lanes["lut"], lanes["padded_k"], bits)


def prefix_layer(lanes: dict, scale: float, k: int, n: int, device) -> "PreparedHPTQ":
    """PreparedHPTQ of rows [0, n) of a lane layout (LaneLayout fields as a dict) of a K = k layer
    (prefix_lanes), on `device`."""
    from babai_kernels.hptq.prepare import PreparedHPTQ
    p, device = prefix_lanes(lanes, n), torch.device(device)
    return PreparedHPTQ(n, k, scale, p.words.to(device), p.bases.to(device), p.offsets.to(device),
                        p.lut.to(device), p.padded_k, device)


def hptq_layer(directory: Path, k: int, n: int, device: torch.device, codes: bool = False):
    """(PreparedHPTQ of rows [0, n) of the saved K = k layer on `device`, its codes z (n, k) on the
    CPU when `codes` else None, scale)."""
    saved = torch.load(directory / f"lanes_{k}.pt")
    if n > saved["n"]:
        raise ValueError(f"n: the saved K={k} layer has {saved['n']} rows, asked for {n}")
    p = prefix_layer(saved["lanes"], saved["scale"], k, n, device)
    return p, hptq_codes(k, saved["n"])[0][:n] if codes else None, saved["scale"]


def ssqr_layer(k: int, n: int, bits: int, device: torch.device, seed: int):
    """(checkpoint tensors, PreparedSSQR) of a random SSQR layer (benchmarks.kernel_speed)."""
    from babai_kernels.ssqr import prepare_ssqr
    from benchmarks.kernel_speed import random_ssqr_tensors
    torch.manual_seed(seed)
    tensors = random_ssqr_tensors(n, k, bits, GROUP, OUTLIER_RATE, device)
    return tensors, prepare_ssqr(tensors, device)


def dry_launch_all(stage: Stage, name: str, calls) -> None:
    """Resolve and pack every launch of `calls` (thunks) without running it; one row per case."""
    from babai_kernels import aot
    with aot.dry_run() as log:
        for call in calls:
            call()
    stage.add(case=name, launches=len(log), cubins=sorted({v.cubin for _, v, _ in log}),
              params=sorted({len(v.params) + 2 for _, v, _ in log}),
              warps=sorted({v.num_warps for _, v, _ in log}), max_grid=[max(g[i] for _, _, g in log)
                                                                        for i in range(3)])


def ssqr_candidates(x: torch.Tensor, p) -> list:
    """Thunks launching every config the tuner may pick at x's M (dry run: each resolves a cubin)."""
    from babai_kernels.ssqr.matmul import launch
    from babai_kernels.ssqr.tuning import candidates
    return [lambda cfg=cfg: launch(x, p, None, cfg) for cfg in candidates(x.shape[0], p.n, p.k)]


def hptq_runs(x: torch.Tensor, p) -> list:
    """Thunks of what hptq_linear launches at x's M: the fused GEMV, or decode (then a matmul)."""
    from babai_kernels.hptq.gemv import gemv_fits, hptq_decode, hptq_gemv
    if gemv_fits(x.shape[0], p.padded_k):
        return [lambda: hptq_gemv(x, p)]
    return [lambda: hptq_decode(p, x.dtype)]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-30)).item()


def stage_correctness(stage: Stage, directory: Path, dry: bool) -> None:
    from babai_kernels.hptq.gemv import fused_max_m, hptq_decode
    from babai_kernels.hptq.linear import hptq_linear
    from babai_kernels.ssqr import ssqr_linear
    from babai_kernels.ssqr.reference import dequantize_ssqr
    device = _device(dry)
    for shape, (k, n) in SHAPES.items():
        n = _rows(n, dry)
        for bits in SSQR_BITS:
            tensors, p = ssqr_layer(k, n, bits, device, seed=bits)
            weight = None if dry else dequantize_ssqr(tensors).to(device)
            for m in M_VALUES:
                x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
                if dry:
                    dry_launch_all(stage, f"ssqr-{bits}bit {shape} M={m}", ssqr_candidates(x, p))
                    continue
                err = _rel_err(ssqr_linear(x, p), x.float() @ weight.T)
                stage.add(case=f"ssqr-{bits}bit", shape=shape, m=m, max_rel_err=err, ok=err < 2e-2,
                          locks_clear=not bool(p.locks.any()))
        p, z, scale = hptq_layer(directory, k, n, device, codes=not dry)
        ms = sorted({1, fused_max_m(p.padded_k), *M_VALUES})
        if dry:
            for m in ms:
                x = torch.zeros(m, k, dtype=torch.bfloat16)
                dry_launch_all(stage, f"hptq-{HPTQ_BITS} {shape} M={m}", hptq_runs(x, p))
            continue
        weight = z.to(device).to(torch.float32) * scale      # float32 products, as the kernel's
        exact = torch.equal(hptq_decode(p, torch.float32), weight)
        stage.add(case="hptq-decode", shape=shape, m=0, max_rel_err=0.0 if exact else float("nan"), ok=exact)
        for m in ms:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            err = _rel_err(hptq_linear(x, p), x.float() @ weight.T)
            stage.add(case=f"hptq-{HPTQ_BITS}", shape=shape, m=m, max_rel_err=err, ok=err < 2e-2)
        del weight
    if not dry:
        stage.info(all_ok=all(r["ok"] for r in stage.data["rows"]))


def stage_speed(stage: Stage, directory: Path, dry: bool) -> None:
    from babai_kernels.hptq.linear import hptq_linear
    from babai_kernels.ssqr import ssqr_linear
    from benchmarks.kernel_speed import copy_bandwidth, time_us
    device = _device(dry)
    if not dry:
        stage.info(copy_bandwidth_GBps=copy_bandwidth(device) / 1e9, timing="do_bench_cudagraph median")
    for shape, (k, n) in SHAPES.items():
        n = _rows(n, dry)
        layers = [(f"ssqr-{bits}bit", ssqr_layer(k, n, bits, device, seed=bits)[1], ssqr_linear)
                  for bits in SSQR_BITS]
        layers.append((f"hptq-{HPTQ_BITS}", hptq_layer(directory, k, n, device)[0], hptq_linear))
        weight = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        for m in M_VALUES:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            if dry:
                for name, p, _ in layers:
                    runs = ssqr_candidates(x, p) if name.startswith("ssqr") else hptq_runs(x, p)
                    dry_launch_all(stage, f"{name} {shape} M={m}", runs)
                continue
            bf16 = time_us(lambda: torch.nn.functional.linear(x, weight))
            for name, p, fn in layers:
                us = time_us(lambda: fn(x, p))
                stage.add(case=name, shape=shape, m=m, us=us, bf16_us=bf16, speedup=bf16 / us)
        del layers, weight


def gram(k: int, tokens: int, device: torch.device, seed: int, chunk: int = 8192) -> torch.Tensor:
    """(k, k) float32 Gram matrix XᵀX / tokens of random activations X (tokens, k): Gaussian with
    log-normal column scales (outlier channels, as real hidden states have)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    col = torch.exp(torch.randn(k, generator=gen, device=device))
    h = torch.zeros(k, k, device=device)
    for start in range(0, tokens, chunk):
        x = torch.randn(min(chunk, tokens - start), k, generator=gen, device=device) * col
        h.addmm_(x.T, x)
    return h / tokens


def stage_quantizer(stage: Stage, dry: bool) -> None:
    from babai_kernels.contract import ROW_PARALLEL
    from babai_quantizer.driver import quantize_linear
    from babai_quantizer.options import QuantizeOptions
    device = _device(dry)
    scale = 1 / 16 if dry else 1          # dry run: every dimension / 16, a few hundred tokens
    tokens = 512 if dry else CALIB_TOKENS
    runs = {"gptq-w4g128": dict(format="gptq", bits=4, group_size=128),
            "hptq-3.3": dict(format="hptq", target_bits=HPTQ_BITS)}
    stage.info(tokens=tokens, dims_scale=scale, layers=LAYERS)
    start = time.perf_counter()
    grams = {}
    for name, (k, _, which) in LAYER_LINEARS.items():
        if which not in grams:
            grams[which] = gram(int(k * scale), tokens, device, seed=len(grams))
    if device.type == "cuda":
        torch.cuda.synchronize()
    stage.info(gram_seconds=time.perf_counter() - start)
    gen = torch.Generator(device=device).manual_seed(0)
    for fmt, opts in runs.items():
        options = QuantizeOptions(**opts, device=str(device))
        options.validate()
        for name, (k, n, which) in LAYER_LINEARS.items():
            w = torch.randn(int(n * scale), int(k * scale), generator=gen, device=device) * 0.02
            t = time.perf_counter()
            q = quantize_linear(w, grams[which], None, options, f"model.layers.0.{name}",
                                row_parallel=name.rpartition(".")[2] in ROW_PARALLEL)
            if device.type == "cuda":
                torch.cuda.synchronize()
            stage.add(format=fmt, linear=name, n=w.shape[0], k=w.shape[1], seconds=time.perf_counter() - t,
                      effective_bits=q.report["effective_bits"])
        done = [r for r in stage.data["rows"] if r["format"] == fmt]
        layer_s = sum(r["seconds"] for r in done)
        stage.info(**{f"{fmt}_layer_seconds": layer_s,
                      f"{fmt}_model_seconds_x{LAYERS}": LAYERS * (layer_s + stage.data["info"]["gram_seconds"])})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["env", "inputs", "correctness", "speed", "quantizer"])
    parser.add_argument("--stage-dir", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    stage = Stage(args.stage_dir, args.stage, args.dry_run)
    torch.manual_seed(0)
    if args.stage == "env":
        stage_env(stage, args.dry_run)
    elif args.stage == "inputs":
        stage_inputs(stage, args.stage_dir, args.dry_run)
    elif args.stage == "correctness":
        stage_correctness(stage, args.stage_dir, args.dry_run)
    elif args.stage == "speed":
        stage_speed(stage, args.stage_dir, args.dry_run)
    else:
        stage_quantizer(stage, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
