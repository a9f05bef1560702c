"""The end-to-end stage of benchmarks/gpu_check.sh: decode tokens/s of a Llama-3-8B-shaped model.

    python3 -m benchmarks.gpu_e2e --stage-dir DIR [--dry-run] [--config llama3-8b|tiny] [--budget-s S]

Three models share one bf16 embedding, norms and lm_head (random weights; lm_head stays bf16, as
every babai checkpoint keeps it): bf16 `nn.Linear`s, and babai SSQR-w4 and HPTQ-3.3, whose 7 × 32
decoder linears are transformers_babai `BabaiLinear`s — the module `from_pretrained` builds, the
kernel picked by babai_kernels.chooser from a `LinearSpec`, the same forward path.
- Codes: SSQR-w4 random packed codes, G = 128, 1 % outliers (gpu_stages.ssqr_layer's tensors);
  HPTQ-3.3 the Laplace codes of the inputs stage (gpu_stages.hptq_codes: a 3.3-bit Huffman code, as
  a real HPTQ-3.3 layer's), encoded as checkpoint tensors (encode_hptq, rows sliced as tensor
  parallelism does) for the spec, their lane layouts the inputs stage's row prefixes.
- One prototype per linear type (q, k, v, o, gate, up, down) goes through the chooser; every
  layer then gets its own on-device copy of the prototype's kernel tensors (`copy.deepcopy`), so
  a decode step reads 32 distinct layers' bytes, as a real checkpoint's. Re-encoding 32 layers'
  lanes would not fit the stage's time.
- Decode: `model.generate` greedy, a 32-token random prompt, batch 1 and 16, a static KV cache
  (a user StaticCache per model and batch, reset before each call). Tokens/s of the decode steps
  = batch · (long − short new tokens) / (t_long − t_short), so prefill, cache setup and any
  per-call cost cancel; median over rounds, the models interleaved within each round.
  Eager first (transformers' eager decode at 8B is launch-bound; it also tunes the SSQR configs
  and loads every cubin outside CUDA-graph capture), then torch.compile (mode "reduce-overhead":
  CUDA graphs, fullgraph) at batch 1, then batch 16, while the time budget allows. A model whose
  compile fails keeps its eager rows and the reason (info.compile_failed).
Rows: mode "build" (per variant and linear type: kernel, what the chooser refused above it,
resident and stored bytes), "eager" / "compiled" (tokens/s, speedup over bf16 in the same mode
and batch), dry run: "launch-plan" (per variant and M: the AOT cubin of every launch).
--dry-run stops before the first CUDA call: the models on the meta device with BabaiLinears of at
most DRY_ROWS rows on the CPU, the chooser asked for CUDA (spec.device = cuda) inside
babai_kernels.aot.dry_run (the AOT route of the lent image), and every launch of a prefill and a
decode step at batch 1 and 16 resolved in the AOT bundle.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.gpu_stages import DRY_ROWS, GROUP, HPTQ_BITS, OUTLIER_RATE, Stage, hptq_codes, prefix_lanes

CONFIGS = {   # LlamaConfig fields: Llama-3-8B's shapes, and a tiny one for tests
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, num_hidden_layers=32, vocab_size=128256, tie_word_embeddings=False,
                      rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, num_hidden_layers=2, vocab_size=512, tie_word_embeddings=False,
                 rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=256),
}
VARIANTS = ("bf16", "ssqr-w4", "hptq-3.3")
BATCHES = (1, 16)
PROMPT = 32
NEW_TOKENS = {"eager": (4, 12), "compiled": (16, 64)}    # (short, long) new tokens per generate
ROUNDS = {"eager": 2, "compiled": 5}
COMPILE_GUESS_S = 60.0     # time budgeted for one compile before one has been measured
ACT = torch.bfloat16
CUDA = torch.device("cuda")


def llama_config(name: str, layers: int | None = None):
    """LlamaConfig of CONFIGS[name] (`layers` decoder layers if given), bf16, no end-of-sequence
    token (every generate makes exactly the tokens asked for)."""
    from transformers import LlamaConfig
    fields = dict(CONFIGS[name], **({"num_hidden_layers": layers} if layers else {}))
    return LlamaConfig(**fields, bos_token_id=None, eos_token_id=None, pad_token_id=0, dtype="bfloat16")


def skeleton(config, device):
    """LlamaForCausalLM of `config` in bf16 on `device` (meta: shapes only), eval mode."""
    from transformers import GenerationConfig, LlamaForCausalLM
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=ACT)
    model.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, bos_token_id=None)
    return model.eval()


def decoder_linears(model) -> dict[str, tuple[int, int]]:
    """{linear name within a decoder layer: (K, N)} of layer 0: the linears babai-quantize writes."""
    return {name: (m.in_features, m.out_features) for name, m in model.model.layers[0].named_modules()
            if isinstance(m, torch.nn.Linear)}


def ssqr_spec(layer, device: torch.device, seed: int):
    """LinearSpec of a random SSQR-w4 layer (gpu_stages' tensors, with the inlier code 0 where an
    outlier sits, as the format requires), loaded into BabaiLinear `layer` on `device` as
    transformers loads a checkpoint and validated by its `spec` (shard_layer)."""
    from babai_kernels.contract import BabaiCheckpointConfig
    from babai_kernels.ssqr.pack import pack_codes, unpack_codes
    from benchmarks.kernel_speed import random_ssqr_tensors
    torch.manual_seed(seed)
    tensors = random_ssqr_tensors(layer.out_features, layer.in_features, 4, GROUP, OUTLIER_RATE, device)
    z = unpack_codes(tensors["qweight"], 4, layer.in_features).scatter_(1, tensors["outlier_cols"].long(), 0)
    tensors["qweight"] = pack_codes(z, 4).to(device)
    for name, t in tensors.items():
        setattr(layer, name, t)
    config = BabaiCheckpointConfig("ssqr", bits=4, group_size=GROUP, outlier_rate=OUTLIER_RATE)
    return layer.spec(config, ACT)


class HptqSource:
    """HPTQ-3.3 layers of one K: codes z (n, K) (gpu_stages.hptq_codes), their lane layout (the
    inputs stage's DIR/lanes_K.pt when it holds enough rows, else built here) and their checkpoint
    tensors (encode_hptq on `device`, kept on the CPU)."""

    def __init__(self, directory: Path, k: int, rows: int, device: torch.device):
        from babai_kernels.hptq.lanes import build_lane_layout
        from babai_kernels.hptq.pack import choose_chunk_cols, encode_hptq
        saved = directory / f"lanes_{k}.pt"
        data = torch.load(saved) if saved.is_file() else None
        if data is not None and data["n"] >= rows:
            self.lanes, self.scale, n, self.source = data["lanes"], data["scale"], data["n"], "inputs stage"
            self.z = hptq_codes(k, n)[0]
        else:
            self.z, self.scale = hptq_codes(k, rows)
            self.lanes, self.source = build_lane_layout(self.z).__dict__, "built here"
        self.k = k
        full = encode_hptq(self.z.to(device), self.scale, choose_chunk_cols(k))
        self.tensors = {name: t.cpu() for name, t in full.items()}

    def spec(self, n: int, device: torch.device):
        """LinearSpec of rows [0, n): checkpoint tensors sliced (hptq.tp.slice_rows), lane layout
        and codes cached on the spec (what HuffmanLanes / TritonHPTQDense would build from them)."""
        from babai_kernels.hptq.tp import slice_rows
        from babai_kernels.layer_spec import LinearSpec
        rows = self.tensors["chunk_bits"].shape[0]
        part = self.tensors if n == rows else slice_rows(self.tensors, 0, n)
        spec = LinearSpec("hptq", None, (n, self.k), ACT, device, [part])
        spec._cache.update(hptq_lanes=[prefix_lanes(self.lanes, n)], hptq_codes=[self.z[:n].to(torch.int32)])
        return spec


def choose(layer, spec, dry: bool) -> tuple[str, list[str]]:
    """Build `layer`'s kernel through the chooser: (kernel name, "Name: reason" of each kernel
    ranked above it). Dry run: the chooser decides for CUDA (spec.device = cuda, inside
    aot.dry_run: the AOT route), the kernel is built on the CPU."""
    from babai_kernels import aot
    from babai_kernels.chooser import plan
    with aot.dry_run() if dry else contextlib.nullcontext():
        cls, reasons = plan(dataclasses.replace(spec, device=CUDA) if dry else spec)
    if cls is None:
        raise ValueError(f"{layer.name}: no babai kernel for CUDA:\n  " + "\n  ".join(reasons))
    layer.adopt(spec, kernel=cls(spec) if dry else None)
    return type(layer.kernel).__name__, reasons


def babai_model(base, config, variant: str, stage: Stage, directory: Path, device: torch.device,
                dry_rows: int | None):
    """The model `base` with every decoder linear a BabaiLinear of `variant` ("ssqr-w4" |
    "hptq-3.3"): one prototype per linear type through the chooser, each layer its own on-device
    copy of the prototype's kernel; embeddings, norms, rotary tables and lm_head shared with `base`.
    Adds one "build" row per linear type. dry_rows: a dry run, at most that many rows per linear."""
    from transformers_babai import BabaiLinear
    fmt = variant.split("-")[0]
    model = skeleton(config, "meta")
    shapes = decoder_linears(model)
    dry = dry_rows is not None
    rows = {name: min(n, dry_rows) if dry else n for name, (_, n) in shapes.items()}
    sources = {}
    if fmt == "hptq":
        for k in sorted({k for k, _ in shapes.values()}):
            sources[k] = HptqSource(directory, k, max(rows[n] for n, (kk, _) in shapes.items() if kk == k), device)
        stage.info(**{f"hptq_K{k}_lanes": s.source for k, s in sources.items()})
    layers, quantized = model.model.layers, {}
    for i, (name, (k, _)) in enumerate(shapes.items()):
        start = time.perf_counter()
        proto = BabaiLinear(f"model.layers.0.{name}", fmt, k, rows[name], False, ACT)
        spec = ssqr_spec(proto, device, seed=i) if fmt == "ssqr" else sources[k].spec(rows[name], device)
        kernel, refused = choose(proto, spec, dry)
        quantized[proto.name] = proto
        for j in range(1, len(layers)):
            module = quantized[f"model.layers.{j}.{name}"] = BabaiLinear(f"model.layers.{j}.{name}", fmt, k,
                                                                        rows[name], False, ACT)
            module.adopt(spec, kernel=copy.deepcopy(proto.kernel, {id(spec): spec}))
        stage.add(case=variant, mode="build", linear=name, k=k, n=rows[name], kernel=kernel,
                  refused="; ".join(refused) or None, layers=len(layers),
                  resident_MB=proto.resident_bytes() / 2**20, stored_MB=proto.stored_bytes / 2**20,
                  resident_bits=8 * proto.resident_bytes() / (k * rows[name]), seconds=time.perf_counter() - start)
    return install(model, base, quantized, allow_meta=dry)


def install(model, base, quantized: dict, allow_meta: bool = False):
    """`model` (a meta skeleton of base's class and config) with the modules `quantized` (full name →
    module) in place, and every other module that holds tensors of its own taken from `base`
    (embeddings, norms, rotary tables, lm_head: shared, not copied)."""
    for name, module in list(model.named_modules()):
        if name in quantized or (name and any(True for _ in (*module.parameters(recurse=False),
                                                              *module.buffers(recurse=False)))):
            parent, _, leaf = name.rpartition(".")
            module = quantized[name] if name in quantized else base.get_submodule(name)
            model.get_submodule(parent).add_module(leaf, module)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left and not allow_meta:
        raise RuntimeError(f"tensors left on the meta device: {left[:5]}")
    return model


def launch_plan(stage: Stage, variant: str, model, m_values: tuple[int, ...]) -> None:
    """Dry run: resolve in the AOT bundle every launch a forward of M = m rows makes through each
    BabaiLinear (SSQR: every config the tuner may pick, at least one must resolve; HPTQ: the
    fused GEMV or the decode of each part); one "launch-plan" row per M."""
    from babai_kernels import aot
    from babai_kernels.choices.cuda import HuffmanLanes, TritonSSQR
    from benchmarks.gpu_stages import hptq_runs, ssqr_candidates
    from transformers_babai import BabaiLinear
    layers = [m for m in model.modules() if isinstance(m, BabaiLinear)]
    for m in m_values:
        launches = candidates = resolved = 0
        unserved, missing = [], set()
        with aot.dry_run() as log:
            for layer in layers:
                x = torch.zeros(m, layer.in_features, dtype=ACT)
                kernel = layer.kernel
                if isinstance(kernel, TritonSSQR):
                    groups = [ssqr_candidates(x, kernel.prepared)]
                elif isinstance(kernel, HuffmanLanes):
                    groups = [hptq_runs(x, p) for p in kernel.prepared]
                else:
                    groups = []
                    unserved.append(f"{layer.name}: {type(kernel).__name__} (no Triton launch)")
                for thunks in groups:
                    launches, candidates, ok = launches + 1, candidates + len(thunks), 0
                    for thunk in thunks:
                        try:
                            thunk()
                            ok += 1
                        except aot.MissingVariant as e:
                            missing.add(str(e).split(" (")[0])
                    resolved += ok
                    if not ok:
                        unserved.append(f"{layer.name}: no cubin")
        stage.add(case=variant, mode="launch-plan", m=m, linears=len(layers), launches=launches,
                  candidates=candidates, resolved=resolved, cubins=len({v.cubin for _, v, _ in log}),
                  unserved=len(unserved), first_unserved=unserved[0] if unserved else None,
                  missing_candidates=len(missing))


def generate_seconds(model, prompt: torch.Tensor, cache, new_tokens: int, compiled: bool) -> float:
    """Wall seconds of one greedy `generate` of exactly `new_tokens` tokens (cache reset first)."""
    from transformers import CompileConfig
    cache.reset()
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), past_key_values=cache,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         disable_compile=not compiled,
                         compile_config=CompileConfig(fullgraph=True, mode="reduce-overhead") if compiled else None)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if out.shape != (prompt.shape[0], prompt.shape[1] + new_tokens):
        raise RuntimeError(f"generate returned {tuple(out.shape)}, expected {new_tokens} new tokens")
    return seconds


class Runner:
    """Timed generate rounds of the models, within a deadline; rows added to `stage`."""

    def __init__(self, stage: Stage, models: dict, config, deadline: float):
        from transformers import StaticCache
        self.stage, self.models, self.deadline = stage, models, deadline
        self.prompts = {b: torch.randint(0, config.vocab_size, (b, PROMPT), device=CUDA,
                                         generator=torch.Generator(device=CUDA).manual_seed(b)) for b in BATCHES}
        longest = PROMPT + max(n for _, n in NEW_TOKENS.values()) + 1
        self.caches = {(v, b): StaticCache(config=config, max_cache_len=longest) for v in models for b in BATCHES}
        self.failed: dict[str, str] = {}
        self.compile_s: list[float] = []

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def compile(self, variant: str, batch: int) -> float | None:
        """Compile (first compiled generate) `variant` at `batch`: seconds, None on failure (reason kept)."""
        from torch._dynamo.utils import counters
        breaks, skips = sum(counters["graph_break"].values()), counters["inductor"]["cudagraph_skips"]
        try:
            seconds = generate_seconds(self.models[variant], self.prompts[batch], self.caches[variant, batch],
                                       NEW_TOKENS["compiled"][1], True)
        except Exception as e:          # recorded; the variant keeps its eager rows
            self.failed[variant] = f"batch {batch}: {type(e).__name__}: {str(e)[:400]}"
            self.stage.info(compile_failed=self.failed)
            return None
        self.compile_s.append(seconds)
        self.stage.info(**{f"compile_{variant}_b{batch}": dict(
            seconds=seconds, graph_breaks=sum(counters["graph_break"].values()) - breaks,
            cudagraph_skips=counters["inductor"]["cudagraph_skips"] - skips)})
        return seconds

    def rounds(self, mode: str, batch: int, variants: list[str]) -> None:
        """ROUNDS[mode] rounds of (short, long) generates per variant, interleaved; one row each."""
        short, long = NEW_TOKENS[mode]
        rates, totals = {v: [] for v in variants}, {v: [] for v in variants}
        for r in range(ROUNDS[mode]):
            if r and self.left() < 0:          # past the budget: keep the rounds measured
                break
            for v in variants:
                args = (self.models[v], self.prompts[batch], self.caches[v, batch])
                t_short = generate_seconds(*args, short, mode == "compiled")
                t_long = generate_seconds(*args, long, mode == "compiled")
                rates[v].append(batch * (long - short) / (t_long - t_short))
                totals[v].append(t_long)
        base = statistics.median(rates["bf16"]) if "bf16" in rates else None
        for v in variants:
            rate = statistics.median(rates[v])
            self.stage.add(case=v, mode=mode, m=batch, tokens_per_s=rate, ms_per_step=1e3 * batch / rate,
                           speedup=rate / base if base else None, generate_s=statistics.median(totals[v]),
                           new_tokens=long, rounds=len(rates[v]))

    def run(self) -> None:
        """Per batch (1, then 16): eager rounds, then each model compiled while a compile fits in the
        time left (the first compile is guessed at COMPILE_GUESS_S), then compiled rounds."""
        for batch in BATCHES:
            self.rounds("eager", batch, list(self.models))
            ok = []
            for v in self.models:
                guess = max(self.compile_s, default=COMPILE_GUESS_S)
                if v in self.failed:
                    continue
                if self.left() < 1.2 * guess:
                    self.stage.info(**{f"skipped_compiled_{v}_b{batch}": f"{self.left():.0f} s left, a compile "
                                                                         f"takes ~{guess:.0f} s"})
                    continue
                if self.compile(v, batch) is not None:
                    ok.append(v)
            if ok and self.left() > 0:
                self.rounds("compiled", batch, ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage-dir", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="llama3-8b")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the config's)")
    parser.add_argument("--dry-rows", type=int, default=DRY_ROWS, help="dry run: rows per linear at most")
    parser.add_argument("--budget-s", type=float, default=175.0,
                        help="seconds this stage may take: no compile starts that would end past it")
    args = parser.parse_args(argv)
    stage = Stage(args.stage_dir, "e2e", args.dry_run)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_e2e.py needs a CUDA GPU (or --dry-run)")
    log = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: log.append(record.getMessage())
    logging.getLogger("vllm.babai").addHandler(handler)
    logging.getLogger("vllm.babai").setLevel(logging.INFO)
    config = llama_config(args.config, args.layers)
    device = torch.device("cpu") if dry else CUDA
    stage.info(config=args.config, **dict(CONFIGS[args.config], num_hidden_layers=config.num_hidden_layers), prompt=PROMPT,
               batches=list(BATCHES), new_tokens=NEW_TOKENS, rounds=ROUNDS, dry_rows=args.dry_rows if dry else None,
               timing="decode tokens/s = batch·(long − short)/(t_long − t_short) of model.generate, median",
               layers_built=("random weights; one prototype per linear type through the chooser, every layer its "
                             "own on-device copy of its kernel's tensors (the memory traffic of 32 distinct "
                             "layers); SSQR-w4 random codes, HPTQ-3.3 Laplace codes of a 3.3-bit Huffman code"),
               from_pretrained=("BabaiHfQuantizer.is_compileable is transformers' default (False), so generate "
                                "compiles a from_pretrained babai model only once it returns True; these models "
                                "carry no hf_quantizer"))
    start = time.perf_counter()
    deadline = start + args.budget_s
    base = skeleton(config, "meta" if dry else device)
    models = {"bf16": base}
    for variant in VARIANTS[1:]:
        models[variant] = babai_model(base, config, variant, stage, args.stage_dir, device,
                                      args.dry_rows if dry else None)
    stage.info(build_seconds=time.perf_counter() - start, chooser_log=log)
    if dry:
        m_values = tuple(sorted({b * PROMPT for b in BATCHES} | set(BATCHES)))
        for variant in VARIANTS[1:]:
            launch_plan(stage, variant, models[variant], m_values)
        stage.info(compile="not attempted in a dry run")
        return 0
    stage.info(gpu_bytes_allocated=torch.cuda.memory_allocated())
    from torch._dynamo import config as dynamo_config    # three models, two batches: one code object
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, max(getattr(dynamo_config, knob), 64))
    Runner(stage, models, config, deadline).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
