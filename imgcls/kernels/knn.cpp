// Exact k-nearest-neighbour search over uint8 rows: L1 by sums of absolute differences
// (psadbw), L2 by int8 dot products (vpdpbusd). Every distance is an exact integer, so the
// k best come out exact, ordered by (distance, index), with no re-ranking.
//
// How the work is cut is a run-time choice, not a constant tuned for one CPU: the register tile
// (MR queries x NR groups of references, knn_tile.inc), the loop order and the block size. Which
// is fastest depends on the CPU's registers, load ports and cache sizes, so imgcls measures a
// few at first use and keeps the fastest (imgcls/kernels/__init__.py). Every choice gives the
// same answer.
//
// Python reaches the extern "C" functions below through ctypes (imgcls/kernels/__init__.py);
// the module init exists only so that setuptools can build and install this file as an
// extension. ctypes releases the GIL for the call; the work is split over std::threads.

#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <immintrin.h>
#include <limits>
#include <thread>
#include <vector>

namespace {

constexpr int METRIC_L1 = 1;
constexpr int METRIC_L2 = 2;
constexpr int REFS_INNER = 0;      // per block of reference tiles, each query tile sweeps the block
constexpr int QUERIES_INNER = 1;   // per block of query tiles, each reference tile sweeps the block

// A tile function: MR queries (packed, `steps` steps) against NR groups of references; per
// (query, group) a bit mask of the lanes below the query's threshold, and every lane's value.
template <typename V>
using TileFn = bool (*)(const uint8_t* q, const uint8_t* r, int64_t steps, const V* bias, const V* thr,
                        uint32_t* masks, V* values);

template <typename V>
struct Tile {
  int mr, nr;
  TileFn<V> fn;
};

inline uint64_t load_u64(const uint8_t* p) { uint64_t x; std::memcpy(&x, p, 8); return x; }
inline uint32_t load_u32(const uint8_t* p) { uint32_t x; std::memcpy(&x, p, 4); return x; }

// fn(begin, end) over [0, n) in `threads` contiguous parts, on std::threads.
template <typename Fn>
void parallel_for(int64_t n, int threads, Fn fn) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  const int64_t per = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&fn, n, per, t] { fn(std::min(n, t * per), std::min(n, (t + 1) * per)); });
  fn(0, std::min(n, per));
  for (auto& th : pool) th.join();
}

}  // namespace

// ---- AVX-512 (BW for psadbw, VNNI for vpdpbusd) ---------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vnni")
#define ISA avx512
#define VEC __m512i
#define VBYTES 64
#define LOAD(p) _mm512_loadu_si512(reinterpret_cast<const void*>(p))
#define STORE(p, v) _mm512_storeu_si512(reinterpret_cast<void*>(p), v)
#define ZERO() _mm512_setzero_si512()
#define BCAST64(p) _mm512_set1_epi64(static_cast<long long>(load_u64(p)))
#define SAD_ADD(acc, a, b) _mm512_add_epi64(acc, _mm512_sad_epu8(a, b))
#define SET1_64(x) _mm512_set1_epi64(x)
#define ADD64(a, b) _mm512_add_epi64(a, b)
#define LT64(a, b) static_cast<uint32_t>(_mm512_cmplt_epi64_mask(a, b))
#define L1_SHAPES(X) X(4, 4) X(6, 4) X(8, 3) X(12, 2) X(5, 4) X(24, 1)
#define HAS_DOT
#define BCAST32(p) _mm512_set1_epi32(static_cast<int>(load_u32(p)))
#define DOT_ADD(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
#define SET1_32(x) _mm512_set1_epi32(x)
#define ADD32(a, b) _mm512_add_epi32(a, b)
#define SUB32(a, b) _mm512_sub_epi32(a, b)
#define LT32(a, b) static_cast<uint32_t>(_mm512_cmplt_epi32_mask(a, b))
#define L2_SHAPES(X) X(4, 4) X(6, 4) X(8, 3) X(5, 5) X(12, 2) X(14, 2) X(24, 1)
#include "knn_tile.inc"   // (it undefines these macros at its end)
#pragma GCC pop_options

// ---- AVX2 (L1 only: 16 vector registers, so smaller tiles) ------------------------------------
#pragma GCC push_options
#pragma GCC target("avx2")
#define ISA avx2
#define VEC __m256i
#define VBYTES 32
#define LOAD(p) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
#define STORE(p, v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v)
#define ZERO() _mm256_setzero_si256()
#define BCAST64(p) _mm256_set1_epi64x(static_cast<long long>(load_u64(p)))
#define SAD_ADD(acc, a, b) _mm256_add_epi64(acc, _mm256_sad_epu8(a, b))
#define SET1_64(x) _mm256_set1_epi64x(x)
#define ADD64(a, b) _mm256_add_epi64(a, b)
#define LT64(a, b) static_cast<uint32_t>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(b, a))))
#define L1_SHAPES(X) X(3, 3) X(4, 2) X(6, 2) X(2, 4) X(12, 1)
#include "knn_tile.inc"
#pragma GCC pop_options

namespace {

// Thresholds: a lane is a candidate where its value is below its query's threshold. Until a
// query holds k neighbours every real reference is (OPEN), padding references never are (their
// bias is OPEN), and padding queries never take any (CLOSED).
template <typename V> constexpr V OPEN = std::numeric_limits<V>::max();
template <> constexpr int64_t OPEN<int64_t> = int64_t{1} << 62;
template <typename V> constexpr V CLOSED = std::numeric_limits<V>::min();

template <typename V>
struct Search {
  TileFn<V> tile;
  int mr, nr, lanes, k, order;
  int64_t block;                  // tiles per block: reference tiles (REFS_INNER) or query tiles
  const uint8_t* queries;         // packed in tiles of mr rows (imgcls_knn_pack)
  int64_t q_tiles, q_tile_bytes;
  const uint8_t* refs;            // packed in tiles of nr x lanes rows
  int64_t r_tiles, r_tile_bytes, steps;
  const V* bias;                  // per packed reference
  const int64_t* query_norms;     // L2: ||q||^2 per query (v + ||q||^2 is the distance); L1: null
  int64_t nq;
  V* thr;                         // per packed query
  int64_t* best_dist;             // (nq, k), ascending; INT64_MAX where empty
  int64_t* best_index;            // (nq, k)
};

// References reach each query in increasing index order, so on equal distances the earlier
// reference stays ahead: the order is (distance, index), as in scikit-learn's stable sort.
template <typename V>
void insert(const Search<V>& a, int64_t query, V v, int64_t index) {
  const int64_t norm = a.query_norms ? a.query_norms[query] : 0;
  const int64_t dist = static_cast<int64_t>(v) + norm;
  int64_t* d = a.best_dist + query * a.k;
  int64_t* i = a.best_index + query * a.k;
  int pos = a.k - 1;
  while (pos > 0 && d[pos - 1] > dist) {
    d[pos] = d[pos - 1];
    i[pos] = i[pos - 1];
    --pos;
  }
  d[pos] = dist;
  i[pos] = index;
  if (i[a.k - 1] >= 0) a.thr[query] = static_cast<V>(d[a.k - 1] - norm);
}

template <typename V>
void tile(const Search<V>& a, int64_t qt, int64_t rt) {
  uint32_t masks[32];
  V values[32 * 16];
  const int group = a.nr * a.lanes;
  if (!a.tile(a.queries + qt * a.q_tile_bytes, a.refs + rt * a.r_tile_bytes, a.steps, a.bias + rt * group,
              a.thr + qt * a.mr, masks, values))
    return;
  for (int i = 0; i < a.mr; ++i) {
    const int64_t query = qt * a.mr + i;
    for (int j = 0; j < a.nr; ++j)
      for (uint32_t m = masks[i * a.nr + j]; m; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        const V v = values[(i * a.nr + j) * a.lanes + lane];
        if (v < a.thr[query]) insert(a, query, v, rt * group + j * a.lanes + lane);
      }
  }
}

// Query tiles [t_begin, t_end) of the search, against every reference.
template <typename V>
void search_tiles(const Search<V>& a, int64_t t_begin, int64_t t_end) {
  if (a.order == REFS_INNER) {
    for (int64_t rb = 0; rb < a.r_tiles; rb += a.block) {
      const int64_t rb_end = std::min(rb + a.block, a.r_tiles);
      for (int64_t qt = t_begin; qt < t_end; ++qt)
        for (int64_t rt = rb; rt < rb_end; ++rt) tile(a, qt, rt);
    }
  } else {
    for (int64_t qb = t_begin; qb < t_end; qb += a.block) {
      const int64_t qb_end = std::min(qb + a.block, t_end);
      for (int64_t rt = 0; rt < a.r_tiles; ++rt)
        for (int64_t qt = qb; qt < qb_end; ++qt) tile(a, qt, rt);
    }
  }
}

template <typename V>
void run(const Search<V>& a, int threads) {
  std::fill(a.best_dist, a.best_dist + a.nq * a.k, std::numeric_limits<int64_t>::max());
  std::fill(a.best_index, a.best_index + a.nq * a.k, int64_t{-1});
  for (int64_t q = 0; q < a.q_tiles * a.mr; ++q) a.thr[q] = q < a.nq ? OPEN<V> : CLOSED<V>;
  parallel_for(a.q_tiles, threads, [&a](int64_t begin, int64_t end) { search_tiles(a, begin, end); });
}

// 2: AVX-512 BW + VNNI (L1 and L2); 1: AVX2 (L1); 0: neither.
int isa_level() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni")) return 2;
  if (__builtin_cpu_supports("avx2")) return 1;
  return 0;
}

// The tile shapes compiled for this metric and level (null where there are none).
template <typename V>
const Tile<V>* tiles_of(int level, int* count);

template <>
const Tile<int64_t>* tiles_of<int64_t>(int level, int* count) {
  if (level == 2) { *count = std::size(avx512::l1_tiles); return avx512::l1_tiles; }
  if (level == 1) { *count = std::size(avx2::l1_tiles); return avx2::l1_tiles; }
  *count = 0;
  return nullptr;
}

template <>
const Tile<int32_t>* tiles_of<int32_t>(int level, int* count) {
  if (level == 2) { *count = std::size(avx512::l2_tiles); return avx512::l2_tiles; }
  *count = 0;
  return nullptr;
}

template <typename V>
TileFn<V> find_tile(int level, int mr, int nr) {
  int count = 0;
  const Tile<V>* tiles = tiles_of<V>(level, &count);
  for (int n = 0; n < count; ++n)
    if (tiles[n].mr == mr && tiles[n].nr == nr) return tiles[n].fn;
  return nullptr;
}

template <typename V>
int search(int level, int mr, int nr, int order, int64_t block, const uint8_t* queries, int64_t nq,
           const uint8_t* refs, int64_t r_tiles, int64_t steps, const int64_t* query_norms, const V* bias, int k,
           int64_t* best_dist, int64_t* best_index, int threads) {
  const TileFn<V> fn = find_tile<V>(level, mr, nr);
  if (fn == nullptr || k < 1 || block < 1 || (order != REFS_INNER && order != QUERIES_INNER)) return -1;
  const int vbytes = level == 2 ? 64 : 32;
  const int chunk = sizeof(V) == 4 ? 4 : 8;
  const int lanes = vbytes / chunk;
  const int64_t q_tiles = (nq + mr - 1) / mr;
  std::vector<V> thr(q_tiles * mr);
  const Search<V> a{fn, mr, nr, lanes, k, order, block, queries, q_tiles, steps * mr * chunk, refs, r_tiles,
                    steps * nr * vbytes, steps, bias, query_norms, nq, thr.data(), best_dist, best_index};
  run(a, threads);
  return 0;
}

// Tiles [t_begin, t_end) of imgcls_knn_pack, one chunk (a Word of bytes) at a time, in the
// order they are written.
template <typename Word>
void pack(const uint8_t* rows, int64_t n, int64_t dim, int64_t tile_rows, int centre, uint8_t* out, int64_t t_begin,
          int64_t t_end) {
  constexpr int64_t chunk = sizeof(Word);
  const int64_t steps = (dim + chunk - 1) / chunk, whole = dim / chunk;
  const Word flip = centre ? static_cast<Word>(0x8080808080808080ull) : 0;
  const Word last_flip = flip & ((Word{1} << (8 * (dim % chunk))) - 1);   // only for a partial last step
  Word* o = reinterpret_cast<Word*>(out) + t_begin * steps * tile_rows;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t real = std::max<int64_t>(0, std::min(tile_rows, n - t * tile_rows));
    const uint8_t* x = rows + t * tile_rows * dim;
    for (int64_t s = 0; s < steps; ++s, o += tile_rows) {
      if (s < whole) {
        for (int64_t r = 0; r < real; ++r) {
          Word word;
          std::memcpy(&word, x + r * dim + s * chunk, chunk);
          o[r] = word ^ flip;
        }
      } else {
        for (int64_t r = 0; r < real; ++r) {
          Word word = 0;
          std::memcpy(&word, x + r * dim + s * chunk, dim % chunk);
          o[r] = word ^ last_flip;
        }
      }
      std::fill(o + real, o + tile_rows, Word{0});
    }
  }
}

}  // namespace

extern "C" {

int imgcls_knn_isa() { return isa_level(); }

// The tile shapes for a metric at an instruction-set level, as (mr, nr) pairs in `out` (room
// for `cap` pairs); returns how many there are (0 where there is no kernel).
int imgcls_knn_shapes(int metric, int level, int* out, int cap) {
  int count = 0;
  if (metric == METRIC_L1) {
    const Tile<int64_t>* tiles = tiles_of<int64_t>(level, &count);
    for (int n = 0; n < std::min(count, cap); ++n) { out[2 * n] = tiles[n].mr; out[2 * n + 1] = tiles[n].nr; }
  } else if (metric == METRIC_L2) {
    const Tile<int32_t>* tiles = tiles_of<int32_t>(level, &count);
    for (int n = 0; n < std::min(count, cap); ++n) { out[2 * n] = tiles[n].mr; out[2 * n + 1] = tiles[n].nr; }
  }
  return count;
}

// Copies n rows of dim bytes into `out` as `tiles` tiles of tile_rows rows: tile t holds, for
// each step s of `chunk` (4 or 8) bytes, the chunk of each of its rows in turn (bytes past dim,
// and rows past n, are zeros); XOR 0x80 when `centre`, which turns x into x - 128 read as int8.
void imgcls_knn_pack(const uint8_t* rows, int64_t n, int64_t dim, int64_t tile_rows, int64_t chunk, int64_t tiles,
                     int centre, uint8_t* out, int threads) {
  if (chunk == 4) parallel_for(tiles, threads, [&](int64_t a, int64_t b) { pack<uint32_t>(rows, n, dim, tile_rows, centre, out, a, b); });
  else parallel_for(tiles, threads, [&](int64_t a, int64_t b) { pack<uint64_t>(rows, n, dim, tile_rows, centre, out, a, b); });
}

// Each row's sum of squares and sum of bytes.
void imgcls_knn_stats(const uint8_t* rows, int64_t n, int64_t dim, int64_t* squares, int64_t* sums, int threads) {
  parallel_for(n, threads, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) {
      const uint8_t* x = rows + r * dim;
      uint64_t sq = 0, total = 0;
      for (int64_t c = 0; c < dim; ++c) {
        sq += static_cast<uint32_t>(x[c]) * x[c];
        total += x[c];
      }
      squares[r] = static_cast<int64_t>(sq);
      sums[r] = static_cast<int64_t>(total);
    }
  });
}

// The bias of each of `padded` packed references (n real ones first): L1, int64: 0, and OPEN on
// padding; L2, int32: ||t||^2 - 256 sum(t) from the rows' stats, and OPEN on padding.
void imgcls_knn_bias(int metric, const int64_t* squares, const int64_t* sums, int64_t n, int64_t padded, void* out) {
  if (metric == METRIC_L1) {
    int64_t* b = static_cast<int64_t*>(out);
    for (int64_t r = 0; r < padded; ++r) b[r] = r < n ? 0 : OPEN<int64_t>;
  } else {
    int32_t* b = static_cast<int32_t*>(out);
    for (int64_t r = 0; r < padded; ++r) b[r] = r < n ? static_cast<int32_t>(squares[r] - 256 * sums[r]) : OPEN<int32_t>;
  }
}

// The k nearest of nq queries among the references, with tile shape (mr, nr), loop order and
// block (in tiles) as given. queries: packed in tiles of mr rows (L2: centred); refs: r_tiles
// tiles of nr groups; bias: one per packed reference, int64 (L1) or int32 (L2). Returns 0, or
// -1 where this build has no such tile for the metric at that level.
int imgcls_knn_search(int metric, int level, int mr, int nr, int order, int64_t block, const uint8_t* queries,
                      int64_t nq, const uint8_t* refs, int64_t r_tiles, int64_t steps, const int64_t* query_norms,
                      const void* bias, int k, int64_t* best_dist, int64_t* best_index, int threads) {
  if (level > isa_level()) return -1;
  if (metric == METRIC_L1)
    return search<int64_t>(level, mr, nr, order, block, queries, nq, refs, r_tiles, steps, nullptr,
                           static_cast<const int64_t*>(bias), k, best_dist, best_index, threads);
  if (metric == METRIC_L2)
    return search<int32_t>(level, mr, nr, order, block, queries, nq, refs, r_tiles, steps, query_norms,
                           static_cast<const int32_t*>(bias), k, best_dist, best_index, threads);
  return -1;
}

}  // extern "C"

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_knn", "uint8 kNN kernels (called through ctypes)", -1,
                             nullptr};

PyMODINIT_FUNC PyInit__knn(void) { return PyModule_Create(&module); }
