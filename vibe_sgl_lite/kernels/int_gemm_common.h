// What the integer-product kernels (int8_gemm.cpp, gguf_gemm.cpp) share: the x86 instruction sets
// they pick from at run time, their 256-bit u8 x s8 dot products, and the loop over output tiles.
//
// Each kernel file is compiled for plain x86-64; a path's functions carry their own target
// attribute and run only where isa_supported says the CPU has it. Elsewhere (not x86) only the
// plain C++ path exists.

#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#define VIBE_X86 1
#include <immintrin.h>
#endif

namespace vibe_isa {

enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvxVnni = 2, kAvx512Vnni = 3 };

inline bool isa_supported(int64_t isa) {
#ifndef VIBE_X86
  return isa == kScalar;
#else
  switch (isa) {
    case kScalar: return true;
    case kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case kAvxVnni: return __builtin_cpu_supports("avxvnni") && __builtin_cpu_supports("fma");
    case kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
    default: return false;
  }
#endif
}

// The instruction sets this CPU can run, best first (the Isa numbers).
inline std::vector<int64_t> supported_isas() {
  std::vector<int64_t> out;
  for (int64_t isa : {kAvx512Vnni, kAvxVnni, kAvx2, kScalar})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

#ifdef VIBE_X86
// acc + per 32-bit lane the sum of 4 products u8 w x s8 xb (vpdpbusd, VEX encoding).
__attribute__((target("avx2,fma,avxvnni"))) inline __m256i dot_avxvnni(__m256i acc, __m256i w,
                                                                      __m256i xb) {
  return _mm256_dpbusd_avx_epi32(acc, w, xb);
}

// The same sums without vpdpbusd, for any u8 w (0..255): vpmaddubsw would saturate its int16
// pairs (255 * 127 * 2 > 32767), so w = wq + 128 is split into |wq| * (xb * sign(wq)) (pairs at
// most 2 * 127 * 127) plus 128 * xb summed the same way; the result equals vpdpbusd's.
__attribute__((target("avx2,fma"))) inline __m256i dot_avx2(__m256i acc, __m256i w, __m256i xb) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i wq = _mm256_xor_si256(w, _mm256_set1_epi8(char(0x80)));
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xb, wq));
  const __m256i excess = _mm256_maddubs_epi16(_mm256_set1_epi8(char(0x80)) /* 128 as u8 */, xb);
  return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(pairs, ones),
                                                _mm256_madd_epi16(excess, ones)));
}

// The same sums for small u8 w (0..15: 4-bit codes), where vpmaddubsw cannot saturate
// (2 * 15 * 128 < 32767): one vpmaddubsw and one vpmaddwd.
__attribute__((target("avx2,fma"))) inline __m256i dot_avx2_u4(__m256i acc, __m256i w,
                                                              __m256i xb) {
  const __m256i pairs = _mm256_maddubs_epi16(w, xb);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif  // VIBE_X86

constexpr int64_t kTileChannels = 32;  // output channels per tile
constexpr int64_t kTileRowsMax = 4;    // activation rows per tile, at most

// y [M, N] tile by tile: tiles of 32 channels split across threads (at least about 64k
// multiply-adds a task, so that small layers are not split too finely), and within a tile its
// rows rows_max at a time, so that after the first rows the tile's weights come from L1.
// run(t, m0, mr, acc) fills acc[i * 32 + c] for rows m0..m0+mr-1 and channels 32t..32t+31;
// y[m, n] = finish(acc value, n) in T.
template <typename T, typename Run, typename Finish>
void for_each_tile(int64_t M, int64_t N, int64_t K, int64_t rows_max, T* y, const Run& run,
                   const Finish& finish) {
  constexpr int64_t NT = kTileChannels;
  const int64_t tiles = (N + NT - 1) / NT;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, NT * M * K));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    float acc[kTileRowsMax * NT];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * NT, nc = std::min(NT, N - n0);
      for (int64_t m0 = 0; m0 < M; m0 += rows_max) {
        const int64_t mr = std::min(rows_max, M - m0);
        run(t, m0, mr, acc);
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t c = 0; c < nc; ++c)
            y[(m0 + i) * N + n0 + c] = static_cast<T>(finish(acc[i * NT + c], n0 + c));
      }
    }
  });
}

}  // namespace vibe_isa
