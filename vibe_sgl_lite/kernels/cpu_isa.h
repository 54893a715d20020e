// The x86 instruction sets the integer-product kernels (int8_gemm.cpp, gguf_gemm.cpp) pick from
// at run time, and their two 256-bit u8 x s8 dot products.
//
// Each kernel file is compiled for plain x86-64; a path's functions carry their own target
// attribute and run only where isa_supported says the CPU has it. Elsewhere (not x86) only the
// plain C++ path exists.

#pragma once

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

}  // namespace vibe_isa
