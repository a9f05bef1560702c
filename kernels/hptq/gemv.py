"""Gluon HPTQ kernel over lane streams (kernels/hptq/lanes.py): fused decode-GEMV, or decode.

Program: 32 consecutive rows × all 128-column spans of those rows, a (SPANS, 32) tensor of lanes
(lane = one row's span; a warp = 32 rows of one span, so x reads are warp-wide broadcasts; warps
grow with K so that a thread keeps about four lanes).
Shared memory holds the 4 KB code table (1024 int32 entries, loaded once per program) and, for
the GEMV, x converted to float32 once, laid out [group g][span][column 4g..4g+3][m] so that one
128-bit read gives a lane the x of its next four columns.

Each lane decodes four symbols per step from three stream words w0, w1, w2 at its bit position
pos (int32; lane codes are ≤ 10 bits, so four symbols end ≤ 31 + 40 bits in):
  hi:lo = (w0:w1:w2) << (pos mod 32)        two funnel shifts (SHF.L.W)
  e_j = table[peek_j >> 22], peek_0 = hi, peek_j = funnel(hi, lo, c_j), c_j = e_0 + … + e_{j-1}
  pos += (c_3 + e_3) & 63
An entry is the float32 value with the code length in its 4 low mantissa bits; bits 4–5 are 0
(|z| < 2^17), so the raw running sum c_j has the bit offset in its low 5 bits (what a wrapping
funnel shift reads, offsets ≤ 30) and the step's length in its low 6 bits: no masking per symbol.
GEMV: acc[span, row, j, m] += e_j (read as float32) · x[m, col]; at the end the spans and j are
summed, scaled, bias added and the 32 rows stored in x's dtype (one launch, no partials).
DECODE writes scale · z into a dense (N, K) weight instead (the large-M path: decode, then a
torch matmul). The stream ends with lanes.LOOK_AHEAD_WORDS zero words: no read out of bounds.

Written in Gluon (explicit layouts and shared memory: Triton's tl.gather would re-store the table
before every lookup). Under TRITON_INTERPRET=1 the same source runs on triton.language through
kernels/gluon_interp.py, with a portable funnel shift instead of the PTX one.
"""

import torch
import triton
import triton.language as tl  # parameter annotations; the interpreter patches it for gluon_interp

from babai_kernels.common import triton_interpret
from babai_kernels.hptq.lanes import LANE_CODE_LEN, LANE_GROUP, ROW_BLOCK, SPAN
from babai_kernels.hptq.prepare import PreparedHPTQ

if triton_interpret():
    from babai_kernels import gluon_interp as gl
    jit = triton.jit
else:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    jit = gluon.jit

GEMV_MAX_M = 8
NUM_STAGES = 3             # Triton's default (the Gluon kernel has no pipelined loop)
LANES_PER_THREAD = 4       # warps = spans / 4 (4..16): about four independent chains per thread
STEP = 4                                   # symbols per lane per step
TABLE = gl.constexpr(1 << LANE_CODE_LEN)   # int32 entries
SPAN_C = gl.constexpr(SPAN)                 # lanes.py's layout, as kernel constants
GROUP_C = gl.constexpr(LANE_GROUP)
STEPS = gl.constexpr(SPAN // STEP)
PEEK_SHIFT = gl.constexpr(32 - LANE_CODE_LEN)
X_SMEM_BYTES = 160 * 1024                  # x staged as float32: Kp · M_pad · 4 bytes at most


@jit
def _funnel(hi, lo, shift, USE_ASM: tl.constexpr):
    """Upper 32 bits of (hi:lo) << (shift mod 32) (int32 tensors holding uint32 words)."""
    if USE_ASM:
        out = gl.inline_asm_elementwise("shf.l.wrap.b32 $0, $2, $1, $3;", "=r,r,r,r",
                                        [hi, lo, shift], dtype=gl.int32, is_pure=True, pack=1)
    else:
        wide = ((hi.to(gl.int64) & 0xFFFFFFFF) << 32) | (lo.to(gl.int64) & 0xFFFFFFFF)
        out = ((wide << (shift & 31).to(gl.int64)) >> 32).to(gl.int32)
    return out


@jit
def _lookup(table, peek, SPANS: tl.constexpr, LANE: tl.constexpr):
    """Table entry for the top LANE_CODE_LEN bits of each lane's peek (SPANS, 32) int32."""
    index = (peek.to(gl.uint32, bitcast=True) >> PEEK_SHIFT).to(gl.int32)
    entry = table.gather(gl.reshape(index, [SPANS * 32]), 0)
    return gl.convert_layout(gl.reshape(entry, [SPANS, 32]), LANE)


@jit
def _hptq_lanes_kernel(x_ptr, words_ptr, bases_ptr, offsets_ptr, lut_ptr, bias_ptr, out_ptr, scale,
                       M, N, K, spans, SPANS: tl.constexpr, BLOCK_M: tl.constexpr,
                       HAS_BIAS: tl.constexpr, DECODE: tl.constexpr, USE_ASM: tl.constexpr,
                       NUM_WARPS: tl.constexpr):
    # (span, row, j, m): a thread holds the four steps' symbols of its lanes and all m
    P: gl.constexpr = gl.BlockedLayout([1, 1, 4, BLOCK_M], [1, 32, 1, 1], [NUM_WARPS, 1, 1, 1],
                                       [3, 2, 1, 0])
    V: gl.constexpr = gl.SliceLayout(3, P)                   # (SPANS, 32, 4) values
    LANE: gl.constexpr = gl.SliceLayout(2, V)                # (SPANS, 32) lanes
    FLAT: gl.constexpr = gl.BlockedLayout([4], [32], [NUM_WARPS], [0])
    FLAT_SMEM: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    table = gl.allocate_shared_memory(gl.int32, [TABLE], FLAT_SMEM,
                                      gl.load(lut_ptr + gl.arange(0, TABLE, FLAT)))
    rows = gl.program_id(0) * 32 + gl.arange(0, 32, gl.SliceLayout(0, LANE))     # ROW_BLOCK
    span = gl.arange(0, SPANS, gl.SliceLayout(1, LANE))
    live = (span < spans)[:, None]
    groups = (spans + GROUP_C - 1) // GROUP_C
    pos = gl.load(bases_ptr + rows[None, :] * groups + span[:, None] // GROUP_C, mask=live, other=0)
    pos += gl.load(offsets_ptr + rows[None, :] * spans + span[:, None], mask=live, other=0).to(gl.int32)
    jj = gl.arange(0, 4, gl.SliceLayout(0, gl.SliceLayout(1, V)))[None, None, :]
    col = span[:, None, None] * SPAN_C + jj
    if DECODE:
        dst = out_ptr + rows.to(gl.int64)[None, :, None] * K
        keep = (rows < N)[None, :, None]
    else:
        # x as float32 in shared memory: row (g, span), column (j, m) = x[m, SPAN span + 4 g + j]
        XL: gl.constexpr = gl.BlockedLayout([1, 4 * BLOCK_M], [32, 1], [NUM_WARPS, 1], [1, 0])
        r = gl.arange(0, STEPS * SPANS, gl.SliceLayout(1, XL))[:, None]
        c = gl.arange(0, 4 * BLOCK_M, gl.SliceLayout(0, XL))[None, :]
        xcol = (r % SPANS) * SPAN_C + (r // SPANS) * 4 + c // BLOCK_M
        xv = gl.load(x_ptr + (c % BLOCK_M) * K + xcol, mask=(xcol < K) & (c % BLOCK_M < M),
                     other=0.0)
        X_SMEM: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        xs = gl.allocate_shared_memory(gl.float32, [STEPS * SPANS, 4 * BLOCK_M], X_SMEM,
                                       xv.to(gl.float32))
        X_STEP: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])
        xsteps = xs.reinterpret(gl.float32, [STEPS, SPANS, 4, BLOCK_M], X_STEP)
        acc = gl.zeros([SPANS, 32, 4, BLOCK_M], gl.float32, P)
    gl.barrier()                          # table and x stored: one barrier, none inside the loop
    for g in range(0, STEPS):
        at = words_ptr + (pos >> 5)
        w0 = gl.load(at)
        w1 = gl.load(at + 1)
        w2 = gl.load(at + 2)
        hi = _funnel(w0, w1, pos, USE_ASM)
        lo = _funnel(w1, w2, pos, USE_ASM)
        e0 = _lookup(table, hi, SPANS, LANE)
        e1 = _lookup(table, _funnel(hi, lo, e0, USE_ASM), SPANS, LANE)
        c2 = e0 + e1
        e2 = _lookup(table, _funnel(hi, lo, c2, USE_ASM), SPANS, LANE)
        c3 = c2 + e2
        e3 = _lookup(table, _funnel(hi, lo, c3, USE_ASM), SPANS, LANE)
        pos += (c3 + e3) & 63
        # (SPANS, 32, 4): value j of this step in column j
        v = gl.convert_layout(gl.reshape(gl.join(gl.join(e0, e2), gl.join(e1, e3)), [SPANS, 32, 4]), V)
        if DECODE:  # exact: clear the length bits
            w = (v & -16).to(gl.float32, bitcast=True) * scale
            gl.store(dst + col + g * 4, w.to(out_ptr.dtype.element_ty), mask=keep & (col + g * 4 < K))
        else:
            xt = xsteps.index(g).load(gl.SliceLayout(1, P))                      # (SPANS, 4, M)
            acc += v.to(gl.float32, bitcast=True)[:, :, :, None] * xt[:, None, :, :]
    if not DECODE:
        Y: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, P))               # (32, M)
        y = gl.convert_layout(gl.sum(gl.sum(acc, axis=2), axis=0), Y) * scale
        yr = gl.program_id(0) * 32 + gl.arange(0, 32, gl.SliceLayout(1, Y))
        ym = gl.arange(0, BLOCK_M, gl.SliceLayout(0, Y))
        if HAS_BIAS:
            y += gl.load(bias_ptr + yr, mask=yr < N, other=0.0).to(gl.float32)[:, None]
        gl.store(out_ptr + ym[None, :] * N + yr[:, None], y.to(out_ptr.dtype.element_ty),
                 mask=(yr < N)[:, None] & (ym < M)[None, :])


def num_warps(spans_pow2: int) -> int:
    """Warps per program for a power-of-two span count (each warp takes whole spans)."""
    return min(16, max(4, spans_pow2 // LANES_PER_THREAD))


PARAMS = dict(x_ptr="act", words_ptr="*i32", bases_ptr="*i32", offsets_ptr="*i16", lut_ptr="*i32",
              bias_ptr="act", out_ptr="act", scale="fp32", M="i32", N="i32", K="i32", spans="i32")
DIVISIBLE = ("x_ptr", "words_ptr", "bases_ptr", "offsets_ptr", "lut_ptr", "out_ptr", "N", "K")


def constexprs(spans: int, m: int, has_bias: bool, decode: bool, interpret: bool = False) -> dict:
    """The kernel's constexprs for `spans` 128-column spans at M = m (M itself when m == 1, as
    Triton specializes it; the decode launch has m = 1)."""
    warps = num_warps(triton.next_power_of_2(spans))
    consts = dict(SPANS=triton.next_power_of_2(spans), BLOCK_M=triton.next_power_of_2(m),
                  HAS_BIAS=has_bias, DECODE=decode, USE_ASM=not interpret, NUM_WARPS=warps)
    if m == 1:
        consts["M"] = 1
    return consts


def compile_spec(in_features: int, m: int, act: str = "bf16", has_bias: bool = False,
                 decode: bool = False) -> tuple[dict, dict]:
    """(signature in argument order, constexprs) of the CUDA kernel as `_launch` runs it at
    K = in_features, M = m, x and out of type `act` ("bf16" | "fp16" | "fp32"): what
    benchmarks.kernel_static and the AOT bundle compile."""
    consts = constexprs(-(-in_features // SPAN), 1 if decode else m, has_bias, decode)
    types = {n: f"*{act}" if t == "act" else t for n, t in PARAMS.items()}
    return {n: "constexpr" if n in consts else types[n] for n in _hptq_lanes_kernel.arg_names}, consts


ACT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def launch_reason(in_features: int, act_dtype: torch.dtype, device: torch.device) -> str | None:
    """Why these kernels cannot launch for a K = in_features layer taking `act_dtype` on `device`
    (None: they can): launching from the AOT bundle (babai_kernels.aot.use_aot), it must hold the
    M = 1 decode-GEMV and the decode cubins of that K and dtype (no bias)."""
    from babai_kernels import aot
    if not aot.use_aot(device):
        return None
    try:
        for decode in (False, True):
            sig, consts = compile_spec(in_features, 1, ACT[act_dtype], False, decode)
            aot.bundle().find("hptq", consts, sig, consts["NUM_WARPS"], NUM_STAGES)
    except ValueError as e:
        return str(e)
    return None


def _launch(x, p: PreparedHPTQ, bias, out, decode: bool) -> None:
    from babai_kernels import aot
    spans = p.padded_k // SPAN
    m = 1 if decode else x.shape[0]
    consts = constexprs(spans, m, bias is not None, decode, triton_interpret())
    grid = (triton.cdiv(p.out_features, ROW_BLOCK),)
    args = dict(x_ptr=x, words_ptr=p.words, bases_ptr=p.bases, offsets_ptr=p.offsets,
                lut_ptr=p.lut, bias_ptr=bias if bias is not None else out, out_ptr=out,
                scale=float(p.scale), M=m, N=p.out_features, K=p.in_features, spans=spans)
    if aot.use_aot(out.device):
        aot.launch("hptq", grid, args, consts, consts["NUM_WARPS"], NUM_STAGES)
    else:
        _hptq_lanes_kernel[grid](**{**args, **consts}, num_warps=consts["NUM_WARPS"],
                                 num_stages=NUM_STAGES)


def gemv_fits(m: int, padded_k: int) -> bool:
    """Whether the fused GEMV takes M = m rows at K padded to padded_k (x staged in shared memory)."""
    spans = triton.next_power_of_2(padded_k // SPAN)
    return 1 <= m <= GEMV_MAX_M and spans * SPAN * triton.next_power_of_2(m) * 4 <= X_SMEM_BYTES


def fused_max_m(padded_k: int) -> int:
    """The largest M the fused GEMV takes at K padded to padded_k (1 always fits)."""
    return max(m for m in range(1, GEMV_MAX_M + 1) if gemv_fits(m, padded_k))


def hptq_gemv(x: torch.Tensor, prepared: PreparedHPTQ, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) contiguous fp16/bf16/fp32 with gemv_fits(M, Kp) → (M, N) = x · Wqᵀ (+ bias) in x.dtype."""
    m = x.shape[0]
    if not gemv_fits(m, prepared.padded_k):
        raise ValueError(f"x: fused GEMV takes 1..{GEMV_MAX_M} rows with Kp · M · 4 ≤ "
                         f"{X_SMEM_BYTES} bytes, got M={m}, Kp={prepared.padded_k}")
    out = torch.empty(m, prepared.out_features, dtype=x.dtype, device=x.device)
    _launch(x, prepared, bias, out, decode=False)
    return out


def hptq_decode(prepared: PreparedHPTQ, dtype: torch.dtype) -> torch.Tensor:
    """Dense dequantized weight scale · z (N, K) in `dtype` (float16 / bfloat16 / float32)."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype: {dtype} not in float16, bfloat16, float32")
    p = prepared
    out = torch.empty(p.out_features, p.in_features, dtype=dtype, device=p.device)
    _launch(out, p, None, out, decode=True)
    return out


def static_compile(compile_fn, in_features: int = 4096, m: int = 1) -> tuple[object, float]:
    """Compile the decode-GEMV at M = m, K = in_features with `compile_fn`
    (benchmarks/kernel_static.compile_sm90) → (kernel, real symbols each thread decodes per loop
    iteration: lanes of the power-of-two padding of the span count decode too but are not counted)."""
    spans = -(-in_features // SPAN)
    sig, consts = compile_spec(in_features, m)
    kernel = compile_fn(_hptq_lanes_kernel, sig, consts, consts["NUM_WARPS"], NUM_STAGES, DIVISIBLE)
    return kernel, STEP * spans * 32 / (32 * consts["NUM_WARPS"])
