"""SSQR kernel code layout (a load-time repack of `qweight`) and its in-register unpack.

Kernel layout `qcodes` int32 (K·b/32, N), built once by `repack_codes` (docs/format.md §2 is
unchanged on disk; this is Marlin's habit of reshuffling at load time). Unsigned codes
u = z + 2^(b-1) of one 32-column block, by `block_positions`:
- b = 2, 4: word w of the block (row b·blk + w) holds columns 32/b·w + 2p + h, h ∈ {0, 1}, in field
  p (bits [p·b, p·b + b)) of 16-bit half h. A "pair" p = columns (2p, 2p+1) sits at the same
  place in both halves, so one LOP3 turns it into two fp16/bf16 bit patterns.
- b = 3: rows [2·blk, 2·blk + 2) hold the low 2 bits of columns 16i + 2p + h in that layout (word
  i); row K/16 + blk holds the 32 high bits, placed so that after a right rotation by ROT(i, g)
  = 6g + i the high bits of pair p (group g = p // 3) sit at bit O + 2 of each half, right above
  the low bits (see `_pair`).

Unpack (`load_codes`): per pair, magic-number conversion on CUDA (`tl.inline_asm_elementwise`):
  v = (w >> SHIFT) & mask | magic     (one LOP3; magic = 1024.0 fp16 / 128.0 bf16 in both halves)
  z = fma(v, 2^-O, -(magic·2^-O + 2^(b-1)))   (one HFMA2, exact: v = magic + 2^O·u)
4-bit bf16 skips the HFMA2 (`offset_codes`): it returns v = 128 + u itself, and the kernel subtracts
(128 + 8)·Σx per K tile from the float32 dot (products exact; the cancellation costs ~2^-20
relative, far below bf16's 2^-9), so a word of 8 codes costs 3 SHF + 4 LOP3.
O is the field's bit offset inside the shifted word: a field (with the 3-bit high bit) must end
inside the mantissa (10 bits fp16, 7 bits bf16), so one shift serves 1–4 pairs (PER in `_pair`). The portable
path (TRITON_INTERPRET) extracts the same bits with shifts and masks (float32 codes for bf16).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 32


def _rot(i: int, group: int) -> int:
    """Right rotation of the 3-bit high-bit word for low-bit word i and shift group g (pairs
    3g..3g+2): the 6 groups' high-bit sets {O + 2 + 16h + rot} partition the word."""
    return 6 * group + i


def block_positions(bits: int) -> list[tuple[int, int, int, int]]:
    """Where each code bit of a 32-column block lives: (column t, code bit j, word, bit) tuples.

    Words 0..b-1 of block blk are qcodes rows b·blk + word for b = 2, 4; for b = 3 words 0, 1
    are rows 2·blk + word and word 2 is row K/16 + blk.
    """
    out = []
    field = 2 if bits == 3 else bits
    per_word = 32 // field
    for t in range(BLOCK):
        word, rest = divmod(t, per_word)
        p, h = divmod(rest, 2)
        out += [(t, j, word, 16 * h + p * field + j) for j in range(field)]
        if bits == 3:  # three pairs per shift group: shift 6g, offset O = 2 (p mod 3)
            g, o = p // 3, 2 * (p % 3)
            out.append((t, 2, 2, (o + 2 + 16 * h + _rot(word, g)) % 32))
    return out


def _rows(bits: int, k: int, word: torch.Tensor, blk: torch.Tensor) -> torch.Tensor:
    if bits == 3:
        return torch.where(word == 2, k // 16 + blk, 2 * blk + word)
    return bits * blk + word


def _table(bits: int, k: int, device) -> tuple[torch.Tensor, ...]:
    """(column, code bit, qcodes row, bit) of every code bit of the layer, each (K·b,) int64."""
    t, j, word, pos = torch.tensor(block_positions(bits), dtype=torch.int64, device=device).T
    blk = torch.arange(k // BLOCK, device=device)[:, None]
    cols = (BLOCK * blk + t).reshape(-1)
    rows = _rows(bits, k, word[None, :], blk).reshape(-1)
    return cols, j.repeat(k // BLOCK), rows, pos.repeat(k // BLOCK)


def repack_codes(z: torch.Tensor, bits: int, chunk: int = 256) -> torch.Tensor:
    """Signed codes z (N, K) → kernel layout qcodes int32 (K·b/32, N) on z's device."""
    n, k = z.shape
    cols, j, rows, pos = _table(bits, k, z.device)
    words = torch.zeros(k * bits // 32, n, dtype=torch.int64, device=z.device)
    for lo in range(0, n, chunk):
        u = z[lo:lo + chunk].to(torch.int64).T + (1 << (bits - 1))       # (K, n_chunk)
        fields = ((u[cols] >> j[:, None]) & 1) << pos[:, None]
        words[:, lo:lo + chunk].index_add_(0, rows, fields)              # bits never collide
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_kernel_codes(qcodes: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of repack_codes: qcodes int32 (K·b/32, N) → signed codes int32 (N, K)."""
    cols, j, rows, pos = _table(bits, k, qcodes.device)
    words = qcodes.to(torch.int64) & 0xFFFFFFFF
    u = torch.zeros(k, qcodes.shape[1], dtype=torch.int64, device=qcodes.device)
    u.index_add_(0, cols, ((words[rows] >> pos[:, None]) & 1) << j[:, None])
    return (u - (1 << (bits - 1))).T.to(torch.int32).contiguous()


_ASM_2 = {  # (w, w, mask, mask, magic, magic, scale, bias) → out (two fp16/bf16)
    False: "lop3.b32 $0, $1, $3, $5, 0xea; fma.rn.f16x2 $0, $0, $7, $8;",
    True: "lop3.b32 $0, $1, $3, $5, 0xea; fma.rn.bf16x2 $0, $0, $7, $8;",
}
_ASM_3 = {  # (l, l, h, h, mask_l, mask_l, mask_h, mask_h, magic, magic, scale, bias)
    False: "lop3.b32 $0, $3, $7, $9, 0xea; lop3.b32 $0, $1, $5, $0, 0xea; fma.rn.f16x2 $0, $0, $11, $12;",
    True: "lop3.b32 $0, $3, $7, $9, 0xea; lop3.b32 $0, $1, $5, $0, 0xea; fma.rn.bf16x2 $0, $0, $11, $12;",
}
ASM2_F16: tl.constexpr = tl.constexpr(_ASM_2[False])
ASM2_BF16: tl.constexpr = tl.constexpr(_ASM_2[True])
ASM3_F16: tl.constexpr = tl.constexpr(_ASM_3[False])
ASM3_BF16: tl.constexpr = tl.constexpr(_ASM_3[True])
ASM_LOP3: tl.constexpr = tl.constexpr("lop3.b32 $0, $1, $3, $5, 0xea;")   # (w, w, mask, mask, magic, magic)


@triton.constexpr_function
def offset_codes(bits, bf16):
    """Whether `load_codes` returns 128 + u (4-bit bf16) instead of z = u − 8; see the module docstring."""
    return bits == 4 and bool(bf16)


@triton.jit
def _rotr(w, R: tl.constexpr):
    """Rotate int32 words right by R bits (R constexpr)."""
    if R == 0:
        return w
    u = w.to(tl.uint32, bitcast=True)
    return ((u >> R) | (u << (32 - R))).to(tl.int32, bitcast=True)


@triton.jit
def _pair(w, hw, P: tl.constexpr, I: tl.constexpr, BITS: tl.constexpr, BF16: tl.constexpr,
          USE_ASM: tl.constexpr):
    """Codes of pair P of words w (R1, R2) int32 (hw: 3-bit high words) → (R1, R2, 2) fp16/bf16."""
    F: tl.constexpr = 2 if BITS == 3 else BITS
    OFFSET: tl.constexpr = offset_codes(BITS, BF16)
    # pairs per shift: fields must stay inside the mantissa (10 bits fp16, 7 bits bf16)
    PER: tl.constexpr = (1 if BF16 else 2) if BITS == 4 else (3 if (BF16 or BITS == 3) else 4)
    SHIFT: tl.constexpr = (P // PER) * PER * F
    O: tl.constexpr = (P % PER) * F
    ROT: tl.constexpr = 6 * (P // PER) + I
    HALF: tl.constexpr = 1 << (BITS - 1)
    DT = tl.bfloat16 if BF16 else tl.float16
    if USE_ASM:
        MAGIC: tl.constexpr = 0x43004300 if BF16 else 0x64006400
        BASE: tl.constexpr = 128.0 if BF16 else 1024.0
        MASK: tl.constexpr = (((1 << F) - 1) << O) * 0x10001
        ws = tl.join(w >> SHIFT, w >> SHIFT)
        args = [ws, tl.full(ws.shape, MASK, tl.int32), tl.full(ws.shape, MAGIC, tl.int32),
                tl.full(ws.shape, 1.0 / (1 << O), DT), tl.full(ws.shape, -(BASE / (1 << O) + HALF), DT)]
        if BITS == 3:
            hr = _rotr(hw, ROT)
            args = [ws, tl.join(hr, hr), args[1], tl.full(ws.shape, (1 << (O + 2)) * 0x10001, tl.int32),
                    args[2], args[3], args[4]]
            asm: tl.constexpr = ASM3_BF16 if BF16 else ASM3_F16
            cons: tl.constexpr = "=r,r,r,r,r,r,r,r,r,r,r,r,r"
        elif OFFSET:   # O == 0 (PER == 1): the LOP3 result 128 + u is the code the dot takes
            args = args[:3]
            asm: tl.constexpr = ASM_LOP3
            cons: tl.constexpr = "=r,r,r,r,r,r,r"
        else:
            asm: tl.constexpr = ASM2_BF16 if BF16 else ASM2_F16
            cons: tl.constexpr = "=r,r,r,r,r,r,r,r,r"
        codes = tl.inline_asm_elementwise(asm, cons, args, dtype=DT, is_pure=True, pack=2)
    else:
        lo = (w >> (P * F)) & ((1 << F) - 1)
        hi = (w >> (16 + P * F)) & ((1 << F) - 1)
        if BITS == 3:
            lo |= ((hw >> ((O + 2 + ROT) % 32)) & 1) << 2
            hi |= ((hw >> ((O + 18 + ROT) % 32)) & 1) << 2
        # The interpreter converts int → bfloat16 wrongly; its tl.dot runs in float32 anyway.
        codes = (tl.join(lo, hi) + (128 if OFFSET else -HALF)).to(tl.float32 if BF16 else tl.float16)
    return codes


@triton.jit
def _four(w, hw, P0: tl.constexpr, I: tl.constexpr, BITS: tl.constexpr, BF16: tl.constexpr,
          USE_ASM: tl.constexpr):
    """Pairs P0..P0+3 → (R1, R2, 2 half, 2 a, 2 b): pair P0 + a + 2b."""
    return tl.join(tl.join(_pair(w, hw, P0, I, BITS, BF16, USE_ASM),
                           _pair(w, hw, P0 + 1, I, BITS, BF16, USE_ASM)),
                   tl.join(_pair(w, hw, P0 + 2, I, BITS, BF16, USE_ASM),
                           _pair(w, hw, P0 + 3, I, BITS, BF16, USE_ASM)))


@triton.jit
def _word_codes(w, hw, I: tl.constexpr, BITS: tl.constexpr, BF16: tl.constexpr,
                USE_ASM: tl.constexpr):
    """All codes of words w (R1, R2) → (R1, R2, 32/F) in column order t = 2p + h."""
    if BITS == 4:
        c = tl.permute(_four(w, hw, 0, I, BITS, BF16, USE_ASM), (0, 1, 4, 3, 2))
    else:
        c = tl.join(_four(w, hw, 0, I, BITS, BF16, USE_ASM), _four(w, hw, 4, I, BITS, BF16, USE_ASM))
        c = tl.permute(c, (0, 1, 5, 4, 3, 2))
    return tl.reshape(c, (w.shape[0], w.shape[1], 32 // (2 if BITS == 3 else BITS)))


@triton.jit
def load_codes(qw_ptr, N, K, k0, offs_n, mask_n, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """Signed codes of stored columns [k0, k0 + BLOCK_K), rows offs_n → (BLOCK_N, BLOCK_K) fp16/bf16.

    One load of each packed word: a (BLOCK_N, words) int32 tile, contiguous along N. BLOCK_K
    divides K (it divides G), so only N is masked.
    """
    base = qw_ptr + offs_n[:, None]
    mask = mask_n[:, None]
    if BITS == 3:
        q = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        low0 = tl.load(base + (2 * q)[None, :] * N, mask=mask, other=0)
        low1 = tl.load(base + (2 * q + 1)[None, :] * N, mask=mask, other=0)
        high = tl.load(base + (K // 16 + q)[None, :] * N, mask=mask, other=0)
        c = tl.join(_word_codes(low0, high, 0, BITS, BF16, USE_ASM),
                    _word_codes(low1, high, 1, BITS, BF16, USE_ASM))
        c = tl.permute(c, (0, 1, 3, 2))
    else:
        r = k0 * BITS // 32 + tl.arange(0, BLOCK_K * BITS // 32)
        w = tl.load(base + r[None, :] * N, mask=mask, other=0)
        c = _word_codes(w, w, 0, BITS, BF16, USE_ASM)
    return tl.reshape(c, (BLOCK_N, BLOCK_K))
