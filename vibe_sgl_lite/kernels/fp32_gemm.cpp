// float32 products over a column-major weight: y [M, N] = x [M, K] @ wt [K, N] (+ b).
//
// A decode step multiplies a handful of rows by every weight once, so it is bound by reading the
// weights, not by arithmetic. Each tile of 64 output channels walks k = 0..K-1, loads the 64
// weights of row k once (prefetching kAhead rows ahead: the rows are N floats apart, too far for
// the hardware prefetcher) and adds x[m, k] * w[k, :] into the accumulators of up to 4 rows
// (AVX-512: 4 rows x 4 zmm; AVX2: 2 rows x 4 ymm, twice), so the weights stream from memory once
// per 4 rows; more rows re-read the tile from L2.
//
// Every output is one chain acc = fma(x[m, k], w[k, n], acc) over k in order, whatever the
// instruction set, the tile or the batch: the paths give bitwise the same y, and a row's output
// is bitwise the same alone or in any batch.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#define VIBE_X86 1
#include <immintrin.h>
#endif

namespace {

enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int64_t kTile = 64;  // output channels per task
constexpr int64_t kAhead = 16;  // weight rows prefetched ahead

bool isa_supported(int64_t isa) {
#ifndef VIBE_X86
  return isa == kScalar;
#else
  switch (isa) {
    case kScalar: return true;
    case kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case kAvx512: return __builtin_cpu_supports("avx512f");
    default: return false;
  }
#endif
}

// rows m0..m0+MR-1, channels n0..n0+nc-1 (nc <= 64) of y; the plain C++ reference path.
void tile_scalar(const float* x, const float* wt, float* y, int64_t rows, int64_t K, int64_t N,
                 int64_t n0, int64_t nc) {
  for (int64_t m = 0; m < rows; ++m) {
    float acc[kTile] = {};
    for (int64_t k = 0; k < K; ++k) {
      const float xv = x[m * K + k];
      const float* w = wt + k * N + n0;
      for (int64_t c = 0; c < nc; ++c) acc[c] = std::fma(xv, w[c], acc[c]);
    }
    std::copy(acc, acc + nc, y + m * N + n0);
  }
}

#ifdef VIBE_X86
template <int MR>
__attribute__((target("avx512f"))) void tile_avx512(const float* x, const float* wt, float* y,
                                                    int64_t K, int64_t N, int64_t n0,
                                                    int64_t nc) {
  const auto lanes = [nc](int c) {
    const int64_t left = std::clamp<int64_t>(nc - 16 * c, 0, 16);
    return __mmask16((1u << left) - 1);
  };
  const __mmask16 m0 = lanes(0), m1 = lanes(1), m2 = lanes(2), m3 = lanes(3);
  // Named accumulators, not an array: GCC keeps an array of vectors in memory and stores it
  // on every iteration.
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
  __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00;
  __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;
  const float* w = wt + n0;
  for (int64_t k = 0; k < K; ++k, w += N) {
    if (k + kAhead < K)
      for (int c = 0; c < 4; ++c)
        _mm_prefetch(reinterpret_cast<const char*>(w + kAhead * N + 16 * c), _MM_HINT_T0);
    const __m512 w0 = _mm512_maskz_loadu_ps(m0, w), w1 = _mm512_maskz_loadu_ps(m1, w + 16);
    const __m512 w2 = _mm512_maskz_loadu_ps(m2, w + 32), w3 = _mm512_maskz_loadu_ps(m3, w + 48);
#define VIBE_ROW(i)                                         \
  {                                                         \
    const __m512 xv = _mm512_set1_ps(x[i * K + k]);         \
    a##i##0 = _mm512_fmadd_ps(xv, w0, a##i##0);             \
    a##i##1 = _mm512_fmadd_ps(xv, w1, a##i##1);             \
    a##i##2 = _mm512_fmadd_ps(xv, w2, a##i##2);             \
    a##i##3 = _mm512_fmadd_ps(xv, w3, a##i##3);             \
  }
    VIBE_ROW(0)
    if constexpr (MR > 1) VIBE_ROW(1)
    if constexpr (MR > 2) VIBE_ROW(2)
    if constexpr (MR > 3) VIBE_ROW(3)
#undef VIBE_ROW
  }
  const __m512 rows[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13},
                             {a20, a21, a22, a23}, {a30, a31, a32, a33}};
  const __mmask16 masks[4] = {m0, m1, m2, m3};
  for (int m = 0; m < MR; ++m)
    for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(y + m * N + n0 + 16 * c, masks[c], rows[m][c]);
}

// AVX2 has 16 registers: 32 channels x 2 rows a pass (8 accumulators), two passes a tile.
template <int MR>
__attribute__((target("avx2,fma"))) void half_tile_avx2(const float* x, const float* wt, float* y,
                                                        int64_t K, int64_t N, int64_t n0,
                                                        int64_t nc) {
  const auto lanes = [nc](int c) {
    const int64_t left = std::clamp<int64_t>(nc - 8 * c, 0, 8);
    const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(left)), index);
  };
  const __m256i m0 = lanes(0), m1 = lanes(1), m2 = lanes(2), m3 = lanes(3);
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
  __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  const float* w = wt + n0;
  for (int64_t k = 0; k < K; ++k, w += N) {
    if (k + kAhead < K) {
      _mm_prefetch(reinterpret_cast<const char*>(w + kAhead * N), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + kAhead * N + 16), _MM_HINT_T0);
    }
    const __m256 w0 = _mm256_maskload_ps(w, m0), w1 = _mm256_maskload_ps(w + 8, m1);
    const __m256 w2 = _mm256_maskload_ps(w + 16, m2), w3 = _mm256_maskload_ps(w + 24, m3);
    const __m256 x0 = _mm256_set1_ps(x[k]);
    a00 = _mm256_fmadd_ps(x0, w0, a00);
    a01 = _mm256_fmadd_ps(x0, w1, a01);
    a02 = _mm256_fmadd_ps(x0, w2, a02);
    a03 = _mm256_fmadd_ps(x0, w3, a03);
    if constexpr (MR > 1) {
      const __m256 x1 = _mm256_set1_ps(x[K + k]);
      a10 = _mm256_fmadd_ps(x1, w0, a10);
      a11 = _mm256_fmadd_ps(x1, w1, a11);
      a12 = _mm256_fmadd_ps(x1, w2, a12);
      a13 = _mm256_fmadd_ps(x1, w3, a13);
    }
  }
  const __m256 rows[2][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
  const __m256i masks[4] = {m0, m1, m2, m3};
  for (int m = 0; m < MR; ++m)
    for (int c = 0; c < 4; ++c) _mm256_maskstore_ps(y + m * N + n0 + 8 * c, masks[c], rows[m][c]);
}

// One row over a whole 64-channel tile: 8 accumulators, the weights read in one pass.
__attribute__((target("avx2,fma"))) void row_avx2(const float* x, const float* wt, float* y,
                                                 int64_t K, int64_t N, int64_t n0, int64_t nc) {
  __m256i mask[8];
  for (int c = 0; c < 8; ++c) {
    const int64_t left = std::clamp<int64_t>(nc - 8 * c, 0, 8);
    mask[c] = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(left)),
                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const float* w = wt + n0;
  for (int64_t k = 0; k < K; ++k, w += N) {
    if (k + kAhead < K)
      for (int c = 0; c < 4; ++c)
        _mm_prefetch(reinterpret_cast<const char*>(w + kAhead * N + 16 * c), _MM_HINT_T0);
    const __m256 xv = _mm256_set1_ps(x[k]);
    a0 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w, mask[0]), a0);
    a1 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w + 8, mask[1]), a1);
    a2 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w + 16, mask[2]), a2);
    a3 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w + 24, mask[3]), a3);
    a4 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w + 32, mask[4]), a4);
    a5 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w + 40, mask[5]), a5);
    a6 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w + 48, mask[6]), a6);
    a7 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w + 56, mask[7]), a7);
  }
  const __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
  for (int c = 0; c < 8; ++c) _mm256_maskstore_ps(y + n0 + 8 * c, mask[c], acc[c]);
}

template <int MR>
void tile_avx2(const float* x, const float* wt, float* y, int64_t K, int64_t N, int64_t n0,
               int64_t nc) {
  if constexpr (MR == 1) {
    row_avx2(x, wt, y, K, N, n0, nc);
  } else {
    half_tile_avx2<MR>(x, wt, y, K, N, n0, std::min<int64_t>(nc, 32));
    if (nc > 32) half_tile_avx2<MR>(x, wt, y, K, N, n0 + 32, nc - 32);
  }
}
#endif  // VIBE_X86

// All M rows of channels n0..n0+nc-1, in groups of the path's row count.
void tile_rows(int64_t isa, const float* x, const float* wt, float* y, int64_t M, int64_t K,
               int64_t N, int64_t n0, int64_t nc) {
  int64_t m = 0;
#ifdef VIBE_X86
  if (isa == kAvx512) {
    for (; m + 4 <= M; m += 4) tile_avx512<4>(x + m * K, wt, y + m * N, K, N, n0, nc);
    for (; m < M; ++m) tile_avx512<1>(x + m * K, wt, y + m * N, K, N, n0, nc);
  } else if (isa == kAvx2) {
    for (; m + 2 <= M; m += 2) tile_avx2<2>(x + m * K, wt, y + m * N, K, N, n0, nc);
    for (; m < M; ++m) tile_avx2<1>(x + m * K, wt, y + m * N, K, N, n0, nc);
  }
#endif
  if (m < M) tile_scalar(x + m * K, wt, y + m * N, M - m, K, N, n0, nc);
}

std::vector<int64_t> supported_isas() {
  std::vector<int64_t> out;
  for (int64_t isa : {kAvx512, kAvx2, kScalar})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

// x [M, K] float32 contiguous, wt [K, N] float32 contiguous (a column-major weight's transpose),
// bias [N] float32 or none.
at::Tensor fp32_linear(const at::Tensor& x, const at::Tensor& wt,
                        const std::optional<at::Tensor>& bias, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && wt.dim() == 2 && x.size(1) == wt.size(0),
              "fp32_linear: x [M, K] and wt [K, N] expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && wt.scalar_type() == at::kFloat,
              "fp32_linear: float32 only");
  TORCH_CHECK(x.is_contiguous() && wt.is_contiguous(), "fp32_linear: contiguous inputs only");
  TORCH_CHECK(isa_supported(isa), "fp32_linear: instruction set ", isa, " not supported here");
  const int64_t M = x.size(0), K = x.size(1), N = wt.size(1);
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = wt.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t tiles = (N + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, kTile * M * K));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * kTile;
      tile_rows(isa, xp, wp, yp, M, K, N, n0, std::min(kTile, N - n0));
    }
  });
  if (bias.has_value()) y.add_(*bias);
  return y;
}

}  // namespace

TORCH_LIBRARY(vibe_fp32_gemm, m) {
  m.def("fp32_linear(Tensor x, Tensor wt, Tensor? bias, int isa) -> Tensor");
  m.def("supported_isas() -> int[]", &supported_isas);
}

TORCH_LIBRARY_IMPL(vibe_fp32_gemm, CPU, m) { m.impl("fp32_linear", &fp32_linear); }
