// Paged attention on the CPU, reading K/V straight out of the paged pool (no gathered copy).
//
// One work item = (row, kv head(s), chunk of up to QUERY_CHUNK query tokens of that row). It keeps,
// for each of its queries and each of the G query heads that share the kv head (GQA), the running
// state of an online softmax (flash-attention style):
//
//     m    largest score seen so far
//     l    sum of exp(score - m)
//     acc  sum of exp(score - m) * v            [D]
//
// and walks the row's keys in blocks of KEY_BLOCK positions, looked up through the page table:
//
//     slot = page_table[row][pos / page_size] * page_size + pos % page_size
//     K row of (slot, kv_head) = k_cache + (slot * Hkv + kv_head) * D
//
// Each K/V row is read once per block, straight from its page (bf16/fp16 widened to fp32 on the
// fly), and used by all G heads and all queries of the chunk. Accumulation is always fp32.
// When there are enough rows, one work item takes all kv heads of its row instead, so that each
// slot's [Hkv, D] K/V is one contiguous read. Work items run in parallel with at::parallel_for
// (OpenMP, the runtime torch itself uses), so torch.set_num_threads governs them.
//
// Used for decode (one query per row), which is memory bound. Extend/prefill is compute bound:
// there SDPA's matrix multiplies win, and cpu_paged.py calls SDPA instead (the kernel still
// handles any query length, and the tests check it does).

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t KEY_BLOCK = 32;    // keys scored together before one softmax rescale
constexpr int64_t QUERY_CHUNK = 16;  // query tokens of one row handled by one work item

// One element as fp32. bf16 is the top half of an fp32, so widening it is a 16-bit shift, which
// vectorises (the generic conversion operator does not).
inline float widen(float x) { return x; }
inline float widen(c10::Half x) { return static_cast<float>(x); }
inline float widen(c10::BFloat16 x) { return __builtin_bit_cast(float, uint32_t(x.x) << 16); }

// q . k over n elements, k in the cache dtype, accumulated in fp32.
template <typename T>
inline float dot(const float* q, const T* k, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += q[i] * widen(k[i]);
  return s;
}

// y += a * x, x in the cache dtype.
template <typename T>
inline void axpy(float a, const T* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * widen(x[i]);
}

inline void scale_(float a, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

template <typename qT, typename kvT>
void attend(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
            at::Tensor& out, const at::Tensor& rows, const at::Tensor& query_start_loc,
            const at::Tensor& seq_lens, const at::Tensor& page_table, int64_t page_size,
            double scale, int64_t max_query_len) {
  const int64_t num_q_heads = q.size(1), D = q.size(2);
  const int64_t num_kv_heads = k_cache.size(1);
  const int64_t G = num_q_heads / num_kv_heads;  // query heads per kv head
  const int64_t num_rows = rows.size(0);
  const int64_t num_chunks = (max_query_len + QUERY_CHUNK - 1) / QUERY_CHUNK;
  const int64_t max_pages = page_table.size(1);
  // kv heads per work item: all of them when there are enough (row, chunk) items to keep every
  // thread busy, so that each slot's K/V is read as one contiguous [Hkv * D] run; otherwise one,
  // so that a single long row still spreads over the threads.
  const bool many_items = num_rows * num_chunks >= 4 * at::get_num_threads();
  const int64_t H = many_items ? num_kv_heads : 1;
  const int64_t HG = H * G;  // query heads per work item
  const int64_t W = H * D;   // elements of one slot's K (or V) that a work item reads

  const qT* q_ptr = q.data_ptr<qT>();
  qT* out_ptr = out.data_ptr<qT>();
  const kvT* k_ptr = k_cache.data_ptr<kvT>();
  const kvT* v_ptr = v_cache.data_ptr<kvT>();
  const int64_t* rows_ptr = rows.data_ptr<int64_t>();
  const int64_t* qsl_ptr = query_start_loc.data_ptr<int64_t>();
  const int64_t* len_ptr = seq_lens.data_ptr<int64_t>();
  const int64_t* table_ptr = page_table.data_ptr<int64_t>();
  // Strides in elements (q/out may be views; the caches are contiguous).
  const int64_t q_s0 = q.stride(0), q_s1 = q.stride(1);
  const int64_t o_s0 = out.stride(0), o_s1 = out.stride(1);
  const int64_t slot_stride = num_kv_heads * D;
  const int64_t num_groups = num_kv_heads / H;

  at::parallel_for(0, num_rows * num_groups * num_chunks, 1, [&](int64_t begin, int64_t end) {
    // Per (query, query head) of one item: scaled query, running max m, sum l, accumulator.
    const int64_t max_vecs = QUERY_CHUNK * HG;
    std::vector<float> qbuf(max_vecs * D), acc(max_vecs * D), m(max_vecs), l(max_vecs);
    std::vector<float> scores(KEY_BLOCK);
    const kvT* k_rows[KEY_BLOCK];  // k_rows[j]: key j's [H, D] block in the pool
    const kvT* v_rows[KEY_BLOCK];

    for (int64_t item = begin; item < end; ++item) {
      const int64_t chunk = item % num_chunks;
      const int64_t h0 = (item / num_chunks) % num_groups * H;  // first kv head of the item
      const int64_t row = rows_ptr[item / (num_chunks * num_groups)];
      const int64_t q_start = qsl_ptr[row];
      const int64_t q_len = qsl_ptr[row + 1] - q_start;
      const int64_t first = chunk * QUERY_CHUNK;  // first query of this chunk, within the row
      if (first >= q_len) continue;
      const int64_t nq = std::min(QUERY_CHUNK, q_len - first);
      const int64_t prefix = len_ptr[row] - q_len;  // query i sits at position prefix + i
      const int64_t* table = table_ptr + row * max_pages;
      auto slot_of = [&](int64_t pos) {
        return table[pos / page_size] * page_size + pos % page_size;
      };

      // Load the chunk's queries (pre-scaled) and reset the softmax state.
      for (int64_t i = 0; i < nq; ++i) {
        for (int64_t lh = 0; lh < HG; ++lh) {
          float* dst = qbuf.data() + (i * HG + lh) * D;
          const qT* src = q_ptr + (q_start + first + i) * q_s0 + (h0 * G + lh) * q_s1;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) dst[d] = widen(src[d]) * static_cast<float>(scale);
        }
      }
      std::fill(acc.begin(), acc.begin() + nq * HG * D, 0.f);
      std::fill(m.begin(), m.begin() + nq * HG, -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.begin() + nq * HG, 0.f);

      const int64_t kv_end = prefix + first + nq;  // the chunk's last query sees keys < kv_end
      for (int64_t k0 = 0; k0 < kv_end; k0 += KEY_BLOCK) {
        const int64_t nk = std::min(KEY_BLOCK, kv_end - k0);
        // Pages are scattered, so the hardware prefetcher cannot guess the next rows: ask for
        // the next block's rows now, while this block computes.
        for (int64_t pos = k0 + KEY_BLOCK; pos < std::min(k0 + 2 * KEY_BLOCK, kv_end); ++pos) {
          const int64_t offset = slot_of(pos) * slot_stride + h0 * D;
          for (int64_t b = 0; b < W * int64_t(sizeof(kvT)); b += 64) {
            __builtin_prefetch(reinterpret_cast<const char*>(k_ptr + offset) + b);
            __builtin_prefetch(reinterpret_cast<const char*>(v_ptr + offset) + b);
          }
        }
        // Locate this block's K/V rows through the page table.
        for (int64_t j = 0; j < nk; ++j) {
          const int64_t offset = slot_of(k0 + j) * slot_stride + h0 * D;
          k_rows[j] = k_ptr + offset;
          v_rows[j] = v_ptr + offset;
        }
        for (int64_t i = 0; i < nq; ++i) {
          // Causal: query i sees keys 0..prefix+first+i.
          const int64_t visible = std::min(nk, prefix + first + i + 1 - k0);
          if (visible <= 0) continue;
          for (int64_t lh = 0; lh < HG; ++lh) {
            const int64_t vec = i * HG + lh;
            const int64_t kv_offset = lh / G * D;  // this head's K/V within a [H, D] row
            const float* qv = qbuf.data() + vec * D;
            float* a = acc.data() + vec * D;
            float block_max = -std::numeric_limits<float>::infinity();
            for (int64_t j = 0; j < visible; ++j) {
              scores[j] = dot(qv, k_rows[j] + kv_offset, D);
              block_max = std::max(block_max, scores[j]);
            }
            const float new_max = std::max(m[vec], block_max);
            const float correction = std::exp(m[vec] - new_max);  // 0 on the first block
            if (correction != 1.f) scale_(correction, a, D);
            float block_sum = 0.f;
#pragma omp simd reduction(+ : block_sum)
            for (int64_t j = 0; j < visible; ++j) {
              scores[j] = std::exp(scores[j] - new_max);
              block_sum += scores[j];
            }
            for (int64_t j = 0; j < visible; ++j) axpy(scores[j], v_rows[j] + kv_offset, a, D);
            l[vec] = l[vec] * correction + block_sum;
            m[vec] = new_max;
          }
        }
      }

      // Normalise and store in the output dtype.
      for (int64_t i = 0; i < nq; ++i) {
        for (int64_t lh = 0; lh < HG; ++lh) {
          const int64_t vec = i * HG + lh;
          const float inv = 1.f / l[vec];
          const float* a = acc.data() + vec * D;
          qT* dst = out_ptr + (q_start + first + i) * o_s0 + (h0 * G + lh) * o_s1;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<qT>(a[d] * inv);
        }
      }
    }
  });
}

// Call f with a value of the C++ type matching dtype (fp32, bf16 or fp16).
template <typename F>
void dispatch_float(at::ScalarType dtype, const char* what, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "cpu_paged: unsupported ", what, " dtype ", dtype);
  }
}

void paged_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     at::Tensor out, const at::Tensor& rows, const at::Tensor& query_start_loc,
                     const at::Tensor& seq_lens, const at::Tensor& page_table, int64_t page_size,
                     double scale, int64_t max_query_len) {
  TORCH_CHECK(q.dim() == 3 && out.sizes() == q.sizes(), "q and out must be [T, Hq, D]");
  TORCH_CHECK(q.stride(2) == 1 && out.stride(2) == 1, "q and out need a contiguous last dim");
  TORCH_CHECK(out.scalar_type() == q.scalar_type(), "out must have q's dtype");
  TORCH_CHECK(k_cache.dim() == 3 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  v_cache.sizes() == k_cache.sizes(),
              "k_cache and v_cache must be contiguous [num_slots, Hkv, D]");
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), "caches must share a dtype");
  TORCH_CHECK(k_cache.size(2) == q.size(2), "head_dim mismatch");
  TORCH_CHECK(q.size(1) % k_cache.size(1) == 0, "Hq must be a multiple of Hkv");
  for (const at::Tensor* t : {&rows, &query_start_loc, &seq_lens, &page_table}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous(),
                "index tensors must be contiguous int64");
  }
  TORCH_CHECK(page_size >= 1 && max_query_len >= 1, "page_size and max_query_len must be >= 1");
  for (const at::Tensor* t : {&q, &k_cache, &v_cache, &rows, &page_table}) {
    TORCH_CHECK(t->device().is_cpu(), "cpu_paged runs on CPU tensors only");
  }
  dispatch_float(q.scalar_type(), "q", [&](auto q0) {
    dispatch_float(k_cache.scalar_type(), "kv cache", [&](auto kv0) {
      attend<decltype(q0), decltype(kv0)>(q, k_cache, v_cache, out, rows, query_start_loc,
                                          seq_lens, page_table, page_size, scale, max_query_len);
    });
  });
}

}  // namespace

TORCH_LIBRARY(vibe_cpu_paged, m) {
  m.def(
      "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor(a!) out, Tensor rows, "
      "Tensor query_start_loc, Tensor seq_lens, Tensor page_table, int page_size, float scale, "
      "int max_query_len) -> ()");
}

TORCH_LIBRARY_IMPL(vibe_cpu_paged, CPU, m) { m.impl("paged_attention", &paged_attention); }
