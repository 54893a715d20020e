// GGUF block products on the CPU: y = x @ W.T (+ b) with W kept in the file's own Q8_0 or Q4_1
// blocks and x quantised on the fly, per row, in blocks of 32 inputs (llama.cpp's Q8_0/Q8_1
// activations), int8 products summed exactly in int32 per block:
//
//     per row m and block j of 32 inputs (what llama.cpp's quantize_row_q8_1 computes):
//       d = max |x| / 127    xq = round_half_even(x / d)    dx = fp16(d)    sx = fp16(d * sum xq)
//     weights, per channel n and block j, as stored in the file:
//       Q8_0  w = dw * q,        q int8,  dw fp16
//       Q4_1  w = dw * q + mw,   q 0..15, dw and mw fp16
//     idot[m, n, j] = sum_{k in j} q[n, k] * xq[m, k]                        (int32, exact)
//     y[m, n] = over j, fma-accumulated:  float(idot) * (dw * dx)   (+ mw * sx for Q4_1)
//
// A row's result depends on that row alone (its own blocks, the same float sequence for any M):
// bitwise the same alone or inside any batch.
//
// Packed weight (once at load, kernels/gguf_gemm.py): output channels in blocks of 16; for each
// (channel block, input block) one run of bytes, read front to back:
//
//     Q8_0  [dw fp16 x16 | 32 zero bytes | codes 8 quads x 16 channels x 4 inputs, u8 = q + 128]
//                                                                                     576 bytes
//     Q4_1  [dw fp16 x16 | mw fp16 x16 | codes 4 x 16 channels x 4 bytes]             320 bytes
//
// A Q8_0 quad t holds inputs 4t..4t+3 of the 16 channels side by side: one 64-byte load is what
// vpdpbusd multiplies by the broadcast xq[4t..4t+3], adding into 16 int32 lanes (one per
// channel). The +128 (vpdpbusd's first operand is unsigned) is taken off exactly per block:
// sum (q + 128) xq = idot + 128 * sum xq. A Q4_1 64-byte group h holds inputs 4h..4h+3 in its
// low nibbles and 16+4h..16+4h+3 in its high ones: one load, an and and a shift give two
// vpdpbusd operands, codes already unsigned.
//
// Paths (int_gemm_common.h), each the same int32 block sums and float sequence per channel, so bitwise
// the same y:
//   avx512_vnni  zmm vpdpbusd, up to 4 rows x 32 channels per tile (weights loaded once a tile)
//   avx_vnni     ymm vpdpbusd, 1 row x 32 channels
//   avx2         vpmaddubsw + vpmaddwd, 1 row x 32 channels
//   scalar       plain loops (any CPU; the tests' reference)
//
// Layout: x [M, K] float32/bfloat16/float16 contiguous, K a multiple of 32; packed uint8
// [Np / 16, K / 32, 576 or 320] with Np a multiple of 32 (zero blocks past N); bias float32 [N] or
// undefined. Returns y [M, N] in x's dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "int_gemm_common.h"

namespace {

using namespace vibe_isa;

constexpr int64_t QK = 32;  // inputs per block (weights and activations)
constexpr int64_t CB = 16;  // channels per packed block
constexpr int64_t NT = kTileChannels;  // channels per tile (2 blocks); Np must be a multiple
constexpr int64_t MR = kTileRowsMax;   // most activation rows per tile

enum Format : int64_t { kQ8_0 = 0, kQ4_1 = 1 };

// Both a multiple of 64, so that every 64-byte load of codes sits in one cache line (Q8_0's
// 34 bytes a block in the file become 36 here: split loads cost Q8_0 half its speed at 32 rows).
constexpr int64_t block_bytes(int64_t fmt) { return fmt == kQ8_0 ? 64 + 512 : 64 + 256; }

// One tile's rows of quantised activations: xq rows K apart; per (row, block) dx, sx and
// 128 * sum(xq), Kb = K / 32 apart.
struct Rows {
  const int8_t* xq;
  const float* dx;
  const float* sx;
  const int32_t* sum128;
  int64_t Kb;
};

// out[i * NT + c] = row i's accumulated sum for channel c of the tile. w: the tile's first
// channel block; the second is Kb * block_bytes further.
using TileFn = void (*)(const Rows& rows, int64_t mr, const uint8_t* w, float* out);

inline float half_at(const uint8_t* p, int64_t i) {
  uint16_t bits;
  std::memcpy(&bits, p + 2 * i, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

template <int64_t FMT>
void tile_scalar(const Rows& rows, int64_t mr, const uint8_t* w, float* out) {
  constexpr int64_t BB = block_bytes(FMT);
  const int64_t Kb = rows.Kb;
  for (int64_t i = 0; i < mr; ++i) {
    const int8_t* xq = rows.xq + i * Kb * QK;
    for (int64_t c = 0; c < NT; ++c) {
      const uint8_t* chan = w + (c / CB) * Kb * BB;
      const int64_t cc = c % CB;
      float acc = 0.f;
      for (int64_t j = 0; j < Kb; ++j) {
        const uint8_t* blk = chan + j * BB;
        const int8_t* x = xq + j * QK;
        int32_t idot = 0;
        if (FMT == kQ8_0) {
          for (int64_t k = 0; k < QK; ++k) idot += int32_t(blk[64 + (k / 4) * 64 + cc * 4 + k % 4]) * x[k];
          idot -= rows.sum128[i * Kb + j];
        } else {
          for (int64_t k = 0; k < QK; ++k) {
            const uint8_t byte = blk[64 + ((k % 16) / 4) * 64 + cc * 4 + k % 4];
            idot += int32_t(k < 16 ? byte & 0x0F : byte >> 4) * x[k];
          }
        }
        const float dx = rows.dx[i * Kb + j];
        acc = std::fma(float(idot), half_at(blk, cc) * dx, acc);
        if (FMT == kQ4_1) acc = std::fma(half_at(blk + 32, cc), rows.sx[i * Kb + j], acc);
      }
      out[i * NT + c] = acc;
    }
  }
}

#ifdef VIBE_X86
#define VIBE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vnni")))

template <int64_t R>
VIBE_AVX512 inline void accumulate512(const Rows& rows, int64_t j, const uint8_t* const blk[2],
                                      __m512i (&d)[R][2], __m512 (&acc)[R][2], bool q4_1) {
  const int64_t Kb = rows.Kb;
  __m512 dw[2], mw[2];
  for (int64_t h = 0; h < 2; ++h) {
    dw[h] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[h])));
    if (q4_1) mw[h] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[h] + 32)));
  }
  for (int64_t i = 0; i < R; ++i) {
    const __m512 dx = _mm512_set1_ps(rows.dx[i * Kb + j]);
    const __m512i c = q4_1 ? _mm512_setzero_si512() : _mm512_set1_epi32(rows.sum128[i * Kb + j]);
    for (int64_t h = 0; h < 2; ++h) {
      const __m512 idot = _mm512_cvtepi32_ps(_mm512_sub_epi32(d[i][h], c));
      acc[i][h] = _mm512_fmadd_ps(idot, _mm512_mul_ps(dw[h], dx), acc[i][h]);
      if (q4_1) acc[i][h] = _mm512_fmadd_ps(mw[h], _mm512_set1_ps(rows.sx[i * Kb + j]), acc[i][h]);
    }
  }
}

inline int32_t quad_at(const int8_t* p) {
  int32_t q;
  std::memcpy(&q, p, 4);
  return q;
}

// Q8_0, R rows x 32 channels. Two chains per accumulator (even and odd quads) keep one-row
// tiles from waiting on vpdpbusd's latency; integer sums, so the split changes no bit.
template <int64_t R>
VIBE_AVX512 void tile_q8_0_avx512_rows(const Rows& rows, const uint8_t* w, float* out) {
  constexpr int64_t BB = block_bytes(kQ8_0);
  const int64_t Kb = rows.Kb;
  __m512 acc[R][2];
  for (int64_t i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t j = 0; j < Kb; ++j) {
    const uint8_t* const blk[2] = {w + j * BB, w + (Kb + j) * BB};
    __m512i e[R][2][2];
    for (int64_t i = 0; i < R; ++i)
      for (int64_t h = 0; h < 2; ++h) e[i][h][0] = e[i][h][1] = _mm512_setzero_si512();
    for (int64_t t = 0; t < 8; t += 2) {
      for (int64_t c = 0; c < 2; ++c) {  // chain c: quad t + c (a constant index once unrolled)
        const __m512i wa = _mm512_loadu_si512(blk[0] + 64 + (t + c) * 64);
        const __m512i wb = _mm512_loadu_si512(blk[1] + 64 + (t + c) * 64);
        for (int64_t i = 0; i < R; ++i) {
          const __m512i xb = _mm512_set1_epi32(quad_at(rows.xq + (i * Kb + j) * QK + 4 * (t + c)));
          e[i][0][c] = _mm512_dpbusd_epi32(e[i][0][c], wa, xb);
          e[i][1][c] = _mm512_dpbusd_epi32(e[i][1][c], wb, xb);
        }
      }
    }
    __m512i d[R][2];
    for (int64_t i = 0; i < R; ++i)
      for (int64_t h = 0; h < 2; ++h) d[i][h] = _mm512_add_epi32(e[i][h][0], e[i][h][1]);
    accumulate512<R>(rows, j, blk, d, acc, false);
  }
  for (int64_t i = 0; i < R; ++i)
    for (int64_t h = 0; h < 2; ++h) _mm512_storeu_ps(out + i * NT + h * CB, acc[i][h]);
}

// Q4_1, R rows x 32 channels: low and high nibbles are the two chains.
template <int64_t R>
VIBE_AVX512 void tile_q4_1_avx512_rows(const Rows& rows, const uint8_t* w, float* out) {
  constexpr int64_t BB = block_bytes(kQ4_1);
  const int64_t Kb = rows.Kb;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[R][2];
  for (int64_t i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t j = 0; j < Kb; ++j) {
    const uint8_t* const blk[2] = {w + j * BB, w + (Kb + j) * BB};
    __m512i e[R][2][2];
    for (int64_t i = 0; i < R; ++i)
      for (int64_t h = 0; h < 2; ++h) e[i][h][0] = e[i][h][1] = _mm512_setzero_si512();
    for (int64_t g = 0; g < 4; ++g) {
      __m512i lo[2], hi[2];
      for (int64_t h = 0; h < 2; ++h) {
        const __m512i raw = _mm512_loadu_si512(blk[h] + 64 + g * 64);
        lo[h] = _mm512_and_si512(raw, low);
        hi[h] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
      }
      for (int64_t i = 0; i < R; ++i) {
        const int8_t* x = rows.xq + (i * Kb + j) * QK;
        const __m512i xl = _mm512_set1_epi32(quad_at(x + 4 * g));
        const __m512i xh = _mm512_set1_epi32(quad_at(x + 16 + 4 * g));
        for (int64_t h = 0; h < 2; ++h) {
          e[i][h][0] = _mm512_dpbusd_epi32(e[i][h][0], lo[h], xl);
          e[i][h][1] = _mm512_dpbusd_epi32(e[i][h][1], hi[h], xh);
        }
      }
    }
    __m512i d[R][2];
    for (int64_t i = 0; i < R; ++i)
      for (int64_t h = 0; h < 2; ++h) d[i][h] = _mm512_add_epi32(e[i][h][0], e[i][h][1]);
    accumulate512<R>(rows, j, blk, d, acc, true);
  }
  for (int64_t i = 0; i < R; ++i)
    for (int64_t h = 0; h < 2; ++h) _mm512_storeu_ps(out + i * NT + h * CB, acc[i][h]);
}

template <int64_t FMT>
VIBE_AVX512 void tile_avx512(const Rows& rows, int64_t mr, const uint8_t* w, float* out) {
  // The row count is a template argument: the accumulators stay in registers.
#define VIBE_ROWS(R)                                      \
  (FMT == kQ8_0 ? tile_q8_0_avx512_rows<R>(rows, w, out) \
                : tile_q4_1_avx512_rows<R>(rows, w, out))
  switch (mr) {
    case 1: VIBE_ROWS(1); break;
    case 2: VIBE_ROWS(2); break;
    case 3: VIBE_ROWS(3); break;
    default: VIBE_ROWS(4); break;
  }
#undef VIBE_ROWS
}

// The 256-bit paths: one row, 32 channels = 4 ymm of 8 (channel block v / 2, half v % 2).
// DOT8 adds Q8_0's u8 (q + 128) products, DOT4 the 4-bit codes' (which vpmaddubsw cannot
// saturate, so AVX2 takes its short form).
#define VIBE_TILE256(NAME, TARGET, DOT8, DOT4)                                                  \
  template <int64_t FMT>                                                                        \
  TARGET void NAME(const Rows& rows, int64_t, const uint8_t* w, float* out) {                   \
    constexpr int64_t BB = block_bytes(FMT);                                                    \
    const int64_t Kb = rows.Kb;                                                                 \
    const __m256i low = _mm256_set1_epi8(0x0F);                                                 \
    __m256 acc[4];                                                                              \
    for (auto& a : acc) a = _mm256_setzero_ps();                                                \
    for (int64_t j = 0; j < Kb; ++j) {                                                          \
      const uint8_t* blk[2] = {w + j * BB, w + (Kb + j) * BB};                                  \
      const int8_t* x = rows.xq + j * QK;                                                       \
      __m256i d[4];                                                                             \
      for (auto& v : d) v = _mm256_setzero_si256();                                             \
      if (FMT == kQ8_0) {                                                                       \
        for (int64_t t = 0; t < 8; ++t) {                                                       \
          const __m256i xb = _mm256_set1_epi32(quad_at(x + 4 * t));                             \
          for (int64_t v = 0; v < 4; ++v)                                                       \
            d[v] = DOT8(d[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(              \
                                  blk[v / 2] + 64 + t * 64 + (v % 2) * 32)),                    \
                        xb);                                                                    \
        }                                                                                       \
      } else {                                                                                  \
        for (int64_t g = 0; g < 4; ++g) {                                                       \
          const __m256i xl = _mm256_set1_epi32(quad_at(x + 4 * g));                             \
          const __m256i xh = _mm256_set1_epi32(quad_at(x + 16 + 4 * g));                        \
          for (int64_t v = 0; v < 4; ++v) {                                                     \
            const __m256i raw = _mm256_loadu_si256(                                             \
                reinterpret_cast<const __m256i*>(blk[v / 2] + 64 + g * 64 + (v % 2) * 32));     \
            d[v] = DOT4(d[v], _mm256_and_si256(raw, low), xl);                                  \
            d[v] = DOT4(d[v], _mm256_and_si256(_mm256_srli_epi16(raw, 4), low), xh);            \
          }                                                                                     \
        }                                                                                       \
      }                                                                                         \
      const __m256 dx = _mm256_set1_ps(rows.dx[j]);                                             \
      const __m256i c = _mm256_set1_epi32(FMT == kQ8_0 ? rows.sum128[j] : 0);                   \
      for (int64_t v = 0; v < 4; ++v) {                                                         \
        const uint8_t* head = blk[v / 2] + (v % 2) * 16;                                        \
        const __m256 dw =                                                                       \
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(head)));           \
        const __m256 idot = _mm256_cvtepi32_ps(_mm256_sub_epi32(d[v], c));                      \
        acc[v] = _mm256_fmadd_ps(idot, _mm256_mul_ps(dw, dx), acc[v]);                          \
        if (FMT == kQ4_1) {                                                                     \
          const __m256 mw =                                                                     \
              _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(head + 32)));    \
          acc[v] = _mm256_fmadd_ps(mw, _mm256_set1_ps(rows.sx[j]), acc[v]);                     \
        }                                                                                       \
      }                                                                                         \
    }                                                                                           \
    for (int64_t v = 0; v < 4; ++v) _mm256_storeu_ps(out + v * 8, acc[v]);                      \
  }

VIBE_TILE256(tile_avxvnni, __attribute__((target("avx2,fma,f16c,avxvnni"))), dot_avxvnni,
             dot_avxvnni)
VIBE_TILE256(tile_avx2, __attribute__((target("avx2,fma,f16c"))), dot_avx2, dot_avx2_u4)
#undef VIBE_TILE256
#undef VIBE_AVX512

#endif  // VIBE_X86

template <int64_t FMT>
TileFn tile_for(int64_t isa) {
#ifdef VIBE_X86
  switch (isa) {
    case kAvx2: return tile_avx2<FMT>;
    case kAvxVnni: return tile_avxvnni<FMT>;
    case kAvx512Vnni: return tile_avx512<FMT>;
    default: return tile_scalar<FMT>;
  }
#else
  (void)isa;
  return tile_scalar<FMT>;
#endif
}

int64_t rows_per_tile(int64_t isa) { return isa == kAvx512Vnni ? MR : 1; }

// x [M, K] -> xq [M, K] int8, dx and sx [M, K / 32] float32 (fp16-rounded, as
// llama.cpp stores them), sum128 [M, K / 32] int32 = 128 * sum(xq). An all-zero block: zeros,
// d = 0.
template <typename T>
void quantize_rows(const at::Tensor& x, int8_t* dst, float* dxp, float* sxp, int32_t* sums) {
  const int64_t M = x.size(0), K = x.size(1), Kb = K / QK;
  const T* src = x.data_ptr<T>();
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: (v + kRound) - kRound rounds half to even
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t j = 0; j < Kb; ++j) {
        const T* in = src + m * K + j * QK;
        int8_t* q = dst + m * K + j * QK;
        float amax = 0.f;
        for (int64_t k = 0; k < QK; ++k) amax = std::max(amax, std::fabs(static_cast<float>(in[k])));
        const float d = amax / 127.f;
        const float inv = d > 0.f ? 1.f / d : 0.f;
        int32_t sum = 0;
        for (int64_t k = 0; k < QK; ++k) {
          const float v = std::min(127.f, std::max(-127.f, static_cast<float>(in[k]) * inv));
          q[k] = static_cast<int8_t>((v + kRound) - kRound);
          sum += q[k];
        }
        dxp[m * Kb + j] = static_cast<float>(c10::Half(d));
        sxp[m * Kb + j] = static_cast<float>(c10::Half(d * static_cast<float>(sum)));
        sums[m * Kb + j] = 128 * sum;
      }
    }
  });
}

template <typename T>
void gemm(const Rows& all, int64_t M, const uint8_t* w, int64_t N, int64_t fmt, const float* bias,
          int64_t isa, T* out) {
  const int64_t Kb = all.Kb, K = Kb * QK;
  const TileFn tile = fmt == kQ8_0 ? tile_for<kQ8_0>(isa) : tile_for<kQ4_1>(isa);
  const int64_t tile_bytes = 2 * Kb * block_bytes(fmt);
  for_each_tile(
      M, N, K, rows_per_tile(isa), out,
      [&](int64_t t, int64_t m0, int64_t mr, float* acc) {
        const Rows rows{all.xq + m0 * K, all.dx + m0 * Kb, all.sx + m0 * Kb,
                        all.sum128 + m0 * Kb, Kb};
        tile(rows, mr, w + t * tile_bytes, acc);
      },
      [&](float v, int64_t n) { return bias != nullptr ? v + bias[n] : v; });
}

at::Tensor gguf_linear(const at::Tensor& x, const at::Tensor& packed,
                       const c10::optional<at::Tensor>& bias, int64_t N, int64_t fmt,
                       int64_t isa) {
  TORCH_CHECK(fmt == kQ8_0 || fmt == kQ4_1, "gguf_linear: format must be 0 (Q8_0) or 1 (Q4_1)");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "gguf_linear: x must be contiguous [M, K]");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(packed.dim() == 3 && packed.is_contiguous() && packed.scalar_type() == at::kByte &&
                  packed.size(2) == block_bytes(fmt),
              "gguf_linear: packed must be contiguous uint8 [Np / 16, K / 32, ", block_bytes(fmt),
              "]");
  TORCH_CHECK(K % QK == 0 && packed.size(1) * QK == K,
              "gguf_linear: K must be a multiple of 32 and match the packed blocks");
  TORCH_CHECK(packed.size(0) * CB % NT == 0 && N <= packed.size(0) * CB,
              "gguf_linear: the packed channels must be a multiple of 32 and >= N");
  const float* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == N && bias->is_contiguous(),
                "gguf_linear: bias must be float32 [N]");
    bias_ptr = bias->data_ptr<float>();
  }
  TORCH_CHECK(isa_supported(isa), "gguf_linear: instruction set ", isa, " not on this CPU");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu(),
              "gguf_linear runs on CPU tensors only");
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const int64_t Kb = K / QK;
  // One scratch buffer (one allocation a call, not four): xq, then dx, sx, sum128 (4-byte
  // aligned: M * K is a multiple of 32).
  at::Tensor scratch = at::empty({M * K + 3 * 4 * M * Kb}, x.options().dtype(at::kByte));
  int8_t* xq = reinterpret_cast<int8_t*>(scratch.data_ptr<uint8_t>());
  float* dx = reinterpret_cast<float*>(xq + M * K);
  int32_t* sum128 = reinterpret_cast<int32_t*>(dx + 2 * M * Kb);
  const Rows rows{xq, dx, dx + M * Kb, sum128, Kb};
  auto run = [&](auto zero) {
    using T = decltype(zero);
    quantize_rows<T>(x, xq, dx, dx + M * Kb, sum128);
    gemm<T>(rows, M, packed.data_ptr<uint8_t>(), N, fmt, bias_ptr, isa, y.data_ptr<T>());
  };
  switch (x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(c10::BFloat16{}); break;
    case at::kHalf: run(c10::Half{}); break;
    default: TORCH_CHECK(false, "gguf_linear: x must be float32, bfloat16 or float16");
  }
  return y;
}

}  // namespace

TORCH_LIBRARY(vibe_gguf_gemm, m) {
  m.def("gguf_linear(Tensor x, Tensor packed, Tensor? bias, int N, int fmt, int isa) -> Tensor");
  m.def("supported_isas() -> int[]", &vibe_isa::supported_isas);
}

TORCH_LIBRARY_IMPL(vibe_gguf_gemm, CPU, m) { m.impl("gguf_linear", &gguf_linear); }
