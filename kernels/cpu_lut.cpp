// babai_cpu::lut_linear — the runtime layout (kernels/runtime.py) on an AVX-512 CPU in one op:
//
//   y = ((x[:, perm] @ (S ⊙ Z + R)ᵀ) · row_scale + bias)   x (M, K) bfloat16 → y (M, N) bfloat16
//
// Dense codes Z are repacked at load (kernels/cpu_lut.py) in blocks of 16 output rows and pairs of
// input columns, the operand order of VDPBF16PS (lane i of a zmm = row i, columns k and k+1):
//   bits 4: packed (N/16, K/2, 16) uint8; byte i of pair p = u[i, 2p] | u[i, 2p+1] << 4, u = z + 8;
//   bits 5: packed (N/16, K/2, 20) uint8; bytes 0..15 the low nibbles as for 4 bits (u = z + 16),
//           bytes 16..19 a 32-bit mask whose bit 2i + c is bit 4 of u[i, 2p + c];
//   bits 8: packed (N/16, K/2, 32) int8; bytes 2i, 2i+1 of pair p = z[i, 2p], z[i, 2p+1].
// S: scales (N/16, K/G, 16) float16, or empty for all ones (then G = K); R: CSR (offsets (N+1) int32,
// cols (nnz) uint16 in stored order, vals (nnz) float16); perm (K) int64 or empty; row_scale (N) or
// (N/16) float32 — one per row or one per block of 16 rows — or empty; bias (N) or empty.
//
// Each block of 16 rows turns 32 codes into exact bfloat16 values in registers (4/5 bits: a 16/32-
// entry lookup table through VPERMW, 4/6 instructions per 32 weights; 8 bits: int → float → bf16) and
// multiplies them with up to 8 rows of x at once (VDPBF16PS: products exact, float32 sums); per
// group the partial sums are scaled once. Then R is added row by row (CSR), row scale and bias
// applied, and the result rounded once to bfloat16.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#define BABAI_LUT 1
#include <immintrin.h>
#endif

namespace {

constexpr int kRows = 16;      // output rows per block (one zmm of float32)
constexpr int kMaxMB = 8;      // activation rows fed per pass (8 accumulators + 8 group partials)

bool supported() {
#ifdef BABAI_LUT
  return true;
#else
  return false;
#endif
}

#ifdef BABAI_LUT
// 32 codes (16 rows × columns 2p, 2p+1) as bfloat16 pairs, from the block's byte stream.
struct Codes {
  __m512i lut;      // bf16 bits of u - 2^(BITS-1), u in [0, 2^BITS), in 16-bit slots (BITS 4 or 5)
  __m512i nibbles = _mm512_set1_epi32(0x000F000F), sixteen = _mm512_set1_epi16(16);

  explicit Codes(int bits) {
    alignas(64) uint16_t t[32] = {};
    for (int u = 0; u < (1 << bits) && bits <= 5; ++u) t[u] = c10::BFloat16(static_cast<float>(u - (1 << (bits - 1)))).x;
    lut = _mm512_load_si512(t);
  }

  inline __m512i nibble_index(const uint8_t* p) const {   // 16 bytes → 32 indices in [0, 16)
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_and_si512(_mm512_or_si512(v, _mm512_slli_epi32(v, 12)), nibbles);
  }

  inline __m512i pair4(const uint8_t* p) const { return _mm512_permutexvar_epi16(nibble_index(p), lut); }

  inline __m512i pair5(const uint8_t* p) const {   // 20 bytes
    const __mmask32 high = *reinterpret_cast<const uint32_t*>(p + 16);
    const __m512i idx = nibble_index(p);
    return _mm512_permutexvar_epi16(_mm512_mask_add_epi16(idx, high, idx, sixteen), lut);
  }

  inline __m512i pair8(const int8_t* p) const {    // 32 bytes
    __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);   // elements 0..15 from lo (rows 0-7), 16..31 from hi
  }
};

// tile[m][r] = Σ_g S[g][r] Σ_{k in g} Z[r][k] · x[m0 + m][k] for one block and MB rows of x.
// U independent partial sums per row of x (column pairs taken round-robin) hide VDPBF16PS latency
// when MB is small; G must be a multiple of 2U.
template <int BITS, int MB>
void block_gemm(const uint8_t* blk, const at::Half* sc, const uint16_t* x, int64_t K, int64_t m0, int64_t G,
                float* tile) {
  constexpr int U = MB >= 4 ? 1 : 4 / MB;
  constexpr int64_t kPairBytes = BITS * 4;   // 32 codes of BITS bits
  const Codes codes(BITS);
  __m512 acc[MB], part[U][MB];
  const uint16_t* xr[MB];
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps(), xr[m] = x + (m0 + m) * K;
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < MB; ++m) part[u][m] = _mm512_setzero_ps();
    for (int64_t k0 = g0; k0 < g0 + G; k0 += 2 * U) {
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + 2 * u;
        const uint8_t* p = blk + k / 2 * kPairBytes;
        __m512i w = BITS == 4 ? codes.pair4(p) : BITS == 5 ? codes.pair5(p) : codes.pair8(reinterpret_cast<const int8_t*>(p));
        for (int m = 0; m < MB; ++m) {
          __m512i xk = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(xr[m] + k));
          part[u][m] = _mm512_dpbf16_ps(part[u][m], (__m512bh)w, (__m512bh)xk);
        }
      }
    }
    __m512 s = sc ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + (g0 / G) * kRows)))
                  : _mm512_set1_ps(1.0f);
    for (int m = 0; m < MB; ++m) {
      __m512 p = part[0][m];
      for (int u = 1; u < U; ++u) p = _mm512_add_ps(p, part[u][m]);
      acc[m] = _mm512_fmadd_ps(p, s, acc[m]);
    }
  }
  for (int m = 0; m < MB; ++m) _mm512_storeu_ps(tile + m * kRows, acc[m]);
}

using BlockFn = void (*)(const uint8_t*, const at::Half*, const uint16_t*, int64_t, int64_t, int64_t, float*);
template <int BITS>
constexpr BlockFn kBlock[kMaxMB + 1] = {nullptr, block_gemm<BITS, 1>, block_gemm<BITS, 2>, block_gemm<BITS, 3>,
                                        block_gemm<BITS, 4>, block_gemm<BITS, 5>, block_gemm<BITS, 6>,
                                        block_gemm<BITS, 7>, block_gemm<BITS, 8>};
#endif

void check(bool ok, const std::string& what) { TORCH_CHECK(ok, "babai_cpu::lut_linear: ", what); }

at::Tensor lut_linear(const at::Tensor& x, const at::Tensor& packed, int64_t bits, const at::Tensor& scales,
                      int64_t group_size, const at::Tensor& perm, const at::Tensor& offsets, const at::Tensor& cols,
                      const at::Tensor& vals, const at::Tensor& row_scale, const at::Tensor& bias) {
  check(supported(), "this build has no AVX-512 BF16 (compiled for a CPU without it)");
  check(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "x must be (M, K) bfloat16");
  check(bits == 4 || bits == 5 || bits == 8, "bits must be 4, 5 or 8");
  const int64_t M = x.size(0), K = x.size(1), nb = packed.size(0), N = nb * kRows, G = group_size;
  check(packed.is_contiguous() && packed.numel() * 8 == N * K * bits, "packed has the wrong size for x's K");
  check(G % 8 == 0 && K % G == 0 && (scales.numel() == N * (K / G) || (scales.numel() == 0 && G == K)) &&
            scales.scalar_type() == at::kHalf && scales.is_contiguous(),
        "scales must be float16 (N/16, K/G, 16) or empty with G = K, G a multiple of 8 dividing K");
  check(offsets.numel() == N + 1 && offsets.scalar_type() == at::kInt && cols.scalar_type() == at::kShort &&
            vals.scalar_type() == at::kHalf && cols.numel() == vals.numel() && K <= 65536,
        "residual must be CSR int32 offsets, uint16 columns (as int16), float16 values");
  check(perm.numel() == 0 || (perm.numel() == K && perm.scalar_type() == at::kLong), "perm must be (K) int64 or empty");
  check(row_scale.numel() == 0 || ((row_scale.numel() == N || row_scale.numel() == nb) &&
                                     row_scale.scalar_type() == at::kFloat),
        "row_scale must be (N) or (N/16) float32, or empty");
  const bool block_scale = row_scale.numel() == nb;
  check(bias.numel() == 0 || bias.numel() == N, "bias must be (N) or empty");
  auto out = at::empty({M, N}, x.options());
  if (M == 0) return out;

  const at::Tensor xp = (perm.numel() ? x.index_select(1, perm) : x).contiguous();   // stored order
  const uint16_t* xb = reinterpret_cast<const uint16_t*>(xp.data_ptr<at::BFloat16>());
  const int32_t* off = offsets.data_ptr<int32_t>();
  const uint16_t* col = reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>());
  const uint16_t* val = reinterpret_cast<const uint16_t*>(vals.data_ptr<at::Half>());
  const float* rs = row_scale.numel() ? row_scale.data_ptr<float>() : nullptr;
  const at::Tensor bias_f = bias.numel() ? bias.to(at::kFloat).contiguous() : bias;
  const float* bs = bias.numel() ? bias_f.data_ptr<float>() : nullptr;
  const uint8_t* pk = static_cast<const uint8_t*>(packed.data_ptr());
  const at::Half* sc = scales.numel() ? scales.data_ptr<at::Half>() : nullptr;
  const int64_t blk_bytes = kRows * K * bits / 8, sc_block = (K / G) * kRows;
  uint16_t* y = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  // xᵀ in float32 (K, M) for the residual: the rows of x a residual entry needs sit side by side.
  std::vector<float> xt(vals.numel() ? K * M + kMaxMB : 0);   // + tail for masked loads
  for (int64_t m = 0; m < M && vals.numel(); ++m)
    for (int64_t k = 0; k < K; ++k) xt[k * M + m] = c10::detail::f32_from_bits(xb[m * K + k]);

  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    alignas(64) float tile[kMaxMB * kRows];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t m0 = 0; m0 < M; m0 += kMaxMB) {
        const int64_t mb = std::min<int64_t>(kMaxMB, M - m0);
#ifdef BABAI_LUT
        (bits == 4 ? kBlock<4> : bits == 5 ? kBlock<5> : kBlock<8>)[mb](pk + b * blk_bytes, sc ? sc + b * sc_block : nullptr, xb, K, m0, G, tile);
        if (!xt.empty()) {  // tile[m][r] += Σ_e val[e] · x[m0 + m][col[e]] over row r's entries
          alignas(64) float res[kRows * kMaxMB];
          const __mmask8 lanes = static_cast<__mmask8>((1u << mb) - 1);
          for (int r = 0; r < kRows; ++r) {
            __m256 a = _mm256_setzero_ps();
            for (int32_t e = off[b * kRows + r]; e < off[b * kRows + r + 1]; ++e)
              a = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(val[e])),
                                  _mm256_maskz_loadu_ps(lanes, xt.data() + static_cast<int64_t>(col[e]) * M + m0), a);
            _mm256_store_ps(res + r * kMaxMB, a);
          }
          const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                  _mm512_set1_epi32(kMaxMB));
          for (int64_t m = 0; m < mb; ++m)
            _mm512_store_ps(tile + m * kRows, _mm512_add_ps(_mm512_load_ps(tile + m * kRows),
                                                            _mm512_i32gather_ps(rows, res + m, 4)));
        }
        const __m512 s = !rs ? _mm512_set1_ps(1.0f) : block_scale ? _mm512_set1_ps(rs[b]) : _mm512_loadu_ps(rs + b * kRows);
        const __m512 c = bs ? _mm512_loadu_ps(bs + b * kRows) : _mm512_setzero_ps();
        for (int64_t m = 0; m < mb; ++m) {
          const __m512 v = _mm512_fmadd_ps(_mm512_load_ps(tile + m * kRows), s, c);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + (m0 + m) * N + b * kRows), (__m256i)_mm512_cvtneps_pbh(v));
        }
#endif
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(babai_cpu, m) {
  m.def("lut_linear(Tensor x, Tensor packed, int bits, Tensor scales, int group_size, Tensor perm, "
        "Tensor offsets, Tensor cols, Tensor vals, Tensor row_scale, Tensor bias) -> Tensor");
  m.def("supported() -> bool", &supported);
}

TORCH_LIBRARY_IMPL(babai_cpu, CPU, m) { m.impl("lut_linear", &lut_linear); }
