// W8A8 linear on the CPU: y = x @ W.T (+ b) with x quantised to int8 on the fly, one scale per
// group of 64 inputs of each row, int8 x int8 products summed exactly in int32 within a group,
// then the group, row and channel scales:
//
//     sx[m, g] = max_{k in g} |x[m, k]| / 127      xq[m, k] = round(x[m, k] / sx[m, g]), |xq| <= 127
//     dot[m, n, g] = sum_{k in g} xq[m, k] * wq[n, k]                 (int32, exact)
//     y[m, n] = fma-accumulated over g of float(dot[m, n, g]) * sx[m, g], times sw[n] (+ b[n])
//
// Every row's result depends on that row alone: its own scales, and the same sequence of float
// operations whatever the number of rows M. So a row gives bitwise the same output alone or inside
// any batch. (One scale per whole row would fit torch._int_mm, but a few outlier inputs then
// flatten the rest: SmolLM2-135M's perplexity rose 6-7%; with groups of 64, 0.5%.)
//
// Weight layout (packed once at load, see models/w8a8.py): output channels in blocks of 16, and
// within a block, 4 consecutive inputs of each of the 16 channels side by side, stored as u8
// (wq + 128):
//
//     packed[b, q, c, r] = wq[16 b + c, 4 q + r] + 128        [Np / 16, Kp / 4, 16, 4] uint8
//
// so one 64-byte load is 16 channels x 4 inputs, and vpdpbusd with the 4 inputs xq[m, 4q..4q+3]
// broadcast adds 64 products into 16 int32 lanes, one lane per channel: no horizontal sums, and
// a group of 64 inputs costs 16 vpdpbusd + 3 instructions to scale. The +128 (vpdpbusd's first
// operand is unsigned) is taken off exactly: sum_k (wq + 128) xq = dot + 128 * sum_k xq.
//
// The inner loop is chosen at run time from what this CPU has (the file is compiled for plain
// x86-64; each path carries its own target attribute), and every path computes the same int32
// group sums and the same float sequence per channel, so all give bitwise the same y:
//
//   avx512_vnni  zmm vpdpbusd, up to 4 rows x 32 channels per tile
//   avx_vnni     ymm vpdpbusd (VEX: Alder Lake, Zen 5), 1 row x 32 channels
//   avx2         vpmaddubsw + vpmaddwd, 1 row x 32 channels; the u8 trick would overflow
//                vpmaddubsw's saturating int16 pairs, so it multiplies |wq| by xq * sign(wq)
//                (each pair at most 2 * 127 * 127 = 32258)
//   scalar       plain loops, for any other CPU (and the tests' reference)
//
// Layout: x [M, K] float32/bfloat16/float16, contiguous; packed as above with Kp a multiple of 64
// (zero weights past K) and Np a multiple of 32; wscale float32 [N]; bias float32 [N] or
// undefined. Returns y [M, N] in x's dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "int_gemm_common.h"

namespace {

using namespace vibe_isa;

constexpr int64_t GROUP = 64;  // inputs per activation scale; Kp must be a multiple
constexpr int64_t CB = 16;     // channels per packed block
constexpr int64_t NT = kTileChannels;  // channels per tile (2 blocks); Np must be a multiple
constexpr int64_t MR = kTileRowsMax;   // most activation rows per tile

int64_t rows_per_tile(int64_t isa) { return isa == kAvx512Vnni ? MR : 1; }

// The rows' quantised inputs for one tile: xq rows Kp apart; per (row, group) the scale sx and
// 128 * sum(xq) (the +128 correction), Kg = Kp / GROUP apart.
struct Rows {
  const int8_t* xq;
  const float* sx;
  const int32_t* sum128;
  int64_t Kp;
};

// One tile: out[i * NT + c] = the fma-accumulated group sum of row i, channel c of the tile.
// w: the tile's first packed block; the second is Kp * CB bytes further.
using TileFn = void (*)(const Rows& rows, int64_t mr, const uint8_t* w, float* out);

void tile_scalar(const Rows& rows, int64_t mr, const uint8_t* w, float* out) {
  const int64_t Kp = rows.Kp, Kg = Kp / GROUP;
  for (int64_t i = 0; i < mr; ++i) {
    for (int64_t c = 0; c < NT; ++c) {
      const uint8_t* block = w + (c / CB) * Kp * CB;
      float acc = 0.f;
      for (int64_t g = 0; g < Kg; ++g) {
        int32_t d = 0;
        for (int64_t k = g * GROUP; k < (g + 1) * GROUP; ++k)
          d += int32_t(block[(k / 4) * 64 + (c % CB) * 4 + k % 4]) * rows.xq[i * Kp + k];
        d -= rows.sum128[i * Kg + g];
        acc = std::fma(float(d), rows.sx[i * Kg + g], acc);
      }
      out[i * NT + c] = acc;
    }
  }
}

#ifdef VIBE_X86
template <int64_t R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void tile_avx512vnni_rows(
    const Rows& rows, const uint8_t* w, float* out) {
  const int64_t Kp = rows.Kp, Kg = Kp / GROUP;
  const uint8_t* w1 = w + Kp * CB;
  __m512 acc[R][2];
  for (int64_t i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < Kg; ++g) {
    // Two chains per accumulator (even and odd quads): vpdpbusd's latency would otherwise bound
    // a one-row tile. Integer sums, so the split does not change a bit of the result.
    __m512i d[R][2][2];
    for (int64_t i = 0; i < R; ++i)
      for (int64_t h = 0; h < 2; ++h) d[i][h][0] = d[i][h][1] = _mm512_setzero_si512();
    for (int64_t q = g * (GROUP / 4); q < (g + 1) * (GROUP / 4); q += 2) {
      for (int64_t e = 0; e < 2; ++e) {
        const __m512i wa = _mm512_loadu_si512(w + (q + e) * 64);
        const __m512i wb = _mm512_loadu_si512(w1 + (q + e) * 64);
        for (int64_t i = 0; i < R; ++i) {
          int32_t quad;
          __builtin_memcpy(&quad, rows.xq + i * Kp + (q + e) * 4, 4);
          const __m512i xb = _mm512_set1_epi32(quad);
          d[i][0][e] = _mm512_dpbusd_epi32(d[i][0][e], wa, xb);
          d[i][1][e] = _mm512_dpbusd_epi32(d[i][1][e], wb, xb);
        }
      }
    }
    for (int64_t i = 0; i < R; ++i) {
      const __m512i c = _mm512_set1_epi32(rows.sum128[i * Kg + g]);
      const __m512 s = _mm512_set1_ps(rows.sx[i * Kg + g]);
      for (int64_t h = 0; h < 2; ++h) {
        const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(d[i][h][0], d[i][h][1]), c);
        acc[i][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, acc[i][h]);
      }
    }
  }
  for (int64_t i = 0; i < R; ++i)
    for (int64_t h = 0; h < 2; ++h) _mm512_storeu_ps(out + i * NT + h * CB, acc[i][h]);
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile_avx512vnni(const Rows& rows,
                                                                            int64_t mr,
                                                                            const uint8_t* w,
                                                                            float* out) {
  switch (mr) {  // the row count is a template argument: the accumulators stay in registers
    case 1: tile_avx512vnni_rows<1>(rows, w, out); break;
    case 2: tile_avx512vnni_rows<2>(rows, w, out); break;
    case 3: tile_avx512vnni_rows<3>(rows, w, out); break;
    default: tile_avx512vnni_rows<4>(rows, w, out); break;
  }
}

// The two 256-bit paths share one body (one row, 32 channels = 4 ymm of 8); DOT(acc, w, xb)
// adds the products of 8 channels' packed u8 quads w and the broadcast s8 quad xb.
#define VIBE_TILE256(NAME, TARGET, DOT)                                                        \
  TARGET void NAME(const Rows& rows, int64_t, const uint8_t* w, float* out) {                  \
    const int64_t Kp = rows.Kp, Kg = Kp / GROUP;                                               \
    const uint8_t* blocks[2] = {w, w + Kp * CB};                                               \
    __m256 acc[4];                                                                             \
    for (auto& a : acc) a = _mm256_setzero_ps();                                               \
    for (int64_t g = 0; g < Kg; ++g) {                                                         \
      __m256i d[4];                                                                            \
      for (auto& v : d) v = _mm256_setzero_si256();                                            \
      for (int64_t q = g * (GROUP / 4); q < (g + 1) * (GROUP / 4); ++q) {                      \
        int32_t quad;                                                                          \
        __builtin_memcpy(&quad, rows.xq + q * 4, 4);                                           \
        const __m256i xb = _mm256_set1_epi32(quad);                                            \
        for (int64_t v = 0; v < 4; ++v) {                                                      \
          const __m256i wv = _mm256_loadu_si256(                                               \
              reinterpret_cast<const __m256i*>(blocks[v / 2] + q * 64 + (v % 2) * 32));        \
          d[v] = DOT(d[v], wv, xb);                                                            \
        }                                                                                      \
      }                                                                                        \
      const __m256i c = _mm256_set1_epi32(rows.sum128[g]);                                     \
      const __m256 s = _mm256_set1_ps(rows.sx[g]);                                             \
      for (int64_t v = 0; v < 4; ++v)                                                          \
        acc[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(d[v], c)), s, acc[v]);    \
    }                                                                                          \
    for (int64_t v = 0; v < 4; ++v) _mm256_storeu_ps(out + v * 8, acc[v]);                     \
  }

VIBE_TILE256(tile_avxvnni, __attribute__((target("avx2,fma,avxvnni"))), dot_avxvnni)
VIBE_TILE256(tile_avx2, __attribute__((target("avx2,fma"))), dot_avx2)
#undef VIBE_TILE256

#endif  // VIBE_X86

TileFn tile_for(int64_t isa) {
#ifdef VIBE_X86
  switch (isa) {
    case kAvx2: return tile_avx2;
    case kAvxVnni: return tile_avxvnni;
    case kAvx512Vnni: return tile_avx512vnni;
    default: return tile_scalar;
  }
#else
  (void)isa;
  return tile_scalar;
#endif
}

// xq [M, Kp] int8 (zero beyond K), sx [M, Kg] float32 and sum128 [M, Kg] int32 from x [M, K]:
// xq = round_half_even(x * (127 / amax)), sx = amax / 127, sum128 = 128 * sum(xq) per group
// (an all-zero group: zeros and scale 0).
template <typename T>
void quantize_rows(const at::Tensor& x, at::Tensor& xq, at::Tensor& sx, at::Tensor& sum128) {
  const int64_t M = x.size(0), K = x.size(1), Kp = xq.size(1), Kg = Kp / GROUP;
  const T* src = x.data_ptr<T>();
  int8_t* dst = xq.data_ptr<int8_t>();
  float* scale = sx.data_ptr<float>();
  int32_t* sums = sum128.data_ptr<int32_t>();
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: (v + kRound) - kRound rounds half to even
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const T* in = src + m * K;
      int8_t* q = dst + m * Kp;
      for (int64_t g = 0; g < Kg; ++g) {
        const int64_t k0 = g * GROUP, k1 = std::max(k0, std::min(K, k0 + GROUP));
        float amax = 0.f;
        for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(static_cast<float>(in[k])));
        scale[m * Kg + g] = amax / 127.f;
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        int32_t sum = 0;
        for (int64_t k = k0; k < k1; ++k) {
          const float v = std::min(127.f, std::max(-127.f, static_cast<float>(in[k]) * inv));
          q[k] = static_cast<int8_t>((v + kRound) - kRound);
          sum += q[k];
        }
        for (int64_t k = k1; k < k0 + GROUP; ++k) q[k] = 0;
        sums[m * Kg + g] = 128 * sum;
      }
    }
  });
}

// y [M, N] = the tiles of x's rows against packed's channels, times wscale (+ bias), x's dtype.
template <typename T>
void gemm(const Rows& all, int64_t M, const at::Tensor& packed, int64_t N,
          const at::Tensor& wscale, const float* bias, int64_t isa, at::Tensor& y) {
  const int64_t Kp = all.Kp, Kg = Kp / GROUP;
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const float* sw = wscale.data_ptr<float>();
  T* out = y.data_ptr<T>();
  const TileFn tile = tile_for(isa);
  for_each_tile(
      M, N, Kp, rows_per_tile(isa), out,
      [&](int64_t t, int64_t m0, int64_t mr, float* acc) {
        const Rows rows{all.xq + m0 * Kp, all.sx + m0 * Kg, all.sum128 + m0 * Kg, Kp};
        tile(rows, mr, w + t * NT * Kp, acc);
      },
      [&](float v, int64_t n) { return bias != nullptr ? v * sw[n] + bias[n] : v * sw[n]; });
}

template <typename F>
void dispatch_float(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "int8_linear: x must be float32, bfloat16 or float16, got ", dtype);
  }
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& wscale,
                       const c10::optional<at::Tensor>& bias, int64_t N, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "int8_linear: x must be contiguous [M, K]");
  TORCH_CHECK(packed.dim() == 3 && packed.is_contiguous() && packed.scalar_type() == at::kByte &&
                  packed.size(2) == 4 * CB,
              "int8_linear: packed must be contiguous uint8 [Np / 16, Kp / 4, 64]");
  const int64_t M = x.size(0), K = x.size(1), Kp = packed.size(1) * 4;
  TORCH_CHECK(Kp % GROUP == 0 && K <= Kp, "int8_linear: Kp must be a multiple of 64 and >= K");
  TORCH_CHECK(packed.size(0) * CB % NT == 0 && N <= packed.size(0) * CB,
              "int8_linear: the packed channels must be a multiple of 32 and >= N");
  TORCH_CHECK(wscale.scalar_type() == at::kFloat && wscale.numel() == N && wscale.is_contiguous(),
              "int8_linear: wscale must be float32 [N]");
  const float* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == N && bias->is_contiguous(),
                "int8_linear: bias must be float32 [N]");
    bias_ptr = bias->data_ptr<float>();
  }
  TORCH_CHECK(isa_supported(isa), "int8_linear: instruction set ", isa, " not on this CPU");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu() && wscale.device().is_cpu(),
              "int8_linear runs on CPU tensors only");
  at::Tensor xq = at::empty({M, Kp}, x.options().dtype(at::kChar));
  at::Tensor sx = at::empty({M, Kp / GROUP}, x.options().dtype(at::kFloat));
  at::Tensor sum128 = at::empty({M, Kp / GROUP}, x.options().dtype(at::kInt));
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  dispatch_float(x.scalar_type(), [&](auto t) {
    using T = decltype(t);
    quantize_rows<T>(x, xq, sx, sum128);
    const Rows rows{xq.data_ptr<int8_t>(), sx.data_ptr<float>(), sum128.data_ptr<int32_t>(), Kp};
    gemm<T>(rows, M, packed, N, wscale, bias_ptr, isa, y);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(vibe_int8_gemm, m) {
  m.def(
      "int8_linear(Tensor x, Tensor packed, Tensor wscale, Tensor? bias, int N, int isa) -> "
      "Tensor");
  m.def("supported_isas() -> int[]", &vibe_isa::supported_isas);
}

TORCH_LIBRARY_IMPL(vibe_int8_gemm, CPU, m) { m.impl("int8_linear", &int8_linear); }
