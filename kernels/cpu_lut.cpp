// babai_cpu::lut_linear — the runtime layout (kernels/runtime.py) on an x86-64 CPU in one op:
//
//   y = (((x ⊙ α)[:, perm] @ (S ⊙ Z + R)ᵀ) · row_scale + bias)   x (M, K) bfloat16 → y (M, N) bfloat16
//
// Dense codes Z are repacked at load (kernels/cpu_lut.py) in blocks of 16 output rows and pairs of
// input columns, the operand order of VDPBF16PS (lane i of a zmm = row i, columns k and k+1). Each
// block has its own width block_bits[b] (N/16) uint8 (fused siblings or row groups whose codes need
// different ranges); packed is one contiguous byte buffer, the blocks one after the other, block b
// (K/2, 4·bits) bytes:
//   bits 4: 16 bytes per pair p; byte i = u[i, 2p] | u[i, 2p+1] << 4, u = z + 8;
//   bits 5: 20 bytes per pair; bytes 0..15 the low nibbles as for 4 bits (u = z + 16),
//           bytes 16..19 a little-endian 32-bit mask whose bit 2i + c is bit 4 of u[i, 2p + c];
//   bits 8: 32 bytes per pair (int8); bytes 2i, 2i+1 = z[i, 2p], z[i, 2p+1].
// S: scales (N/16, K/G, 16) float16, or empty for all ones (then G = K); R: CSR (offsets (N+1) int32,
// cols (nnz) uint16 held as int16, in stored order, vals (nnz) float16); perm (K) int64 or empty;
// α = col_scale (K) float32 in original column order (HPTQ's per-column steps) or empty: x ⊙ α is
// rounded once to bfloat16 (as runtime.scale_input) while x is put in stored order;
// row_scale (N) or (N/16) float32 — one per row or one per block of 16 rows — or empty; bias (N) or
// empty. Every argument is validated on every call (the CSR in O(N + nnz)): a malformed one raises,
// it is never read out of bounds.
//
// Two instruction sets, chosen per call (`isa`: "avx512", "avx2" or "auto" = the best this CPU has,
// checked against CPUID/XGETBV on every call, so a wrong choice raises instead of SIGILL):
//   avx512 (F, BW, VL, DQ, BF16): 32 codes → exact bfloat16 in a zmm (4/5 bits: a 16/32-entry table
//     through VPERMW; 8 bits: int → float → bf16), multiplied with up to 8 rows of x by VDPBF16PS;
//     two blocks (32 rows) of one width share each broadcast of x. 8-bit blocks at 1–2 rows of x take
//     avx2's int16 path below.
//   avx2 (+ FMA, F16C): codes → int16 pairs, 16 rows × 2 columns in two ymm, VPMADDWD with up to 4 rows
//     of x rounded once per call to 16-bit fixed point per row (y::Xq: within 2^-15 · max |x| of the row).
//   avx512 from `act8_from` rows (prefill, larger batches; AVX-512 VNNI): x rounded to int8 per row and block
//     of ≤ 32 columns (≤ 64 with α), codes as uint8, VPDPBUSD (64 multiply-adds an instruction, twice
//     VDPBF16PS's at the same rate): q8 below.
//   avx2 from `act8_from` rows below dense_from (the dense path takes precedence there, not on avx512): x
//     rounded as for q8, codes as uint8, VPMADDUBSW (32 multiply-adds a ymm, twice VPMADDWD's) into int16
//     sums exact by their bound, then int32: y8 below.
// Products are exact in all (small integers × bfloat16 / int16 / int8), sums float32 (int16 / int8: int32
// over ≤ 512 / ≤ 64 columns first); per group the partial sums are scaled once. Then R is added (CSR: entry by entry into
// the tile when entries × rows of x are few, kSparseRatio; else row by row over xᵀ), row scale and bias
// applied, and the result rounded once to bfloat16 (round to nearest even).
//
// Dispatch by M: rows of x are taken in chunks of kChunkM (bounding the transient buffers: xᵀ in
// float32 for the residual, and x in fixed point for avx2; per thread the residual of its 32 rows over
// the chunk). When a chunk has at least `predecode_from` rows, each thread decodes its blocks once per
// chunk into a small buffer (K·64 bytes per block pair; avx2: K·32 per block) and every 8 (4) rows reuse
// it with plain loads; below, codes are decoded in registers on every pass.
//
// The translation unit is compiled for the avx2 baseline (-mavx2 -mfma -mf16c, kernels/cpu_lut.py);
// only the functions between the `#pragma GCC target` lines below use AVX-512, and they run only after
// the CPUID check.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

constexpr int kRows = 16;        // output rows per block
constexpr int kTile = 32;        // tile row stride (floats): up to 2 blocks
constexpr int kMaxMB = 8;        // activation rows per pass (avx512; avx2 takes 4)
constexpr int kMaxMBGroups = 6;  // the same for predecoded blocks with group scales (totals in registers)
// Bytes of codes prefetched ahead of the pair being decoded in registers (the blocks ahead in `packed`):
// the whole model's weights stream from memory at decode, where the hardware prefetcher alone left the step
// of linears at M = 1 slower. Measured on all 30 layers in turn, M = 1: avx2 SSQR-w4 25 % slower without,
// 2048 best of 1024 / 2048 / 4096 / 16384; avx512 (which takes the codes ~2x as fast) 2048 / 4096 / 8192 /
// 16384 / 32768 → HPTQ-4.3 2.70 / 2.78 / 2.96 / 3.11 / 3.05x streamed bf16 F.linear (10.86 ms without).
constexpr int kPrefetchAvx2 = 2048, kPrefetchAvx512 = 16384;
// activation rows per outer chunk: blocks are predecoded once per chunk. 256 against 64 (layer 5, 1 thread,
// 7 rounds, x vLLM's bf16): HPTQ-4.3 M = 128 / 256 gate_up 0.96 → 0.97 / 0.95 → 0.99, down_proj 0.91 → 0.94 /
// 0.91 → 0.95; SSQR-w4 M = 128 / 192 gate_up 0.85 → 0.85 / 0.84 → 0.87, down_proj 0.80 → 0.82 / 0.79 → 0.81
// (xᵀ then 1.5 MiB at K = 1,536, past L2, and still no slower)
constexpr int64_t kChunkM = 256;
// The residual entry by entry costs ~0.65 ns per entry and row of x, the per-row pass ~5-10 ns per row of
// the layer + ~0.24 ns per entry and row of x (AVX-512 host, SSQR-w4/HPTQ-4.3 layers at M = 1 … 16): a chunk
// of mc rows takes the entry-by-entry way while mc · nnz ≤ kSparseRatio · N (measured: HPTQ-4.3 gate_up
// 3072x576 with 2,287 entries gains at M = 8 (199 → 184 µs) and loses at M = 16 (340 → 348 µs)).
constexpr int64_t kSparseRatio = 10;

// The message is built only on failure (a per-call check must not allocate strings).
#define BABAI_CHECK(ok, ...) TORCH_CHECK(ok, "babai_cpu::lut_linear: ", __VA_ARGS__)

inline uint32_t load_u32(const void* p) { uint32_t v; std::memcpy(&v, p, sizeof v); return v; }

// --- CPU features (CPUID leaf 1 / 7.0 / 7.1, and the OS's XCR0 for ymm/zmm state) ---------------

struct Features {
  bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bw = false, avx512vl = false,
       avx512dq = false, avx512bf16 = false, avx512vnni = false;
};

Features probe_cpu() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  uint64_t xcr0 = 0;
  if (c & (1u << 27)) {   // OSXSAVE
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  }
  const bool ymm = (xcr0 & 0x6) == 0x6, zmm = ymm && (xcr0 & 0xE0) == 0xE0;
  f.fma = ymm && (c & (1u << 12));
  f.f16c = ymm && (c & (1u << 29));
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = ymm && (b & (1u << 5));
    f.avx512f = zmm && (b & (1u << 16));
    f.avx512dq = zmm && (b & (1u << 17));
    f.avx512bw = zmm && (b & (1u << 30));
    f.avx512vl = zmm && (b & (1u << 31));
    f.avx512vnni = zmm && (c & (1u << 11));
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = zmm && (a & (1u << 5));
  return f;
}

const Features& cpu() {
  static const Features f = probe_cpu();
  return f;
}

// Feature names as Linux's /proc/cpuinfo spells them (kernels/cpu_lut.py compares the two).
std::vector<std::string> cpu_features() {
  const Features& f = cpu();
  std::vector<std::string> out;
  const std::pair<bool, const char*> all[] = {{f.avx2, "avx2"}, {f.fma, "fma"}, {f.f16c, "f16c"},
                                              {f.avx512f, "avx512f"}, {f.avx512bw, "avx512bw"},
                                              {f.avx512vl, "avx512vl"}, {f.avx512dq, "avx512dq"},
                                              {f.avx512bf16, "avx512_bf16"}, {f.avx512vnni, "avx512_vnni"}};
  for (const auto& [has, name] : all)
    if (has) out.emplace_back(name);
  return out;
}

bool has_avx2() { const Features& f = cpu(); return f.avx2 && f.fma && f.f16c; }
bool has_avx512() {
  const Features& f = cpu();
  return has_avx2() && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512bf16;
}

// The instruction set a call runs: "auto" → the best this CPU has; a named one must be present.
enum class Isa { kAvx2, kAvx512 };
Isa resolve_isa(const std::string& isa) {
  BABAI_CHECK(isa == "auto" || isa == "avx2" || isa == "avx512", "isa must be 'auto', 'avx2' or 'avx512', got '", isa, "'");
  BABAI_CHECK(has_avx2(), "this CPU lacks AVX2, FMA or F16C, which every variant of the kernel needs");
  if (isa == "avx512") {
    BABAI_CHECK(has_avx512(), "isa 'avx512' needs AVX-512 F, BW, VL, DQ and BF16, and this CPU lacks one of them");
    return Isa::kAvx512;
  }
  return isa == "auto" && has_avx512() ? Isa::kAvx512 : Isa::kAvx2;
}

// --- the work of one unit: NB consecutive blocks of 16 rows ------------------------------------

struct Unit {
  const uint8_t* blk;         // first block's packed codes; block j at blk + j * blk_bytes
  int64_t blk_bytes;
  const at::Half* sc;         // first block's scales (K/G, 16), block j at sc + j * sc_block; null: all 1
  int64_t sc_block;
  int64_t K, G;
};

// tile[m * kTile + j] = Σ_g S[g][j] Σ_{k in g} W[j][k] · x[m][k] for the unit's rows j and mb rows of x.
using DotsFn = void (*)(const Unit&, const void* dec, const void* x, float* tile);
using DecodeFn = void (*)(const Unit&, void* dec);

// y[m][j] = bf16(tile[m][j] · s[j] + c[j]) for j < rows (a multiple of 16).
using StoreFn = void (*)(const float* tile, int mb, int rows, const float* s, const float* c, uint16_t* y, int64_t ldy);

// --- x in int8 per row and block of columns (both variants' int8-activation paths) ----------------
namespace a8 {

// Columns per block of x's int8 steps for group size G (a multiple of 8): at most 64 for x ⊙ α (HPTQ's
// per-column steps even out x's columns), else at most 32 — the largest of 64 (with α), 32, 16, 8 dividing G,
// or G itself when smaller. Perplexity, 8 windows of 1,024 tokens (benchmarks/act8_quality), int8 x vs bf16 x
// with 64-column blocks: SSQR-w4 +0.20 %, SSQR-w3 +0.34 %, HPTQ-4.3 / 3.3 +0.05 %; with 32: SSQR-w4 −0.10 %,
// SSQR-w3 +0.08 %, HPTQ-4.3 −0.004 %; 32 costs 10-15 % of the int8 path's time at M = 16 … 1,024.
inline int64_t block_of(int64_t G, bool alpha) {
  const int64_t cap = alpha ? 64 : 32;
  if (G <= cap) return G;
  for (int64_t a : {64, 32, 16}) if (a <= cap && G % a == 0) return a;
  return 8;
}

// x of one pass: q (mb, K) int8 (row stride K), s (mb, K/A) float32 steps (NaN: the row has an infinity or
// a NaN; q is then meaningless: 0, or −128 where x · 0 is NaN), sum (mb, K/A) int32 = Σ q over each block; pairs (mb, K/A): −Σ_r (q[4r] + q[4r + 1]) and
// −Σ_r (q[4r + 2] + q[4r + 3]) over each block's quads r as two int16 (|·| ≤ 32 · 127; avx2's y8).
struct X8 {
  const int8_t* q;
  const float* s;
  const int32_t* sum;
  const uint32_t* pairs;
  int64_t A, blocks;
};

// x (mc, K) bfloat16 → q, s, sum, pairs of X8 (A a multiple of 8 dividing K, at most 64).
void quantize(const uint16_t* x, int64_t mc, int64_t K, int64_t A, int8_t* q, float* s, int32_t* sum, uint32_t* pairs) {
  const int64_t blocks = K / A;
  for (int64_t m = 0; m < mc; ++m) {
    const uint16_t* xm = x + m * K;
    uint16_t top = 0;   // max |x| over the row as bits: a row with an infinity or a NaN is NaN throughout
    for (int64_t k = 0; k < K; ++k) top = std::max<uint16_t>(top, xm[k] & 0x7FFF);
    const bool finite = top < 0x7F80;
    for (int64_t a = 0; a < blocks; ++a) {
      const uint16_t* xb = xm + a * A;
      int8_t* qb = q + m * K + a * A;
      uint16_t bt = 0;
      for (int64_t k = 0; k < A; ++k) bt = std::max<uint16_t>(bt, xb[k] & 0x7FFF);
      float amax;
      const uint32_t ab = static_cast<uint32_t>(bt) << 16;
      std::memcpy(&amax, &ab, sizeof amax);
      const float r = finite && bt ? 127.0f / amax : 0.0f;
      s[m * blocks + a] = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
      __m256i acc = _mm256_setzero_si256();
      for (int64_t k = 0; k < A; k += 8) {   // round to nearest even (MXCSR default); |x · r| ≤ 127
        const __m256 v = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb + k))), 16));
        const __m256i i = _mm256_cvtps_epi32(_mm256_mul_ps(v, _mm256_set1_ps(r)));
        const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(qb + k), _mm_packs_epi16(w, w));
        acc = _mm256_add_epi32(acc, i);
      }
      const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
      const __m128i h2 = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xB1));   // lanes 0, 2: columns 4r + 0..1, 4r + 2..3
      sum[m * blocks + a] = _mm_cvtsi128_si32(_mm_add_epi32(h2, _mm_shuffle_epi32(h2, 0x4E)));
      // in vector registers, wrapping: a row with an infinity or a NaN has q = −128 where x · 0 is NaN
      const __m128i neg = _mm_sub_epi32(_mm_setzero_si128(), h2);
      pairs[m * blocks + a] = (static_cast<uint32_t>(_mm_cvtsi128_si32(neg)) & 0xFFFF) |
                              static_cast<uint32_t>(_mm_extract_epi32(neg, 2)) << 16;
    }
  }
}

}  // namespace a8

// ================================ avx512 ==========================================================
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
namespace z {

inline __m512i lut(int bits) {   // bf16 bits of u - 2^(bits-1), u in [0, 2^bits), in 16-bit slots
  alignas(64) uint16_t t[32] = {};
  for (int u = 0; u < (1 << bits) && bits <= 5; ++u) t[u] = c10::BFloat16(static_cast<float>(u - (1 << (bits - 1)))).x;
  return _mm512_load_si512(t);
}

inline __m512i nibble_index(const uint8_t* p) {   // 16 bytes → 32 indices in [0, 16)
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_and_si512(_mm512_or_si512(v, _mm512_slli_epi32(v, 12)), _mm512_set1_epi32(0x000F000F));
}

// 32 codes (16 rows × columns 2p, 2p+1) of one block as bfloat16 pairs.
template <int BITS>
inline __m512i decode(const uint8_t* p, __m512i table) {
  if constexpr (BITS == 4) {
    return _mm512_permutexvar_epi16(nibble_index(p), table);
  } else if constexpr (BITS == 5) {
    const __mmask32 high = load_u32(p + 16);
    const __m512i idx = nibble_index(p);
    return _mm512_permutexvar_epi16(_mm512_mask_add_epi16(idx, high, idx, _mm512_set1_epi16(16)), table);
  } else {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);   // elements 0..15 from lo (rows 0-7), 16..31 from hi
  }
}

// acc + w · (x[0], x[1]) broadcast to every lane. Outside sanitizer builds the broadcast is embedded in
// VDPBF16PS ({1to16}, as oneDNN's kernels do): a separate VPBROADCASTD per row of x takes a vector
// pipe from the dot products (measured: ~20 % of the predecoded path). Sanitizer builds keep the
// intrinsics, so AddressSanitizer checks the very same loads.
inline __m512 dot_bcast(__m512 acc, __m512i w, const uint16_t* x) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
  return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_set1_epi32(static_cast<int>(load_u32(x))));
#else
  __asm__("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const uint16_t(*)[2]>(x)));
  return acc;
#endif
}

// Decoded weights of a unit: (K/2, NB, 32) bfloat16, the VDPBF16PS operand of pair p and block j.
template <int BITS, int NB>
void decode_unit(const Unit& u, void* dec) {
  const __m512i table = lut(BITS);
  uint16_t* d = static_cast<uint16_t*>(dec);
  for (int64_t p = 0; p < u.K / 2; ++p)
    for (int j = 0; j < NB; ++j)
      _mm512_storeu_si512(d + (p * NB + j) * 32, decode<BITS>(u.blk + j * u.blk_bytes + p * BITS * 4, table));
}

// U independent partial sums per (block, row of x) (column pairs taken round-robin) hide VDPBF16PS
// latency when NB·MB is small; G is a multiple of 8 ≥ 2U. Up to 12 (block, row) pairs keep their scaled
// totals in registers across groups; more (16) add each group's sums into the tile (a load, an FMA and a
// store per pair and group: ~12 % of the passes' instructions with groups of 64, hence kMaxMBGroups).
template <int BITS, int NB, int MB, bool DEC>
void dots(const Unit& u, const void* dec, const void* xv, float* tile) {
  constexpr int U = NB * MB >= 4 ? 1 : 4 / (NB * MB);
  constexpr bool kInRegisters = NB * MB <= 12;
  const __m512i table = lut(BITS == 8 ? 4 : BITS);
  const uint16_t* d = static_cast<const uint16_t*>(dec);
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  __m512 total[NB][MB];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NB; ++j) {
      total[j][m] = _mm512_setzero_ps();
      if (!kInRegisters) _mm512_storeu_ps(tile + m * kTile + j * kRows, total[j][m]);
    }
  for (int64_t g0 = 0, gi = 0; g0 < u.K; g0 += u.G, ++gi) {
    __m512 part[U][NB][MB];
    for (int v = 0; v < U; ++v)
      for (int j = 0; j < NB; ++j)
        for (int m = 0; m < MB; ++m) part[v][j][m] = _mm512_setzero_ps();
    for (int64_t k0 = g0; k0 < g0 + u.G; k0 += 2 * U) {
      for (int v = 0; v < U; ++v) {
        const int64_t p = k0 / 2 + v;
        __m512i w[NB];
        for (int j = 0; j < NB; ++j) {
          if (!DEC) _mm_prefetch(reinterpret_cast<const char*>(u.blk + j * u.blk_bytes + p * BITS * 4) + kPrefetchAvx512, _MM_HINT_T0);
          w[j] = DEC ? _mm512_loadu_si512(d + (p * NB + j) * 32) : decode<BITS>(u.blk + j * u.blk_bytes + p * BITS * 4, table);
        }
        for (int m = 0; m < MB; ++m)
          for (int j = 0; j < NB; ++j) part[v][j][m] = dot_bcast(part[v][j][m], w[j], x + m * u.K + 2 * p);
      }
    }
    for (int j = 0; j < NB; ++j) {
      const __m512 s = u.sc ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                  u.sc + j * u.sc_block + gi * kRows)))
                            : _mm512_set1_ps(1.0f);
      for (int m = 0; m < MB; ++m) {
        __m512 sum = part[0][j][m];
        for (int v = 1; v < U; ++v) sum = _mm512_add_ps(sum, part[v][j][m]);
        float* t = tile + m * kTile + j * kRows;
        if (kInRegisters) {
          total[j][m] = _mm512_fmadd_ps(sum, s, total[j][m]);
        } else {
          _mm512_storeu_ps(t, _mm512_fmadd_ps(sum, s, _mm512_loadu_ps(t)));
        }
      }
    }
  }
  if (kInRegisters)
    for (int m = 0; m < MB; ++m)
      for (int j = 0; j < NB; ++j) _mm512_storeu_ps(tile + m * kTile + j * kRows, total[j][m]);
}

void store(const float* tile, int mb, int rows, const float* s, const float* c, uint16_t* y, int64_t ldy) {
  for (int j = 0; j < rows; j += kRows) {
    const __m512 sj = _mm512_loadu_ps(s + j), cj = _mm512_loadu_ps(c + j);
    for (int m = 0; m < mb; ++m) {
      const __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(tile + m * kTile + j), sj, cj);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + m * ldy + j), (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

template <int BITS, int NB, bool DEC>
constexpr DotsFn kDots[kMaxMB + 1] = {nullptr, dots<BITS, NB, 1, DEC>, dots<BITS, NB, 2, DEC>, dots<BITS, NB, 3, DEC>,
                                      dots<BITS, NB, 4, DEC>, dots<BITS, NB, 5, DEC>, dots<BITS, NB, 6, DEC>,
                                      dots<BITS, NB, 7, DEC>, dots<BITS, NB, 8, DEC>};

template <int NB>
DotsFn pick_dots(int bits, int mb, bool dec) {   // decoded weights do not depend on the bit width
  if (dec) return kDots<4, NB, true>[mb];
  return bits == 4 ? kDots<4, NB, false>[mb] : bits == 5 ? kDots<5, NB, false>[mb] : kDots<8, NB, false>[mb];
}

template <int NB>
DecodeFn pick_decode(int bits) { return bits == 4 ? decode_unit<4, NB> : bits == 5 ? decode_unit<5, NB> : decode_unit<8, NB>; }

}  // namespace z
#pragma GCC pop_options

// ================================ avx512 + VNNI: int8 activations =================================
//
// From `act8_from` rows of x (prefill, large batches; AVX-512 VNNI hosts) the avx512 variant rounds x
// (stored order, ⊙ α, bf16) to int8 per row and block of A columns, q = round(x · 127 / max|x|) with the
// block's step s = max|x| / 127 (A: the group size G when ≤ 64, else the largest of 64, 32, 16, 8 dividing
// G), and multiplies the codes u = z + 2^(bits−1) in [0, 2^bits) as uint8 with it by VPDPBUSD: 64
// multiply-adds an instruction, twice VDPBF16PS's 32 at the same rate (Zen 4: one zmm of either a cycle,
// measured). Products and their int32 sums are exact; per block the sums less 2^(bits−1) · Σ q are
// converted to float32, times the group scale and s, and added to the totals. The only new rounding is x's:
// within s / 2 = max|x| / 254 of each element of the block.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni")
namespace q8 {

constexpr int kMB = 6;   // rows of x per pass: NB · kMB int32 sums + NB · kMB float32 totals + NB codes ≤ 26 zmm

// Bits 2i, 2i + 1 of a → bits 4i, 4i + 1.
inline uint64_t spread2(uint32_t a) {
  uint64_t v = a;
  v = (v | v << 16) & 0x0000FFFF0000FFFFull;
  v = (v | v << 8) & 0x00FF00FF00FF00FFull;
  v = (v | v << 4) & 0x0F0F0F0F0F0F0F0Full;
  return (v | v << 2) & 0x3333333333333333ull;
}

// The unit's codes as VPDPBUSD operands: (K/4, NB, 64) uint8, lane i of (quad r, block j) = u[i][4r .. 4r + 3]
// (pairs 2r and 2r + 1 of the block layout).
template <int BITS, int NB>
void decode_unit(const Unit& u, void* dec) {
  uint8_t* d = static_cast<uint8_t*>(dec);
  for (int64_t r = 0; r < u.K / 4; ++r)
    for (int j = 0; j < NB; ++j) {
      const uint8_t* p = u.blk + j * u.blk_bytes + 2 * r * BITS * 4;   // pair 2r; pair 2r + 1 BITS · 4 bytes on
      __m512i v;
      if constexpr (BITS == 8) {   // int16 lanes z[i, 2p] | z[i, 2p + 1] << 8 of the two pairs; u = z ^ 0x80
        const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        const __m512i b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
        v = _mm512_xor_si512(_mm512_or_si512(a, _mm512_slli_epi32(b, 16)), _mm512_set1_epi8(static_cast<char>(0x80)));
      } else {   // bytes u[i, 2p] | u[i, 2p + 1] << 4 of the two pairs → the four nibbles in four bytes
        const __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + BITS * 4)));
        const __m512i t = _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
        v = _mm512_and_si512(_mm512_or_si512(t, _mm512_slli_epi32(t, 4)), _mm512_set1_epi8(15));
        if constexpr (BITS == 5) {   // bit 2i + c of each pair's mask → byte 4i + c (pair 2r), 4i + 2 + c (2r + 1)
          const __mmask64 high = spread2(load_u32(p + 16)) | spread2(load_u32(p + BITS * 4 + 16)) << 2;
          v = _mm512_mask_add_epi8(v, high, v, _mm512_set1_epi8(16));
        }
      }
      _mm512_storeu_si512(d + (r * NB + j) * 64, v);
    }
}

// acc + VPDPBUSD(w, x[0 .. 3] broadcast): embedded broadcast outside sanitizer builds (as z::dot_bcast).
inline __m512i dot_bcast(__m512i acc, __m512i w, const int8_t* x) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
  return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(static_cast<int>(load_u32(x))));
#else
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int8_t(*)[4]>(x)));
  return acc;
#endif
}

// tile[m * kTile + j] = Σ_g S[g][j] Σ_{k in g} W[j][k] · x̂[m][k] (x̂ = q · s) for the unit's 16 · NB rows j and
// MB rows of x, from the decoded codes.
template <int BITS, int NB, int MB>
void dots(const Unit& u, const void* dec, const void* xv, float* tile) {
  const a8::X8& x = *static_cast<const a8::X8*>(xv);
  const uint8_t* d = static_cast<const uint8_t*>(dec);
  const int64_t quads = x.A / 4;
  __m512 total[NB][MB];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MB; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t a = 0; a < x.blocks; ++a) {
    __m512i acc[NB][MB];
    for (int j = 0; j < NB; ++j)
      for (int m = 0; m < MB; ++m) acc[j][m] = _mm512_setzero_si512();
    for (int64_t r = a * quads; r < (a + 1) * quads; ++r) {
      __m512i w[NB];
      for (int j = 0; j < NB; ++j) w[j] = _mm512_loadu_si512(d + (r * NB + j) * 64);
      for (int m = 0; m < MB; ++m)
        for (int j = 0; j < NB; ++j) acc[j][m] = dot_bcast(acc[j][m], w[j], x.q + m * u.K + 4 * r);
    }
    const int64_t g = a * x.A / u.G;
    for (int j = 0; j < NB; ++j) {
      const __m512 sw = u.sc ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                   u.sc + j * u.sc_block + g * kRows)))
                             : _mm512_set1_ps(1.0f);
      for (int m = 0; m < MB; ++m) {
        const int64_t i = m * x.blocks + a;
        const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[j][m], _mm512_set1_epi32(x.sum[i] << (BITS - 1))));
        total[j][m] = _mm512_fmadd_ps(_mm512_mul_ps(v, sw), _mm512_set1_ps(x.s[i]), total[j][m]);
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NB; ++j) _mm512_storeu_ps(tile + m * kTile + j * kRows, total[j][m]);
}

template <int BITS, int NB>
constexpr DotsFn kDots[kMB + 1] = {nullptr, dots<BITS, NB, 1>, dots<BITS, NB, 2>, dots<BITS, NB, 3>,
                                   dots<BITS, NB, 4>, dots<BITS, NB, 5>, dots<BITS, NB, 6>};

template <int NB>
DotsFn pick_dots(int bits, int mb) { return bits == 4 ? kDots<4, NB>[mb] : bits == 5 ? kDots<5, NB>[mb] : kDots<8, NB>[mb]; }

template <int NB>
DecodeFn pick_decode(int bits) { return bits == 4 ? decode_unit<4, NB> : bits == 5 ? decode_unit<5, NB> : decode_unit<8, NB>; }

}  // namespace q8
#pragma GCC pop_options

// ================================ avx2 (+ FMA, F16C) ==============================================
namespace y {

// Rows of x per pass: 8 int32 sums in registers (5 or 6 rows, 10 or 12 sums: within 4 % at M = 8 and 16 on
// SmolLM2-135M's linears; 8 rows over one half of the block at a time: 1.3-1.5x slower at M = 8).
constexpr int kMB = 4;

// 32 codes of one block as float32: w[2c + h] = column 2p + c, rows 8h .. 8h + 7.
template <int BITS>
inline void decode(const uint8_t* p, __m256 w[4]) {
  if constexpr (BITS == 8) {   // int16 lanes z[i, 2p] | z[i, 2p+1] << 8, sign-extended to int32
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h)));
      w[h] = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 24), 24));
      w[2 + h] = _mm256_cvtepi32_ps(_mm256_srai_epi32(v, 8));
    }
  } else {
    // u → float32 without a conversion: the bits 0x4B000000 | u are 2^23 + u exactly, and one subtraction
    // of 2^23 + 2^(bits-1) leaves z (the OR takes any vector pipe; VCVTDQ2PS would compete with the
    // subtraction for Zen 4's two FP-add pipes)
    const __m256i nib = _mm256_set1_epi32(15), magic = _mm256_set1_epi32(0x4B000000);
    const __m256 offset = _mm256_set1_ps(static_cast<float>((1 << 23) + (1 << (BITS - 1))));
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h)));
      __m256i u0 = _mm256_and_si256(v, nib), u1 = _mm256_srli_epi32(v, 4);
      if constexpr (BITS == 5) {   // bit 2i + c of the mask is bit 4 of u[i, 2p + c]: the half's 16 bits at 4 .. 19
        const uint32_t mask = load_u32(p + 16);
        const __m256i hb = _mm256_set1_epi32(static_cast<int>(h ? mask >> 12 : (mask & 0xFFFF) << 4));
        const __m256i shift = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), bit4 = _mm256_set1_epi32(16);
        u0 = _mm256_or_si256(u0, _mm256_and_si256(_mm256_srlv_epi32(hb, shift), bit4));
        u1 = _mm256_or_si256(u1, _mm256_and_si256(_mm256_srlv_epi32(hb, _mm256_add_epi32(shift, _mm256_set1_epi32(1))), bit4));
      }
      w[h] = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(u0, magic)), offset);
      w[2 + h] = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(u1, magic)), offset);
    }
  }
}

// --- x in 16-bit fixed point, codes as int16 pairs, VPMADDWD ---------------------------------------
//
// Lane i of a register holds one row's pair of columns (2p, 2p + 1), the block's own order, so VPMADDWD
// takes 16 multiply-adds per instruction (a float32 FMA: 8) and Zen 4 runs it on two pipes while the
// VPADDD that accumulates takes any of four. x is rounded per row to q = round(x / s), s = 2^(e − 14),
// e = max(⌊log2 max_k |x_k|⌋, −112): |q| ≤ 32,640, every element ≥ 2^−7 · max |x| (all of bf16's 8 bits)
// exactly, the rest within s / 2 ≤ 2^−15 · max |x|, so |Δy_n| ≤ s / 2 · Σ_k |S ⊙ Z|_nk · |row scale_n|.
// int32 sums span ≤ kSpan columns (8 bits: 256 pairs · 2 · 128 · 32,640 < 2^31), then float32 per group.

constexpr int64_t kSpan = 512;

// x of one pass: q (mb, K) int16 (row stride K), s (mb) float32 (NaN for a row with an infinity or a NaN,
// q = 0 there), sum (mb, spans) int32 = Σ q over each span (a group's columns in pieces of ≤ kSpan).
struct Xq {
  const int16_t* q;
  const float* s;
  const int32_t* sum;
  int64_t spans;
};

inline int64_t spans_of(int64_t K, int64_t G) { return K / G * ((G + kSpan - 1) / kSpan); }

// x (mc, K) bfloat16 → q, s, sum of Xq (K a multiple of 8, G of the spans).
void quantize(const uint16_t* x, int64_t mc, int64_t K, int64_t G, int16_t* q, float* s, int32_t* sum) {
  const int64_t spans = spans_of(K, G);
  for (int64_t m = 0; m < mc; ++m) {
    const uint16_t* xm = x + m * K;
    int16_t* qm = q + m * K;
    uint16_t top = 0;   // max |x| as bits: integer order is float order for finite values
    for (int64_t k = 0; k < K; ++k) top = std::max<uint16_t>(top, xm[k] & 0x7FFF);
    const bool finite = top < 0x7F80;
    const int e = std::max(top >> 7, 15);   // biased exponent, ≥ 15: 1 / s stays a float32
    const uint32_t sb = finite ? static_cast<uint32_t>(e - 14) << 23 : 0x7FC00000u;
    std::memcpy(s + m, &sb, sizeof sb);
    const __m256 r = _mm256_castsi256_ps(_mm256_set1_epi32(finite ? (268 - e) << 23 : 0));   // 1 / s (0: q = 0)
    for (int64_t k = 0; k < K; k += 8) {   // round to nearest even (MXCSR default)
      const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xm + k))), 16)), r));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qm + k),
                       _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
    }
    int32_t* sm = sum + m * spans;
    for (int64_t g0 = 0; g0 < K; g0 += G)
      for (int64_t k0 = g0; k0 < g0 + G; k0 += kSpan, ++sm) {
        int32_t a = 0;
        for (int64_t k = k0; k < std::min(k0 + kSpan, g0 + G); ++k) a += qm[k];
        *sm = a;
      }
  }
}

// The 32 codes of pair p as int16 pairs. 8 bits: z, w[h] = rows 8h .. 8h + 7. 4/5 bits: u = z + 2^(bits−1)
// (the offset is taken off the sums: Xq's sum), w[0] = rows 0-3 and 8-11, w[1] = rows 4-7 and 12-15
// (VPUNPCK*WD stay within 128-bit lanes).
template <int BITS>
inline void decode_i16(const uint8_t* p, __m256i w[2]) {
  if constexpr (BITS == 8) {
    for (int h = 0; h < 2; ++h) w[h] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h)));
  } else {
    const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));   // word i: row i
    __m256i lo = _mm256_and_si256(v, _mm256_set1_epi16(15)), hi = _mm256_srli_epi16(v, 4);
    if constexpr (BITS == 5) {   // word i of lo takes bit 2i of the mask, of hi bit 2i + 1 (rows 8-15: bits 16-31)
      const __m256i mask = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(load_u32(p + 16))),
                                               _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                                                2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
      const __m256i even = _mm256_setr_epi16(1, 4, 16, 64, 256, 1024, 4096, 16384, 1, 4, 16, 64, 256, 1024, 4096, 16384);
      const __m256i odd = _mm256_add_epi16(even, even), bit4 = _mm256_set1_epi16(16);
      lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi16(_mm256_and_si256(mask, even), even), bit4));
      hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi16(_mm256_and_si256(mask, odd), odd), bit4));
    }
    w[0] = _mm256_unpacklo_epi16(lo, hi);
    w[1] = _mm256_unpackhi_epi16(lo, hi);
  }
}

// Decoded weights of one block: (K/2, 16) int16 pairs z, rows in order.
template <int BITS>
void decode_unit(const Unit& u, void* dec) {
  int32_t* d = static_cast<int32_t*>(dec);
  const __m256i offset = _mm256_set1_epi16(BITS == 8 ? 0 : 1 << (BITS - 1));
  __m256i w[2];
  for (int64_t p = 0; p < u.K / 2; ++p) {
    decode_i16<BITS>(u.blk + p * BITS * 4, w);
    if (BITS != 8) {
      const __m256i a = _mm256_permute2x128_si256(w[0], w[1], 0x20), b = _mm256_permute2x128_si256(w[0], w[1], 0x31);
      w[0] = _mm256_sub_epi16(a, offset);
      w[1] = _mm256_sub_epi16(b, offset);
    }
    for (int h = 0; h < 2; ++h) _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + p * kRows + 8 * h), w[h]);
  }
}

// acc + VPMADDWD(w, x) in place: written with intrinsics GCC 12 kept one of 8 accumulators on the stack
// and copied the others every pair (40 instructions per pair at 4 rows of x, 8 bits, instead of 29).
inline __m256i madd_acc(__m256i acc, __m256i w, __m256i x) {
  __m256i t;
  __asm__("vpmaddwd %2, %3, %1\n\tvpaddd %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(w), "x"(x));
  return acc;
}

// One block, MB rows of x (Xq): per span int32 sums by VPMADDWD + VPADDD (the add's 1-cycle latency needs
// no second chain), per span converted and scaled by the group's S into the tile; at the end rows put in
// order and times s.
template <int BITS, int MB, bool DEC>
void dots(const Unit& u, const void* dec, const void* xv, float* tile) {
  constexpr bool kNibbles = !DEC && BITS != 8;   // rows as decode_i16 leaves them, sums of u (offset)
  const Xq& x = *static_cast<const Xq*>(xv);
  const int32_t* d = static_cast<const int32_t*>(dec);
  for (int m = 0; m < MB; ++m)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(tile + m * kTile + 8 * h, _mm256_setzero_ps());
  for (int64_t g0 = 0, gi = 0, si = 0; g0 < u.K; g0 += u.G, ++gi) {
    __m256 s[2] = {_mm256_set1_ps(1.0f), _mm256_set1_ps(1.0f)};   // the group's S, rows as the sums have them
    for (int h = 0; h < 2 && u.sc; ++h) {
      const at::Half* sg = u.sc + gi * kRows;
      s[h] = _mm256_cvtph_ps(kNibbles ? _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sg + 4 * h)),
                                                           _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sg + 8 + 4 * h)))
                                      : _mm_loadu_si128(reinterpret_cast<const __m128i*>(sg + 8 * h)));
    }
    for (int64_t k0 = g0; k0 < g0 + u.G; k0 += kSpan, ++si) {
      __m256i acc[2][MB];
      for (int h = 0; h < 2; ++h)
        for (int m = 0; m < MB; ++m) acc[h][m] = _mm256_setzero_si256();
      const int64_t p1 = std::min(k0 + kSpan, g0 + u.G) / 2;
      for (int64_t p = k0 / 2; p < p1; ++p) {
        __m256i w[2];
        if (DEC) {
          for (int h = 0; h < 2; ++h) w[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + p * kRows + 8 * h));
        } else {
          const uint8_t* code = u.blk + p * BITS * 4;
          _mm_prefetch(reinterpret_cast<const char*>(code) + kPrefetchAvx2, _MM_HINT_T0);
          decode_i16<BITS>(code, w);
        }
        for (int m = 0; m < MB; ++m) {
          const __m256i xp = _mm256_set1_epi32(static_cast<int>(load_u32(x.q + m * u.K + 2 * p)));
          for (int h = 0; h < 2; ++h) acc[h][m] = madd_acc(acc[h][m], w[h], xp);
        }
      }
      for (int m = 0; m < MB; ++m) {
        const __m256i off = _mm256_set1_epi32(kNibbles ? x.sum[m * x.spans + si] * (1 << (BITS - 1)) : 0);
        for (int h = 0; h < 2; ++h) {
          float* t = tile + m * kTile + 8 * h;
          const __m256 sum = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[h][m], off));
          _mm256_storeu_ps(t, _mm256_fmadd_ps(sum, s[h], _mm256_loadu_ps(t)));
        }
      }
    }
  }
  for (int m = 0; m < MB; ++m) {
    float* t = tile + m * kTile;
    const __m256 sm = _mm256_set1_ps(x.s[m]);
    __m256 a = _mm256_loadu_ps(t), b = _mm256_loadu_ps(t + 8);
    if (kNibbles) {
      const __m256 lo = _mm256_permute2f128_ps(a, b, 0x20), hi = _mm256_permute2f128_ps(a, b, 0x31);
      a = lo;
      b = hi;
    }
    _mm256_storeu_ps(t, _mm256_mul_ps(a, sm));
    _mm256_storeu_ps(t + 8, _mm256_mul_ps(b, sm));
  }
}

// v rounded to bfloat16 (nearest even; NaN → 0x7FC0) in the upper 16 bits of each lane, zeros below.
inline __m256i round_bf16(__m256 v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_and_si256(_mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)),
                                     _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}

inline __m128i to_bf16(__m256 v) {   // 8 bfloat16
  const __m256i r = _mm256_srli_epi32(round_bf16(v), 16);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
}

void store(const float* tile, int mb, int rows, const float* s, const float* c, uint16_t* y, int64_t ldy) {
  for (int j = 0; j < rows; j += 8) {
    const __m256 sj = _mm256_loadu_ps(s + j), cj = _mm256_loadu_ps(c + j);
    for (int m = 0; m < mb; ++m)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + m * ldy + j),
                       to_bf16(_mm256_fmadd_ps(_mm256_loadu_ps(tile + m * kTile + j), sj, cj)));
  }
}

template <int BITS, bool DEC>
constexpr DotsFn kDots[kMB + 1] = {nullptr, dots<BITS, 1, DEC>, dots<BITS, 2, DEC>, dots<BITS, 3, DEC>, dots<BITS, 4, DEC>};

DotsFn pick_dots(int bits, int mb, bool dec) {
  if (dec) return kDots<4, true>[mb];   // decoded weights do not depend on the bit width
  return bits == 4 ? kDots<4, false>[mb] : bits == 5 ? kDots<5, false>[mb] : kDots<8, false>[mb];
}

DecodeFn pick_decode(int bits) { return bits == 4 ? decode_unit<4> : bits == 5 ? decode_unit<5> : decode_unit<8>; }

}  // namespace y

// ================================ avx2: int8 activations (VPMADDUBSW) ==============================
//
// From `act8_from` rows of x (below dense_from) the avx2 variant rounds x to int8 as the avx512 one does
// (a8::quantize: per row and block of A columns) and multiplies the codes u = z + 2^(bits−1) as uint8 with it
// by VPMADDUBSW: 32 multiply-adds a ymm instruction into int16 pairs (VPMADDWD: 16), summed by VPADDW in int16
// and widened to int32 by one VPMADDWD by 1 per block of x (VPDPBUSD's work in two instructions, the widening
// shared; Zen 4, measured: 0.78 ns per 4 VPMADDUBSW + VPADDW, 1.09 per 4 VPMADDWD + VPADDD). 8-bit codes
// would saturate VPMADDUBSW (2 · 255 · 127 > 32,767): they are split into two 4-bit planes, u = 16 · (u >> 4)
// + (u & 15), widened by 16 and 1 (as many instructions as the int16 path, and slower: kernels/cpu_lut.py
// keeps bf16 x for 8-bit layouts). Products and the int32 sums are exact, the rest as q8 (the same float
// operations on the same int32 sums).
namespace y8 {

// Rows of x per pass: 2 halves × kMB int16 sums, 2 codes, x and a temporary in registers (the float totals
// spill). gate_up 3072x576 of SSQR-w4's layout (4 bits, 64-column blocks, sums in int32 every 8 quads), M = 64:
// kMB = 2 / 3 / 4 / 5 1,394 / 1,181 / 1,121 / 1,089 µs (the int16 path 1,610-1,646).
constexpr int kMB = 5;

// Quads summed in int16 before widening, with |q| ≤ 127 and u < 2^bits per VPMADDUBSW lane |u·q + u'·q'| ≤
// 2 · (2^bits − 1) · 127: 4 bits (and 8 bits' planes) 8 · 2 · 15 · 127 = 30,480, 5 bits 4 · 2 · 31 · 127 =
// 31,496 (≤ 32,767: no saturation).
template <int BITS>
constexpr int kFlush = BITS == 5 ? 4 : 8;
template <int BITS>
constexpr int kPlanes = BITS == 8 ? 2 : 1;

// The block's codes as VPMADDUBSW operands: (K/4, planes, 2, 32) uint8; lane i of (quad r, plane, half h) =
// u[8h + i][4r .. 4r + 3] (pairs 2r and 2r + 1 of the block layout); 8 bits: plane 0 u & 15, plane 1 u >> 4.
template <int BITS>
void decode_unit(const Unit& u, void* dec) {
  uint8_t* d = static_cast<uint8_t*>(dec);
  const __m256i nib = _mm256_set1_epi8(15);
  for (int64_t r = 0; r < u.K / 4; ++r) {
    const uint8_t* p = u.blk + 2 * r * BITS * 4;   // pair 2r; pair 2r + 1 BITS · 4 bytes on
    for (int h = 0; h < 2; ++h) {
      __m256i* out = reinterpret_cast<__m256i*>(d + (r * kPlanes<BITS> * 2 + h) * 32);
      if constexpr (BITS == 8) {   // int16 lanes z[i, 2p] | z[i, 2p + 1] << 8 of the two pairs; u = z ^ 0x80
        const __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h)));
        const __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32 + 16 * h)));
        const __m256i v = _mm256_xor_si256(_mm256_or_si256(a, _mm256_slli_epi32(b, 16)), _mm256_set1_epi8(static_cast<char>(0x80)));
        _mm256_storeu_si256(out, _mm256_and_si256(v, nib));
        _mm256_storeu_si256(out + 2, _mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
      } else {   // bytes u[i, 2p] | u[i, 2p + 1] << 4 of the two pairs → the four nibbles in four bytes
        const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h)));
        const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + BITS * 4 + 8 * h)));
        const __m256i t = _mm256_or_si256(a, _mm256_slli_epi32(b, 16));
        __m256i v = _mm256_and_si256(_mm256_or_si256(t, _mm256_slli_epi32(t, 4)), nib);
        if constexpr (BITS == 5) {   // bits 2i, 2i + 1 (row 8h + i: 16h + 2i) of each pair's mask → bit 4 of bytes 4i + 0..3
          const __m256i shift = _mm256_add_epi32(_mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), _mm256_set1_epi32(16 * h));
          const __m256i two = _mm256_set1_epi32(3);
          __m256i hb = _mm256_or_si256(
              _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(load_u32(p + 16))), shift), two),
              _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(load_u32(p + BITS * 4 + 16))), shift), two), 2));
          hb = _mm256_and_si256(_mm256_or_si256(hb, _mm256_slli_epi32(hb, 14)), _mm256_set1_epi32(0x00030003));   // bits 0, 1, 16, 17
          hb = _mm256_and_si256(_mm256_or_si256(hb, _mm256_slli_epi32(hb, 7)), _mm256_set1_epi32(0x01010101));    // bits 0, 8, 16, 24
          v = _mm256_or_si256(v, _mm256_slli_epi32(hb, 4));
        }
        _mm256_storeu_si256(out, v);
      }
    }
  }
}

// acc + VPMADDUBSW(w, x) in int16, in place (as y::madd_acc: with intrinsics GCC copied every sum once per quad).
inline __m256i maddubs_acc(__m256i acc, __m256i w, __m256i x) {
  __m256i t;
  __asm__("vpmaddubsw %3, %2, %1\n\tvpaddw %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(w), "x"(x));
  return acc;
}

// s16[h][m] += Σ_{r0 ≤ r < r1} VPMADDUBSW(codes of quad r, plane pl; x[m]'s quad r) in int16, wrapping.
template <int P, int MB>
__attribute__((always_inline)) inline void madd_quads(__m256i (&s16)[2][MB], const uint8_t* d, const a8::X8& x, int64_t K,
                                                      int pl, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* dr = d + (r * P + pl) * 64;
    const __m256i w[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dr)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dr + 32))};
    for (int m = 0; m < MB; ++m) {
      const __m256i xb = _mm256_set1_epi32(static_cast<int>(load_u32(x.q + m * K + 4 * r)));
      for (int h = 0; h < 2; ++h) s16[h][m] = maddubs_acc(s16[h][m], w[h], xb);
    }
  }
}

// tile[m * kTile + j] = Σ_g S[g][j] Σ_{k in g} W[j][k] · x̂[m][k] (x̂ = q · s) for the block's 16 rows j and MB
// rows of x, from the decoded codes. Per block of x each int16 lane (row i, columns 4r + 2c, 4r + 2c + 1 of
// every quad r) ends as Σ z·q over A/2 columns:
//  - 4 bits, and 5 bits with A ≤ 32: one int16 sum per lane, started at −2^(bits−1) · Σ q (X8::pairs) and
//    wrapping: |Σ z·q| ≤ 2^(bits−1) · 127 · A/2 ≤ 32,512, so the sum mod 2^16 is the value. One VPMADDWD by 1
//    then adds the lane pairs in int32. 32-column blocks (SSQR, no α) take the block's sums to float in 5 ops
//    per 8 rows of codes and of x instead of 8 (SSQR-w4, linears of a step x vLLM's bf16, M = 16 / 64:
//    0.79 / 0.84 with int32 sums per kFlush quads → 0.87 / 0.89 with the wrapping sum).
//  - else (5 bits at A = 64, 8 bits' planes): int16 sums of kFlush quads, int32 across them, less
//    2^(bits−1) · Σ q at the end.
template <int BITS, int MB>
void dots(const Unit& u, const void* dec, const void* xv, float* tile) {
  constexpr int P = kPlanes<BITS>;
  const a8::X8& x = *static_cast<const a8::X8*>(xv);
  const uint8_t* d = static_cast<const uint8_t*>(dec);
  const int64_t quads = x.A / 4, per_group = u.G / x.A;   // A divides G; quads even (A a multiple of 8)
  const bool wrap = BITS == 4 || (BITS == 5 && x.A <= 32);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 total[2][MB];
  for (int h = 0; h < 2; ++h)
    for (int m = 0; m < MB; ++m) total[h][m] = _mm256_setzero_ps();
  __m256 sw[2] = {_mm256_set1_ps(1.0f), _mm256_set1_ps(1.0f)};
  for (int64_t a = 0, g = 0, ga = 0; a < x.blocks; ++a) {
    if (u.sc && ga == 0)
      for (int h = 0; h < 2; ++h) sw[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u.sc + g * kRows + 8 * h)));
    if (++ga == per_group) ga = 0, ++g;
    __m256i acc[2][MB];   // Σ z·q of the block, int32
    if (wrap) {
      __m256i s16[2][MB];
      for (int m = 0; m < MB; ++m)
        s16[0][m] = s16[1][m] = _mm256_slli_epi16(_mm256_set1_epi32(static_cast<int>(x.pairs[m * x.blocks + a])), BITS - 1);
      madd_quads<P, MB>(s16, d, x, u.K, 0, a * quads, (a + 1) * quads);
      for (int h = 0; h < 2; ++h)
        for (int m = 0; m < MB; ++m) acc[h][m] = _mm256_madd_epi16(s16[h][m], ones);
    } else {
      for (int h = 0; h < 2; ++h)
        for (int m = 0; m < MB; ++m)
          acc[h][m] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_set1_epi32(x.sum[m * x.blocks + a]), BITS - 1));
      for (int pl = 0; pl < P; ++pl) {
        const __m256i widen = _mm256_set1_epi16(pl ? 16 : 1);
        for (int64_t r0 = a * quads, r1; r0 < (a + 1) * quads; r0 = r1) {
          r1 = std::min(r0 + kFlush<BITS>, (a + 1) * quads);
          __m256i s16[2][MB];
          for (int h = 0; h < 2; ++h)
            for (int m = 0; m < MB; ++m) s16[h][m] = _mm256_setzero_si256();
          madd_quads<P, MB>(s16, d, x, u.K, pl, r0, r1);
          for (int h = 0; h < 2; ++h)
            for (int m = 0; m < MB; ++m) acc[h][m] = _mm256_add_epi32(acc[h][m], _mm256_madd_epi16(s16[h][m], widen));
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      const __m256 xs = _mm256_set1_ps(x.s[m * x.blocks + a]);
      for (int h = 0; h < 2; ++h)
        total[h][m] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[h][m]), sw[h]), xs, total[h][m]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(tile + m * kTile + 8 * h, total[h][m]);
}

template <int BITS>
constexpr DotsFn kDots[kMB + 1] = {nullptr, dots<BITS, 1>, dots<BITS, 2>, dots<BITS, 3>, dots<BITS, 4>, dots<BITS, 5>};

DotsFn pick_dots(int bits, int mb) { return bits == 4 ? kDots<4>[mb] : bits == 5 ? kDots<5>[mb] : kDots<8>[mb]; }

DecodeFn pick_decode(int bits) { return bits == 4 ? decode_unit<4> : bits == 5 ? decode_unit<5> : decode_unit<8>; }

}  // namespace y8

// --- residual ----------------------------------------------------------------------------------

// a[0 .. 8V) = Σ_e val[e] · xt[col[e]][m .. m + 8V) for the entries [e0, e1) of one row: V accumulators
// in registers; with V = 1 two partial sums (alternate entries) so one FMA latency per entry does not
// bound it.
template <int V>
inline void residual_block(const uint16_t* col, const at::Half* val, int32_t e0, int32_t e1, const float* xt,
                           int64_t ldt, int64_t m, float* a) {
  constexpr int P = V == 1 ? 2 : 1;
  __m256 acc[P][V];   // indexed by constants only: a chain picked by (e - e0) % P kept them on the stack
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = _mm256_setzero_ps();
  int32_t e = e0;
  for (; e + P <= e1; e += P)
    for (int p = 0; p < P; ++p) {
      const __m256 w = _mm256_set1_ps(_cvtsh_ss(val[e + p].x));
      const float* xc = xt + col[e + p] * ldt + m;
      for (int v = 0; v < V; ++v) acc[p][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xc + 8 * v), acc[p][v]);
    }
  if (e < e1) {   // P = 2: the odd entry
    const __m256 w = _mm256_set1_ps(_cvtsh_ss(val[e].x));
    const float* xc = xt + col[e] * ldt + m;
    for (int v = 0; v < V; ++v) acc[0][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xc + 8 * v), acc[0][v]);
  }
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(a + 8 * v, P == 2 ? _mm256_add_ps(acc[0][v], acc[P - 1][v]) : acc[0][v]);
}

// The same for R rows at once and ldt = 8, in one loop to the longest row's length, a shorter row's missing
// entries taken as entry 0 times 0: one loop exit (a mispredicted branch: rows have 0 to ~20 entries) per
// R rows instead of per row.
constexpr int kResidualRows = 2;   // 4 measured no faster

template <int R>
inline void residual_rows8(const uint16_t* col, const at::Half* val, const int32_t* off, const float* xt, float* res) {
  __m256 acc[R];
  int32_t n = 0;
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    n = std::max(n, off[r + 1] - off[r]);
  }
  for (int32_t i = 0; i < n; ++i)
    for (int r = 0; r < R; ++r) {
      const bool in = i < off[r + 1] - off[r];
      const int32_t e = in ? off[r] + i : 0;
      const float w = in ? _cvtsh_ss(val[e].x) : 0.0f;
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(w), _mm256_loadu_ps(xt + col[e] * 8), acc[r]);
    }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(res + r * 8, acc[r]);
}

// res[r][m] = Σ_e val[e] · xt[col[e]][m] over the CSR entries of rows row0 .. row0 + rows - 1, for every
// row m < ldt of the chunk (ldt a multiple of 8; xt (K, ldt) float32; rows a multiple of 16).
void residual_rows(const int32_t* off, const uint16_t* col, const at::Half* val, int64_t row0, int rows,
                   const float* xt, int64_t ldt, float* res) {
  if (ldt == 8) {
    for (int r = 0; r < rows; r += kResidualRows) residual_rows8<kResidualRows>(col, val, off + row0 + r, xt, res + r * 8);
    return;
  }
  for (int r = 0; r < rows; ++r) {
    const int32_t e0 = off[row0 + r], e1 = off[row0 + r + 1];
    int64_t m = 0;
    for (; m + 64 <= ldt; m += 64) residual_block<8>(col, val, e0, e1, xt, ldt, m, res + r * ldt + m);
    float* a = res + r * ldt + m;
    switch ((ldt - m) / 8) {   // the rest in one pass over the row's entries
      case 1: residual_block<1>(col, val, e0, e1, xt, ldt, m, a); break;
      case 2: residual_block<2>(col, val, e0, e1, xt, ldt, m, a); break;
      case 3: residual_block<3>(col, val, e0, e1, xt, ldt, m, a); break;
      case 4: residual_block<4>(col, val, e0, e1, xt, ldt, m, a); break;
      case 5: residual_block<5>(col, val, e0, e1, xt, ldt, m, a); break;
      case 6: residual_block<6>(col, val, e0, e1, xt, ldt, m, a); break;
      case 7: residual_block<7>(col, val, e0, e1, xt, ldt, m, a); break;
      default: break;
    }
  }
}

// tile[m][r] += Σ_e val[e] · x[m][col[e]] over the CSR entries of rows row0 .. row0 + rows − 1, for mb rows
// of x (bfloat16, stored order, row stride K): entry by entry, nothing for a row without entries (the
// per-row pass below, xᵀ and an 8 × 8 transpose per 8 rows, costs ~10 ns per row of the layer whether or
// not the row has entries: ~20 % of HPTQ-4.3's op at M = 1). Taken for few entries × rows (kSparseRatio).
// With one row of x a row's sum is kept in registers (two alternating partial sums), not added to the tile
// entry by entry, which chained each entry to the previous one's store: SSQR-w4 (~5 entries a row) M = 1
// step 1.80 → 1.89x bf16 (avx512), 1.28 → 1.36x (avx2). (An array of sums for more rows of x was slower.)
inline float bf16_value(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

void add_residual_sparse(const int32_t* off, const uint16_t* col, const at::Half* val, int64_t row0, int rows,
                         const uint16_t* x, int64_t K, int mb, float* tile) {
  if (mb == 1) {   // two rows at once, as residual_rows8
    for (int r = 0; r < rows; r += 2) {
      const int32_t* o = off + row0 + r;
      const int32_t na = o[1] - o[0], nb = o[2] - o[1], n = std::max(na, nb);
      float sa = 0.0f, sb = 0.0f;
      for (int32_t i = 0; i < n; ++i) {
        const int32_t ea = i < na ? o[0] + i : 0, eb = i < nb ? o[1] + i : 0;
        sa += (i < na ? static_cast<float>(val[ea]) : 0.0f) * bf16_value(x[col[ea]]);
        sb += (i < nb ? static_cast<float>(val[eb]) : 0.0f) * bf16_value(x[col[eb]]);
      }
      tile[r] += sa;
      tile[r + 1] += sb;
    }
    return;
  }
  for (int r = 0; r < rows; ++r) {
    const int32_t e0 = off[row0 + r], e1 = off[row0 + r + 1];
    for (int32_t e = e0; e < e1; ++e) {
      const float v = static_cast<float>(val[e]);
      for (int m = 0; m < mb; ++m) tile[m * kTile + r] += v * bf16_value(x[m * K + col[e]]);
    }
  }
}

// v[i] (row i of an 8 × 8 block) → v[i] = column i.
inline void transpose8(__m256 v[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// tile[m][r] += res[r][m0 + m] for m < mb, r < rows (a multiple of 8). res must have 8 readable floats
// from every res[r][m0].
void add_residual(const float* res, int rows, int64_t ldt, int64_t m0, int mb, float* tile) {
  for (int r0 = 0; r0 < rows; r0 += 8) {
    __m256 v[8];
    for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(res + (r0 + i) * ldt + m0);
    transpose8(v);
    for (int m = 0; m < mb; ++m)
      _mm256_storeu_ps(tile + m * kTile + r0, _mm256_add_ps(_mm256_loadu_ps(tile + m * kTile + r0), v[m]));
  }
}

// xt[k][m] = x[m][k] as float32 for m < mc, 0 for mc ≤ m < ldt (a multiple of 8); x (mc, K) bfloat16,
// K a multiple of 8. (torch's transposing copy takes ~3x longer.)
void transpose_x(const uint16_t* x, int64_t mc, int64_t K, int64_t ldt, float* xt) {
  for (int64_t m0 = 0; m0 < ldt; m0 += 8)
    for (int64_t k0 = 0; k0 < K; k0 += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i)
        v[i] = m0 + i < mc ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                                 reinterpret_cast<const __m128i*>(x + (m0 + i) * K + k0))), 16))
                           : _mm256_setzero_ps();
      transpose8(v);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(xt + (k0 + i) * ldt + m0, v[i]);
    }
}

// --- large M: dequantized tiles and PyTorch's bf16 GEMM --------------------------------------------
//
// Each block becomes rows of the weight in stored column order, w[j][k] = bf16((S ⊙ Z + R)[row0 + j][k]
// · rs[j]) for its 16 rows j: w (16, ldw) bfloat16, one rounding per weight, in runtime.dequantize's
// order. f: scratch (K, 16) float32 (a block with residual entries: S ⊙ Z + R before the rounding).

constexpr int64_t kDenseTileBytes = 8 << 20;   // bf16 weights dequantized at a time (per call, not resident)

using DequantizeFn = void (*)(const Unit&, const int32_t*, const uint16_t*, const at::Half*, int64_t, const float*,
                              float*, uint16_t*, int64_t);

// f[k][j] += R[row0 + j][k] over the block's CSR entries.
inline void add_block_residual(const int32_t* off, const uint16_t* col, const at::Half* val, int64_t row0, float* f) {
  for (int j = 0; j < kRows; ++j)
    for (int32_t e = off[row0 + j]; e < off[row0 + j + 1]; ++e) f[col[e] * kRows + j] += static_cast<float>(val[e]);
}

namespace y {

// f = S ⊙ Z + R (K, 16) float32; then per 8 pairs of columns and half of the rows: times the row scale,
// rounded to bf16 pairs (lane j: row j, columns 2p and 2p + 1), an 8 × 8 transpose of the pairs, 32-byte
// stores per row.
template <int BITS>
void dequantize_block(const Unit& u, const int32_t* off, const uint16_t* col, const at::Half* val, int64_t row0,
                      const float* rs, float* f, uint16_t* w, int64_t ldw) {
  __m256 v[4];
  for (int64_t g = 0, p = 0; g < u.K / u.G; ++g) {   // by group: no division per pair
    __m256 s[2];
    for (int h = 0; h < 2; ++h)
      s[h] = u.sc ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u.sc + g * kRows + 8 * h)))
                  : _mm256_set1_ps(1.0f);
    for (; p < (g + 1) * u.G / 2; ++p) {
      decode<BITS>(u.blk + p * BITS * 4, v);
      for (int h = 0; h < 2; ++h)
        for (int c = 0; c < 2; ++c) _mm256_storeu_ps(f + (2 * p + c) * kRows + 8 * h, _mm256_mul_ps(v[2 * c + h], s[h]));
    }
  }
  add_block_residual(off, col, val, row0, f);
  const int64_t pairs = u.K / 2;
  for (int64_t p0 = 0; p0 < pairs; p0 += 8) {
    const int n = static_cast<int>(std::min<int64_t>(8, pairs - p0));
    for (int h = 0; h < 2; ++h) {
      const __m256 r = _mm256_loadu_ps(rs + 8 * h);
      __m256 t[8];   // t[q] lane j: row 8h + j, columns 2(p0 + q) and 2(p0 + q) + 1 as a bf16 pair
      for (int q = 0; q < 8; ++q) {
        const float* fk = f + 2 * (p0 + std::min(q, n - 1)) * kRows + 8 * h;   // past n: a repeat, not stored
        t[q] = _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_srli_epi32(round_bf16(_mm256_mul_ps(_mm256_loadu_ps(fk), r)), 16),
            round_bf16(_mm256_mul_ps(_mm256_loadu_ps(fk + kRows), r))));
      }
      transpose8(t);
      for (int i = 0; i < 8; ++i) {   // VPMASKMOVD stores are microcoded on AMD: the last < 8 pairs by memcpy
        uint16_t* wi = w + (8 * h + i) * ldw + 2 * p0;
        if (n == 8) {
          _mm256_storeu_ps(reinterpret_cast<float*>(wi), t[i]);
        } else {
          alignas(32) float row[8];
          _mm256_store_ps(row, t[i]);
          std::memcpy(wi, row, 4 * n);
        }
      }
    }
  }
}

DequantizeFn pick_dequantize(int bits) {
  return bits == 4 ? dequantize_block<4> : bits == 5 ? dequantize_block<5> : dequantize_block<8>;
}

}  // namespace y

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
namespace z {

// The codes' bf16 pairs (lane i = row i, columns 2p, 2p+1) → float32 of column 2p and of 2p + 1.
inline void split_pairs(__m512i v, __m512& a, __m512& b) {
  a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// float32 a (lane i: row i, column 2p) and b (column 2p + 1) → lane i = bf16(a) | bf16(b) << 16, each
// rounded to nearest even by integer adds (finite inputs; as torch's float → bfloat16): no shuffle-port
// instruction, where VCVTNEPS2BF16 + VPMOVZXWD cost two.
inline __m512i round_pairs(__m512 a, __m512 b) {
  const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF);
  const __m512i ia = _mm512_castps_si512(a), ib = _mm512_castps_si512(b);
  const __m512i ra = _mm512_add_epi32(ia, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(ia, 16), one)));
  const __m512i rb = _mm512_add_epi32(ib, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(ib, 16), one)));
  return _mm512_or_si512(_mm512_srli_epi32(ra, 16), _mm512_and_si512(rb, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// t[q] (lane i = element (q, i) of a 16 × 16 block of 32-bit elements) → t[i] (lane q).
__attribute__((always_inline)) inline void transpose16(__m512i t[16]) {
  __m512i u[16];
  for (int i = 0; i < 16; i += 2) {
    u[i] = _mm512_unpacklo_epi32(t[i], t[i + 1]);
    u[i + 1] = _mm512_unpackhi_epi32(t[i], t[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    t[i] = _mm512_unpacklo_epi64(u[i], u[i + 2]);
    t[i + 1] = _mm512_unpackhi_epi64(u[i], u[i + 2]);
    t[i + 2] = _mm512_unpacklo_epi64(u[i + 1], u[i + 3]);
    t[i + 3] = _mm512_unpackhi_epi64(u[i + 1], u[i + 3]);
  }
  // t[4a + b] now holds, in 128-bit lane l, rows 4a .. 4a + 3 of column 4l + b; column 4l + b gathers
  // lane l of t[b], t[4 + b], t[8 + b], t[12 + b]
  for (int b = 0; b < 4; ++b) {
    u[4 * b] = _mm512_shuffle_i32x4(t[b], t[4 + b], 0x44);       // lanes 0, 1 of t[b]; 0, 1 of t[4 + b]
    u[4 * b + 1] = _mm512_shuffle_i32x4(t[b], t[4 + b], 0xEE);   // lanes 2, 3 of both
    u[4 * b + 2] = _mm512_shuffle_i32x4(t[8 + b], t[12 + b], 0x44);
    u[4 * b + 3] = _mm512_shuffle_i32x4(t[8 + b], t[12 + b], 0xEE);
  }
  for (int b = 0; b < 4; ++b) {
    t[b] = _mm512_shuffle_i32x4(u[4 * b], u[4 * b + 2], 0x88);        // lane 0 of each
    t[4 + b] = _mm512_shuffle_i32x4(u[4 * b], u[4 * b + 2], 0xDD);    // lane 1
    t[8 + b] = _mm512_shuffle_i32x4(u[4 * b + 1], u[4 * b + 3], 0x88);
    t[12 + b] = _mm512_shuffle_i32x4(u[4 * b + 1], u[4 * b + 3], 0xDD);
  }
}

// Per 16 pairs of columns: 16 rows × 2 columns scaled, rounded to bf16 pairs (round_pairs), one 16 × 16
// transpose of 32-bit pairs, one 64-byte store per row. Blocks without residual never touch f.
template <int BITS>
void dequantize_block(const Unit& u, const int32_t* off, const uint16_t* col, const at::Half* val, int64_t row0,
                      const float* rs, float* f, uint16_t* w, int64_t ldw) {
  const bool residual = off[row0] != off[row0 + kRows];
  const __m512i table = lut(BITS == 8 ? 4 : BITS);
  const __m512 r = _mm512_loadu_ps(rs);
  const int64_t pairs = u.K / 2;
  int64_t g = 0, next = u.G / 2;   // the group of pair p, the first pair of the next group (no division per pair)
  auto scaled = [&](int64_t p, __m512& a, __m512& b) {   // S ⊙ Z of columns 2p, 2p + 1; p = 0, 1, … in turn
    split_pairs(decode<BITS>(u.blk + p * BITS * 4, table), a, b);
    if (p == next) {
      ++g;
      next += u.G / 2;
    }
    if (u.sc) {
      const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u.sc + g * kRows)));
      a = _mm512_mul_ps(a, s);
      b = _mm512_mul_ps(b, s);
    }
  };
  if (residual) {
    for (int64_t p = 0; p < pairs; ++p) {
      __m512 a, b;
      scaled(p, a, b);
      _mm512_storeu_ps(f + 2 * p * kRows, a);
      _mm512_storeu_ps(f + (2 * p + 1) * kRows, b);
    }
    add_block_residual(off, col, val, row0, f);
  }
  for (int64_t p0 = 0; p0 < pairs; p0 += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, pairs - p0));
    __m512i t[16];
    for (int q = 0; q < 16; ++q) {
      if (q >= n) {
        t[q] = _mm512_setzero_si512();
        continue;
      }
      __m512 a, b;
      if (residual) {
        a = _mm512_loadu_ps(f + 2 * (p0 + q) * kRows);
        b = _mm512_loadu_ps(f + (2 * (p0 + q) + 1) * kRows);
      } else {
        scaled(p0 + q, a, b);
      }
      t[q] = round_pairs(_mm512_mul_ps(a, r), _mm512_mul_ps(b, r));
    }
    transpose16(t);
    const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1);
    for (int i = 0; i < kRows; ++i) _mm512_mask_storeu_epi32(w + i * ldw + 2 * p0, keep, t[i]);
  }
}

DequantizeFn pick_dequantize(int bits) {
  return bits == 4 ? dequantize_block<4> : bits == 5 ? dequantize_block<5> : dequantize_block<8>;
}

}  // namespace z
#pragma GCC pop_options

// --- validation --------------------------------------------------------------------------------

// The CSR residual of an (N, K) matrix: offsets start at 0, never decrease, end at nnz; columns < K.
void check_csr(const at::Tensor& offsets, const at::Tensor& cols, const at::Tensor& vals, int64_t N, int64_t K) {
  BABAI_CHECK(offsets.dim() == 1 && offsets.numel() == N + 1 && offsets.scalar_type() == at::kInt && offsets.is_contiguous(),
        "residual offsets must be contiguous int32 of size N + 1 = ", N + 1);
  BABAI_CHECK(cols.dim() == 1 && cols.scalar_type() == at::kShort && cols.is_contiguous() && vals.dim() == 1 &&
            vals.scalar_type() == at::kHalf && vals.is_contiguous() && cols.numel() == vals.numel(),
        "residual must be CSR: contiguous uint16 columns (held as int16) and float16 values of one size");
  const int64_t nnz = cols.numel();
  const int32_t* off = offsets.data_ptr<int32_t>();
  BABAI_CHECK(off[0] == 0, "residual offsets[0] must be 0, got ", off[0]);
  bool monotone = true;   // branch-free, so that it vectorizes; the first bad offset is looked up after
  for (int64_t n = 0; n < N; ++n) monotone &= off[n + 1] >= off[n];
  int64_t bad = -1;
  for (int64_t n = 0; n < N && !monotone && bad < 0; ++n)
    if (off[n + 1] < off[n]) bad = n;
  BABAI_CHECK(bad < 0, "residual offsets must not decrease: offsets[", bad + 1, "] = ", off[bad < 0 ? 0 : bad + 1],
              " < offsets[", bad, "]");
  BABAI_CHECK(off[N] == nnz, "residual offsets[N] must equal the number of entries ", nnz, ", got ", off[N]);
  const uint16_t* col = reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>());
  uint16_t top = 0;
  for (int64_t e = 0; e < nnz; ++e) top = std::max(top, col[e]);
  BABAI_CHECK(nnz == 0 || top < K, "residual column ", top, " is out of range for K = ", K);
}

// d[j] = s[p[j]] for j < K: scalar 16-bit copies (no-tree-vectorize: GCC would emit 32-bit gathers, ~1.4x
// slower on Zen 4), for the rows left over by permute_rows8.
__attribute__((optimize("no-tree-vectorize"))) void permute_row(const uint16_t* s, const int32_t* p, int64_t K,
                                                                uint16_t* d) {
  for (int64_t j = 0; j < K; ++j) d[j] = s[p[j]];
}

// r[i] (row i of an 8 × 8 block of 16-bit elements) → r[i] = column i.
inline void transpose8x8_epi16(__m128i r[8]) {
  __m128i a[8], b[8];
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h)   // h = 0: rows 0-3, 1: rows 4-7; b[4h + q] holds columns 2q, 2q + 1
    for (int q = 0; q < 2; ++q) {
      b[4 * h + 2 * q] = _mm_unpacklo_epi32(a[4 * h + q], a[4 * h + q + 2]);
      b[4 * h + 2 * q + 1] = _mm_unpackhi_epi32(a[4 * h + q], a[4 * h + q + 2]);
    }
  for (int q = 0; q < 4; ++q) {
    r[2 * q] = _mm_unpacklo_epi64(b[q], b[4 + q]);
    r[2 * q + 1] = _mm_unpackhi_epi64(b[q], b[4 + q]);
  }
}

// d[i][j] = s[i][p[j]] for 8 rows (row stride K, K a multiple of 8): 8 × 8 transposes put column k of
// the 8 rows in t[k] (t: (K, 8) scratch), then the rows t[p[j]] of 8 stored columns are transposed back:
// ~3x faster than scalar copies (SSQR down_proj 576x1536, M = 1024: the permutation ~9 % → 3 % of the op).
void permute_rows8(const uint16_t* s, int64_t K, const int32_t* p, uint16_t* t, uint16_t* d) {
  __m128i r[8];
  for (int64_t k = 0; k < K; k += 8) {
    for (int i = 0; i < 8; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * K + k));
    transpose8x8_epi16(r);
    for (int c = 0; c < 8; ++c) _mm_storeu_si128(reinterpret_cast<__m128i*>(t + (k + c) * 8), r[c]);
  }
  for (int64_t j = 0; j < K; j += 8) {
    for (int c = 0; c < 8; ++c) r[c] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + p[j + c] * 8));
    transpose8x8_epi16(r);
    for (int i = 0; i < 8; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i * K + j), r[i]);
  }
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
namespace z {

// d[j] = bf16(s[j] · a[j]) for j < K (nearest even), 16 at a time, the last < 16 masked: half the
// instructions of the 8-wide loop (HPTQ's α: ~2–4 % of down_proj 576x1536 at M = 64–256).
void scale_row(const uint16_t* s, const float* a, int64_t K, uint16_t* d) {
  for (int64_t j = 0; j < K; j += 16) {
    const __mmask16 keep = K - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (K - j)) - 1);
    const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(keep, s + j)), 16));
    const __m512 p = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(keep, a + j));
    _mm256_mask_storeu_epi16(d + j, keep, (__m256i)_mm512_cvtneps_pbh(p));
  }
}

}  // namespace z
#pragma GCC pop_options

// xs[m][j] = bf16(x[m][p(j)] · α[p(j)]): x (M, K) contiguous in stored order (p = perm, the identity
// when empty; entries within [0, K), checked by the caller), scaled by col_scale α (K) float32 in
// original order (1 when empty) and rounded once to bfloat16 as runtime.scale_input does; x itself
// when both are empty. wide: the avx512 variant (α 16 at a time).
at::Tensor prepare_x(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& col_scale, bool wide) {
  if (!perm.numel() && !col_scale.numel()) return x;
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor xs = at::empty_like(x);
  const int64_t* pi = perm.numel() ? perm.data_ptr<int64_t>() : nullptr;
  const float* alpha = col_scale.numel() ? col_scale.data_ptr<float>() : nullptr;
  std::vector<float> a(alpha ? K : 0);    // α in stored order
  std::vector<int32_t> p(pi ? K : 0);
  for (int64_t j = 0; j < K; ++j) {
    if (pi) p[j] = static_cast<int32_t>(pi[j]);
    if (alpha) a[j] = alpha[pi ? pi[j] : j];
  }
  const uint16_t* src = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  uint16_t* dst = reinterpret_cast<uint16_t*>(xs.data_ptr<at::BFloat16>());
  at::parallel_for(0, (M + 7) / 8, std::max<int64_t>(1, 2048 / K), [&](int64_t b0, int64_t b1) {
    std::vector<uint16_t> t(pi ? K * 8 : 0);
    for (int64_t m0 = b0 * 8; m0 < std::min(M, b1 * 8); m0 += 8) {   // blocks of 8 rows
      const int64_t rows = std::min<int64_t>(8, M - m0);
      if (pi && rows == 8) permute_rows8(src + m0 * K, K, p.data(), t.data(), dst + m0 * K);
      for (int64_t m = m0; m < m0 + rows; ++m) {
        const uint16_t* s = src + m * K;
        uint16_t* d = dst + m * K;
        if (pi && rows < 8) permute_row(s, p.data(), K, d);
        if (pi) s = d;
        if (!alpha) continue;
        if (wide) {
          z::scale_row(s, a.data(), K, d);
          continue;
        }
        for (int64_t j = 0; j < K; j += 8) {   // K is a multiple of 8
          const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j)));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(d + j),
                           y::to_bf16(_mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), _mm256_loadu_ps(&a[j]))));
        }
      }
    }
  });
  return xs;
}

// --- the op ------------------------------------------------------------------------------------

// Units of the op: runs of NB blocks of one width (a unit never spans two widths); first block of each.
std::vector<int64_t> make_units(const uint8_t* bits, int64_t nb, int NB) {
  std::vector<int64_t> first;
  for (int64_t b = 0; b < nb; b += (NB == 2 && b + 1 < nb && bits[b + 1] == bits[b]) ? 2 : 1) first.push_back(b);
  first.push_back(nb);
  return first;
}

at::Tensor lut_linear(const at::Tensor& x_in, const at::Tensor& packed, const at::Tensor& block_bits,
                      const at::Tensor& scales,
                      int64_t group_size, const at::Tensor& perm, const at::Tensor& col_scale,
                      const at::Tensor& offsets, const at::Tensor& cols,
                      const at::Tensor& vals, const at::Tensor& row_scale, const at::Tensor& bias,
                      const std::string& isa_name, int64_t predecode_from, int64_t dense_from, int64_t act8_from) {
  const Isa isa = resolve_isa(isa_name);
  BABAI_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kBFloat16 && x_in.size(1) > 0, "x must be (M, K) bfloat16, K > 0");
  BABAI_CHECK(block_bits.dim() == 1 && block_bits.scalar_type() == at::kByte && block_bits.is_contiguous(),
        "block_bits must be contiguous uint8 (N/16)");
  const int64_t nb = block_bits.numel(), N = nb * kRows;
  const uint8_t* bits = block_bits.data_ptr<uint8_t>();
  std::vector<int64_t> boff(nb + 1, 0);   // byte offset of each block's codes: 16 rows · K · bits / 8
  const at::Tensor x = x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), G = group_size;
  for (int64_t b = 0; b < nb; ++b) {
    BABAI_CHECK(bits[b] == 4 || bits[b] == 5 || bits[b] == 8, "block_bits must be 4, 5 or 8, block ", b, " has ",
                static_cast<int>(bits[b]));
    boff[b + 1] = boff[b] + 2 * K * bits[b];
  }
  BABAI_CHECK(packed.dim() == 1 && packed.is_contiguous() && packed.numel() == boff[nb] &&
            (packed.scalar_type() == at::kByte || packed.scalar_type() == at::kChar),
        "packed must be contiguous uint8/int8 of 2·K·Σ block_bits bytes and has the wrong size for x's K");
  BABAI_CHECK(G > 0 && G % 8 == 0 && K % G == 0, "group_size must be a positive multiple of 8 dividing K");
  BABAI_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() &&
            (scales.numel() == N * (K / G) || (scales.numel() == 0 && G == K)),
        "scales must be float16 (N/16, K/G, 16) or empty with G = K");
  BABAI_CHECK(K <= 65536, "K must be at most 65536 (residual columns are 16-bit)");
  check_csr(offsets, cols, vals, N, K);
  BABAI_CHECK(perm.numel() == 0 || (perm.dim() == 1 && perm.numel() == K && perm.scalar_type() == at::kLong),
        "perm must be (K) int64 or empty");
  const at::Tensor perm_c = perm.contiguous();
  if (perm.numel()) {   // a loop, not at::aminmax: two torch ops and two .item() cost µs at decode sizes
    const int64_t* pi = perm_c.data_ptr<int64_t>();
    bool inside = true;
    for (int64_t j = 0; j < K; ++j) inside &= pi[j] >= 0 && pi[j] < K;
    BABAI_CHECK(inside, "perm entries must lie in [0, K)");
  }
  BABAI_CHECK(col_scale.numel() == 0 || (col_scale.dim() == 1 && col_scale.numel() == K &&
                                   col_scale.scalar_type() == at::kFloat && col_scale.is_contiguous()),
        "col_scale must be contiguous float32 (K) or empty");
  BABAI_CHECK(row_scale.numel() == 0 || ((row_scale.numel() == N || row_scale.numel() == nb) &&
                                   row_scale.scalar_type() == at::kFloat && row_scale.is_contiguous()),
        "row_scale must be contiguous float32 (N) or (N/16), or empty");
  BABAI_CHECK(bias.numel() == 0 || bias.numel() == N, "bias must be (N) or empty");
  auto out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  // int8 activations from act8_from rows (avx512: q8, VNNI; avx2: y8). avx512's take precedence over the dense
  // path (q8 beats PyTorch's bf16 GEMM at every M); avx2's give way to it from dense_from rows (the GEMM beats
  // y8 at large M: SSQR-w4 M = 1,024 0.90 against 0.76 x vLLM's bf16, kernels/cpu_lut.py ACT8_DENSE_FROM_AVX2).
  const bool act8 = M >= act8_from && (isa == Isa::kAvx512 || M < dense_from);
  BABAI_CHECK(!act8 || isa == Isa::kAvx2 || cpu().avx512vnni, "int8 activations (", M, " rows of x ≥ act8_from ",
              act8_from, ") on the avx512 variant need AVX-512 VNNI, which this CPU lacks");

  const at::Tensor xp = prepare_x(x, perm_c, col_scale, isa == Isa::kAvx512);   // stored order, ⊙ α
  const bool wide = isa == Isa::kAvx512;
  const int NB = wide ? 2 : 1, MBmax = wide ? kMaxMB : y::kMB;
  const int64_t nnz = vals.numel(), sc_block = (K / G) * kRows;
  const int64_t dec_bytes = wide ? K * NB * 32 : K * kRows * 2;
  const int32_t* off = offsets.data_ptr<int32_t>();
  const uint16_t* col = reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>());
  const at::Half* val = vals.data_ptr<at::Half>();
  const float* rs = row_scale.numel() ? row_scale.data_ptr<float>() : nullptr;
  const bool block_scale = row_scale.numel() == nb && nb != N;
  const at::Tensor bias_f = bias.numel() ? bias.reshape({N}).to(at::kFloat).contiguous() : bias;
  const float* bs = bias.numel() ? bias_f.data_ptr<float>() : nullptr;
  const uint8_t* pk = static_cast<const uint8_t*>(packed.data_ptr());
  const at::Half* sc = scales.numel() ? scales.data_ptr<at::Half>() : nullptr;
  uint16_t* yo = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  if (M >= dense_from && !act8) {   // tiles of rows dequantized to bf16 (rows, K), F.linear (PyTorch's bf16 GEMM) on each
    const int64_t tile_blocks = std::max<int64_t>(1, kDenseTileBytes / (2 * K * kRows));
    const at::Tensor bias_b = bias.numel() ? bias.reshape({N}).to(at::kBFloat16) : bias;
    for (int64_t b0 = 0; b0 < nb; b0 += tile_blocks) {
      const int64_t b1 = std::min(nb, b0 + tile_blocks), rows = (b1 - b0) * kRows;
      at::Tensor w = at::empty({rows, K}, x.options());
      uint16_t* wp = reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>());
      at::parallel_for(b0, b1, 1, [&](int64_t c0, int64_t c1) {
        std::vector<float> f(K * kRows);
        float r16[kRows];
        for (int64_t b = c0; b < c1; ++b) {
          for (int j = 0; j < kRows; ++j) r16[j] = rs ? (block_scale ? rs[b] : rs[b * kRows + j]) : 1.0f;
          const Unit unit{pk + boff[b], boff[b + 1] - boff[b], sc ? sc + b * sc_block : nullptr, sc_block, K, G};
          (wide ? z::pick_dequantize(bits[b]) : y::pick_dequantize(bits[b]))(unit, off, col, val, b * kRows, r16,
                                                                           f.data(), wp + (b - b0) * kRows * K, K);
        }
      });
      const at::Tensor yt = at::linear(xp, w, bias.numel() ? std::optional<at::Tensor>(bias_b.narrow(0, b0 * kRows, rows))
                                                        : std::nullopt);
      if (b0 == 0 && b1 == nb) return yt;
      out.narrow(1, b0 * kRows, rows).copy_(yt);
    }
    return out;
  }
  const std::vector<int64_t> first = make_units(bits, nb, NB);
  const int64_t units = static_cast<int64_t>(first.size()) - 1;

  for (int64_t c0 = 0; c0 < M; c0 += kChunkM) {
    const int64_t mc = std::min(kChunkM, M - c0);
    const at::Tensor xc = xp.narrow(0, c0, mc);
    const uint16_t* xcb = reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>());
    // avx512 reads x as bf16 pairs; avx2 as 16-bit fixed point. The residual reads x itself (bf16) or xᵀ
    // (K, ldt) float32, zero-padded.
    // With ≤ 2 rows of x avx512 hosts run 8-bit blocks through avx2's int16 path (y::dots on y::Xq): in
    // serving (vLLM, 1 request, 2026-12-05) HPTQ-4.3 decoded 69.3 tok/s with the avx2 variant forced against
    // 61.2 on avx512 (VDPBF16PS, or avx2's earlier float32 8-bit path at 1–2 rows), same widths.
    const bool narrow8 = wide && mc <= 2 && mc < predecode_from && !act8;
    // avx2, and avx512's 8-bit blocks at 1–2 rows: x in 16-bit fixed point per row (y::Xq)
    const bool fixed = (!wide && !act8) || narrow8;
    const int64_t spans = fixed ? y::spans_of(K, G) : 0;
    std::vector<int16_t> xq(fixed ? mc * K : 0);
    std::vector<float> xs(fixed ? mc : 0);
    std::vector<int32_t> xsum(mc * spans);
    if (fixed) y::quantize(xcb, mc, K, G, xq.data(), xs.data(), xsum.data());
    // int8 activations: x in int8 per row and block of A columns (a8::X8)
    const int64_t ablk = act8 ? a8::block_of(G, col_scale.numel() > 0) : 1, blocks8 = act8 ? K / ablk : 0;
    std::vector<int8_t> x8(act8 ? mc * K : 0);
    std::vector<float> s8(mc * blocks8);
    std::vector<int32_t> sum8(mc * blocks8);
    std::vector<uint32_t> pairs8(mc * blocks8);
    if (act8) a8::quantize(xcb, mc, K, ablk, x8.data(), s8.data(), sum8.data(), pairs8.data());
    const int64_t ldt = (mc + 7) / 8 * 8;
    const bool sparse = mc * nnz <= kSparseRatio * N;   // residual: entry by entry into the tile, or per row over xᵀ
    at::Tensor xt;
    if (nnz && !sparse) {
      xt = at::empty({K, ldt}, xc.options().dtype(at::kFloat));
      transpose_x(xcb, mc, K, ldt, xt.data_ptr<float>());
    }
    const float* xtp = xt.defined() ? xt.data_ptr<float>() : nullptr;
    const bool dec = mc >= predecode_from || act8;   // act8: always its own decoded layout
    const StoreFn store = wide ? z::store : y::store;
    const int64_t y8_passes = (mc + y8::kMB - 1) / y8::kMB;   // y8: passes of equal size (16 rows: 4 × 4, not 5, 5, 5, 1)
    const int y8_pass = static_cast<int>((mc + y8_passes - 1) / y8_passes);

    at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
      alignas(64) float tile[kMaxMB * kTile];
      alignas(64) float s[kTile], c[kTile];
      std::vector<uint8_t> buf(dec ? dec_bytes + 64 : 0);
      std::vector<float> res(nnz && !sparse ? kTile * ldt + 8 : 0);
      void* dbuf = dec ? buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64 : nullptr;
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t b = first[u];
        const int nbk = static_cast<int>(first[u + 1] - b), rows = nbk * kRows, w = bits[b];
        const Unit unit{pk + boff[b], boff[b + 1] - boff[b], sc ? sc + b * sc_block : nullptr, sc_block, K, G};
        if (act8) (wide ? (nbk == 2 ? q8::pick_decode<2>(w) : q8::pick_decode<1>(w)) : y8::pick_decode(w))(unit, dbuf);
        else if (dec) (wide ? (nbk == 2 ? z::pick_decode<2>(w) : z::pick_decode<1>(w)) : y::pick_decode(w))(unit, dbuf);
        if (nnz && !sparse) residual_rows(off, col, val, b * kRows, rows, xtp, ldt, res.data());
        for (int j = 0; j < rows; ++j) {
          const int64_t row = b * kRows + j;
          s[j] = rs ? (block_scale ? rs[row / kRows] : rs[row]) : 1.0f;
          c[j] = bs ? bs[row] : 0.0f;
        }
        const int pass = act8 ? (wide ? q8::kMB : y8_pass) : wide && dec && sc ? kMaxMBGroups : MBmax;
        for (int64_t m0 = 0; m0 < mc; m0 += pass) {
          const int mb = static_cast<int>(std::min<int64_t>(pass, mc - m0));
          const DotsFn f = act8 ? (!wide ? y8::pick_dots(w, mb) : nbk == 2 ? q8::pick_dots<2>(w, mb) : q8::pick_dots<1>(w, mb))
                           : wide ? (nbk == 2 ? z::pick_dots<2>(w, mb, dec) : z::pick_dots<1>(w, mb, dec))
                                  : y::pick_dots(w, mb, dec);
          const y::Xq xm{xq.data() + m0 * K, xs.data() + m0, xsum.data() + m0 * spans, spans};
          const a8::X8 xm8{x8.data() + m0 * K, s8.data() + m0 * blocks8, sum8.data() + m0 * blocks8,
                           pairs8.data() + m0 * blocks8, ablk, blocks8};
          if (act8) {
            f(unit, dbuf, &xm8, tile);
          } else if (narrow8 && w == 8) {
            for (int j = 0; j < nbk; ++j) {   // one block of 16 rows at a time, into its columns of the tile
              const Unit block{unit.blk + j * unit.blk_bytes, unit.blk_bytes, unit.sc ? unit.sc + j * sc_block : nullptr,
                               sc_block, K, G};
              y::pick_dots(8, mb, false)(block, nullptr, &xm, tile + j * kRows);
            }
          } else {
            f(unit, dbuf, wide ? static_cast<const void*>(xcb + m0 * K) : &xm, tile);
          }
          if (nnz && sparse) add_residual_sparse(off, col, val, b * kRows, rows, xcb + m0 * K, K, mb, tile);
          if (nnz && !sparse) add_residual(res.data(), rows, ldt, m0, mb, tile);
          store(tile, mb, rows, s, c, yo + (c0 + m0) * N + b * kRows, N);
        }
      }
    });
  }
  return out;
}

std::string best_isa() { return has_avx512() ? "avx512" : has_avx2() ? "avx2" : "none"; }

}  // namespace

TORCH_LIBRARY(babai_cpu, m) {
  m.def("lut_linear(Tensor x, Tensor packed, Tensor block_bits, Tensor scales, int group_size, Tensor perm, "
        "Tensor col_scale, Tensor offsets, Tensor cols, Tensor vals, Tensor row_scale, Tensor bias, str isa='auto', "
        "int predecode_from=32, int dense_from=9223372036854775807, int act8_from=9223372036854775807) -> Tensor");
  m.def("cpu_features() -> str[]", &cpu_features);
  m.def("best_isa() -> str", &best_isa);
}

TORCH_LIBRARY_IMPL(babai_cpu, CPU, m) { m.impl("lut_linear", &lut_linear); }
