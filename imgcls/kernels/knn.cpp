// Exact k-nearest-neighbour search over uint8 rows: L1 by sums of absolute differences
// (psadbw), L2 by int8 dot products (vpdpbusd). Every distance is an exact integer, so the
// k best come out exact, ordered by (distance, index), with no re-ranking.
//
// Python reaches the two extern "C" functions below through ctypes (imgcls/kernels/__init__.py);
// the module init exists only so that setuptools can build and install this file as an
// extension. ctypes releases the GIL for the call; the work is split over std::threads.

#include <Python.h>

#include <algorithm>
#include <functional>
#include <cstdint>
#include <immintrin.h>
#include <limits>
#include <thread>
#include <vector>

namespace {

constexpr int METRIC_L1 = 1;
constexpr int METRIC_L2 = 2;
#ifndef QUERY_BLOCK_ROWS
#define QUERY_BLOCK_ROWS 256
#endif
#ifndef REF_BLOCK_ROWS
#define REF_BLOCK_ROWS 512
#endif
constexpr int64_t QUERY_BLOCK = QUERY_BLOCK_ROWS;   // queries per block (x stride bytes: stays in L2)
constexpr int64_t REF_BLOCK = REF_BLOCK_ROWS;       // references swept by each query block while in L2

struct Search {
  const uint8_t* queries;   // (nq rounded up to 4, stride) zero-padded
  const uint8_t* refs;      // (nr rounded up to 4, stride) zero-padded; L2: centred, as int8
  int64_t nq, nr, stride;
  int metric, k;
  const int64_t* query_norms;  // L2: ||q||^2 and sum(q) per query, ||t||^2 per reference
  const int64_t* query_sums;
  const int64_t* ref_norms;
  int64_t* best_dist;       // (nq, k), ascending; INT64_MAX where empty
  int64_t* best_index;      // (nq, k)
};

// References reach each query in increasing index order, so on equal distances the earlier
// reference stays ahead: the order is (distance, index), as in scikit-learn's stable sort.
inline void offer(const Search& a, int64_t query, int64_t dist, int64_t index) {
  int64_t* d = a.best_dist + query * a.k;
  int64_t* i = a.best_index + query * a.k;
  if (dist >= d[a.k - 1]) return;
  int pos = a.k - 1;
  while (pos > 0 && d[pos - 1] > dist) {
    d[pos] = d[pos - 1];
    i[pos] = i[pos - 1];
    --pos;
  }
  d[pos] = dist;
  i[pos] = index;
}

inline void offer_tile(const Search& a, int64_t qt, int64_t rt, const int32_t d[16]) {
  for (int i = 0; i < 4 && qt + i < a.nq; ++i) {
    const int64_t q = qt + i;
    for (int j = 0; j < 4 && rt + j < a.nr; ++j) {
      int64_t dist = d[4 * i + j];
      if (a.metric == METRIC_L2)   // ||q - t||^2 = ||q||^2 + ||t||^2 - 2 q.t,  q.t = q.(t - 128) + 128 sum(q)
        dist = a.query_norms[q] + a.ref_norms[rt + j] - 2 * (dist + 128 * a.query_sums[q]);
      offer(a, q, dist, rt + j);
    }
  }
}

}  // namespace

// ---- AVX-512 (BW for psadbw, VNNI for vpdpbusd) ---------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vnni")
namespace avx512_detail {
// Sixteen vectors in "pair" form (per 128-bit lane: [a b a b] partial sums of two vectors)
// summed to one vector whose 32-bit lane 4 L + p holds the total of vector 4 L + p.
inline __m512i sum_pairs(const __m512i s[8]) {
  __m512i t[4];
  for (int n = 0; n < 4; ++n)
    t[n] = _mm512_add_epi32(_mm512_unpacklo_epi64(s[2 * n], s[2 * n + 1]), _mm512_unpackhi_epi64(s[2 * n], s[2 * n + 1]));
  const __m512i u0 = _mm512_add_epi32(_mm512_shuffle_i32x4(t[0], t[1], 0x88), _mm512_shuffle_i32x4(t[0], t[1], 0xDD));
  const __m512i u1 = _mm512_add_epi32(_mm512_shuffle_i32x4(t[2], t[3], 0x88), _mm512_shuffle_i32x4(t[2], t[3], 0xDD));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(u0, u1, 0x88), _mm512_shuffle_i32x4(u0, u1, 0xDD));
}

// psadbw sums sit in 64-bit lanes and fit in 32 bits: two vectors pack into one.
inline void sum_sad(const __m512i acc[4][4], int32_t d[16]) {
  __m512i s[8];
  for (int m = 0; m < 8; ++m)
    s[m] = _mm512_or_si512(acc[(2 * m) / 4][(2 * m) % 4], _mm512_slli_epi64(acc[(2 * m + 1) / 4][(2 * m + 1) % 4], 32));
  _mm512_storeu_si512(d, sum_pairs(s));
}

inline void sum_dot(const __m512i acc[4][4], int32_t d[16]) {
  __m512i s[8];
  for (int m = 0; m < 8; ++m) {
    const __m512i a = acc[(2 * m) / 4][(2 * m) % 4], b = acc[(2 * m + 1) / 4][(2 * m + 1) % 4];
    s[m] = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
  }
  _mm512_storeu_si512(d, sum_pairs(s));
}
}  // namespace avx512_detail
#define ISA avx512
#define VEC __m512i
#define VBYTES 64
#define LOAD(p) _mm512_loadu_si512(reinterpret_cast<const void*>(p))
#define ZERO() _mm512_setzero_si512()
#define SAD_ADD(acc, a, b) _mm512_add_epi64(acc, _mm512_sad_epu8(a, b))
#define SUM_SAD(acc, d) avx512_detail::sum_sad(acc, d)
#define HAS_DOT
#define DOT_ADD(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
#define SUM_DOT(acc, d) avx512_detail::sum_dot(acc, d)
#include "knn_tile.inc"   // (it undefines these macros at its end)
#pragma GCC pop_options

// ---- AVX2 (L1 only) ---------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2_detail {
inline void sum_sad(const __m256i acc[4][4], int32_t d[16]) {
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(acc[i][j]), _mm256_extracti128_si256(acc[i][j], 1));
      d[4 * i + j] = static_cast<int32_t>(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1));
    }
}
}  // namespace avx2_detail
#define ISA avx2
#define VEC __m256i
#define VBYTES 32
#define LOAD(p) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
#define ZERO() _mm256_setzero_si256()
#define SAD_ADD(acc, a, b) _mm256_add_epi64(acc, _mm256_sad_epu8(a, b))
#define SUM_SAD(acc, d) avx2_detail::sum_sad(acc, d)
#include "knn_tile.inc"
#pragma GCC pop_options

namespace {

using RowsFn = void (*)(const Search&, int64_t, int64_t);

// 2: AVX-512 BW + VNNI (L1 and L2); 1: AVX2 (L1); 0: neither.
int isa_level() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni")) return 2;
  if (__builtin_cpu_supports("avx2")) return 1;
  return 0;
}

void run_threads(RowsFn rows, const Search& a, int threads) {
  const int64_t tiles = (a.nq + 3) / 4;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tiles)));
  const int64_t per = (tiles + threads - 1) / threads * 4;
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back(rows, std::cref(a), std::min(a.nq, t * per), std::min(a.nq, (t + 1) * per));
  rows(a, 0, std::min(a.nq, per));
  for (auto& th : pool) th.join();
}

}  // namespace

extern "C" {

int imgcls_knn_isa() { return isa_level(); }

// Copies n rows of dim bytes into `out` (padded_n rows of `stride` bytes, zeros around them),
// XOR 0x80 when `centre` (which turns t into t - 128 read as int8), and where `norms`/`sums` are
// given, writes each row's sum of squares and sum of bytes (of the uncentred values).
void imgcls_knn_pack(const uint8_t* rows, int64_t n, int64_t dim, int64_t padded_n, int64_t stride, int centre,
                     uint8_t* out, int64_t* norms, int64_t* sums) {
  const uint8_t flip = centre ? 0x80 : 0;
  for (int64_t r = 0; r < padded_n; ++r) {
    uint8_t* o = out + r * stride;
    if (r >= n) {
      std::fill(o, o + stride, uint8_t{0});
      continue;
    }
    const uint8_t* x = rows + r * dim;
    uint32_t squares = 0, total = 0;   // per 64-byte piece, flushed below: no overflow
    int64_t norm = 0, sum = 0;
    for (int64_t c = 0; c < dim; ++c) {
      o[c] = x[c] ^ flip;
      squares += static_cast<uint32_t>(x[c]) * x[c];
      total += x[c];
      if ((c & 63) == 63) { norm += squares; sum += total; squares = total = 0; }
    }
    std::fill(o + dim, o + stride, uint8_t{0});
    if (norms) norms[r] = norm + squares;
    if (sums) sums[r] = sum + total;
  }
}

// Returns 0 on success, -1 where this CPU has no kernel for the metric. max_level caps the
// instruction set (tests run the AVX2 kernel on AVX-512 machines too).
int imgcls_knn_u8(const uint8_t* queries, int64_t nq, const uint8_t* refs, int64_t nr, int64_t stride,
                  int metric, const int64_t* query_norms, const int64_t* query_sums, const int64_t* ref_norms,
                  int k, int64_t* best_dist, int64_t* best_index, int threads, int max_level) {
  const int level = std::min(isa_level(), max_level);
  RowsFn rows = nullptr;
  if (level == 2) rows = avx512::search_rows;
  else if (level == 1 && metric == METRIC_L1) rows = avx2::search_rows;
  if (rows == nullptr || stride % 64 != 0 || k < 1) return -1;
  std::fill(best_dist, best_dist + nq * k, std::numeric_limits<int64_t>::max());
  std::fill(best_index, best_index + nq * k, int64_t{-1});
  const Search a{queries, refs, nq, nr, stride, metric, k, query_norms, query_sums, ref_norms, best_dist, best_index};
  run_threads(rows, a, threads);
  return 0;
}

}  // extern "C"

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_knn", "uint8 kNN kernels (called through ctypes)", -1,
                             nullptr};

PyMODINIT_FUNC PyInit__knn(void) { return PyModule_Create(&module); }
