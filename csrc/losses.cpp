// CPU kernels of the fused losses (module depth_anything_fast._C), pybind11 + OpenMP.
//
// They implement the kernel interface of the project's CONTRACTS (shared with the Triton
// kernels): flattened float32 images (B, L), optional bool mask and int32 segments (B, L).
// Arrays come in through the buffer protocol (numpy views of torch tensors); outputs are
// preallocated by the caller and written in place, so no torch headers are needed.
//
// Affine-invariant loss: per group g = (image, segment) the lower median t (rank (n-1)/2) and
// s = max(mean|x - t|, 1e-6) of pred and of target, then one fused pass for the loss, the code
// byte of each pixel and the per-group sums the backward needs; the backward is one pass over the
// code bytes. Reads of an image per forward: a group-id pass (target, mask, segments), for each
// group of >= 4096 pixels one sample-select pass giving the exact median and deviation of pred
// and target together (`sample_select_group`), and the loss pass. Smaller groups, and the rare
// sample that misses the median, are gathered and radix-selected instead (`radix_select`).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <pybind11/stl.h>

#include "stats_layout.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace py = pybind11;

// The per-pixel passes of the affine-invariant forward are compiled twice: for the baseline ISA
// and for AVX2 (x86-64 only), and each call picks one (`set_cpu_isa`, default: the best the CPU
// has), so the wheel stays portable while AVX2 machines get 8-wide loops and a table-driven
// compaction. Both compile from the same source (templates inlined into the two entry points)
// without FMA: they round alike; only the order of float partial sums within a block differs.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DAF_X86_AVX2 1
#else
#define DAF_X86_AVX2 0
#endif
// Inlined into each ISA's entry point, so compiled for that ISA.
#define DAF_INLINE [[gnu::always_inline]] inline

namespace {

constexpr double kCosEps = 1e-8;

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

constexpr int64_t kBlock = 512;  // float partial sums per block, double across blocks

// isfinite on the exponent bits (all ones for inf and NaN).
inline bool is_finite(float x) {
  return (__builtin_bit_cast(uint32_t, x) & 0x7F800000u) != 0x7F800000u;
}


// Outputs are fresh allocations of the caller, which the OS maps page by page on first write:
// for a 90 MB gradient the 4 KiB page faults cost more than the arithmetic. Asking for
// transparent huge pages on the untouched buffer (THP in "madvise" mode, as on this project's
// machines) makes that ~45 faults instead of ~22000. Advisory: ignored where unsupported.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data, (void)bytes;
#endif
}

template <typename T>
T* data_2d(Array<T>& a, const char* name, int64_t rows, int64_t cols) {
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols) {
    throw std::invalid_argument(std::string(name) + " must have shape (" + std::to_string(rows) +
                                ", " + std::to_string(cols) + ")");
  }
  return a.mutable_data();
}

template <typename T>
T* data_n(Array<T>& a, const char* name, int64_t n) {
  if (a.size() != n) {
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(n) +
                                " elements, got " + std::to_string(a.size()));
  }
  return a.mutable_data();
}

// Pointers of one forward call.
struct ImageBatch {
  const float* pred;
  const float* target;
  const float* target_b;    // CutMix: the target outside the box (nullptr: none)
  const bool* mask;         // nullptr: every pixel passes the mask
  const int32_t* segments;  // nullptr: one segment (or the box decides)
  const bool* box;          // CutMix box: segment 0 and `target` inside, 1 and `target_b` outside
  int64_t batch;
  int64_t length;
  int num_segments;
};

ImageBatch make_batch(Array<float>& pred, Array<float>& target,
                      std::optional<Array<float>>& target_b, std::optional<Array<bool>>& mask,
                      std::optional<Array<int32_t>>& segments, std::optional<Array<bool>>& box,
                      int64_t num_segments) {
  if (pred.ndim() != 2) throw std::invalid_argument("pred must be 2-D (B, L)");
  if (num_segments < 1) throw std::invalid_argument("num_segments must be >= 1");
  if (target_b.has_value() != box.has_value() || (box && segments)) {
    throw std::invalid_argument("CutMix needs target_b and box together, without segments");
  }
  if (box && num_segments != 2) throw std::invalid_argument("a CutMix box makes 2 segments");
  ImageBatch x{};
  x.batch = pred.shape(0);
  x.length = pred.shape(1);
  x.num_segments = static_cast<int>(num_segments);
  x.pred = pred.data();
  x.target = data_2d(target, "target", x.batch, x.length);
  x.target_b = target_b ? data_2d(*target_b, "target_b", x.batch, x.length) : nullptr;
  x.mask = mask ? data_2d(*mask, "mask", x.batch, x.length) : nullptr;
  x.segments = segments ? data_2d(*segments, "segments", x.batch, x.length) : nullptr;
  x.box = box ? data_2d(*box, "box", x.batch, x.length) : nullptr;
  return x;
}

// Order-preserving map float -> uint32 (negatives: flip all bits; others: flip the sign bit).
inline uint32_t order_key(float x) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, x);
  // Arithmetic shift of the sign bit: all ones for negatives, zero otherwise (branch-free).
  return bits ^ (static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) | 0x80000000u);
}

inline float key_value(uint32_t key) {
  return __builtin_bit_cast(float, key ^ ((key & 0x80000000u) ? 0x80000000u : 0xFFFFFFFFu));
}

// Element of rank k of values[0, n) by radix select on order keys: digits of 11, 11 and 10 bits,
// most significant first; each level histograms the candidates, keeps the bin holding rank k
// (compacted into `candidates`, length >= n) and descends. Two histogram passes over the data in
// the common case, against the several branchy partition passes of std::nth_element.
float radix_select(const float* values, int64_t n, int64_t k, std::vector<float>& candidates) {
  constexpr int kShifts[3] = {21, 10, 0};
  constexpr uint32_t kMasks[3] = {0x7FFu, 0x7FFu, 0x3FFu};
  uint32_t hist[2048];
  const float* cand = values;
  int64_t m = n;
  uint32_t key = 0;
  for (int level = 0; level < 3; ++level) {
    const int shift = kShifts[level];
    const uint32_t mask = kMasks[level];
    std::fill(hist, hist + mask + 1, 0u);
    for (int64_t i = 0; i < m; ++i) ++hist[(order_key(cand[i]) >> shift) & mask];
    uint32_t bin = 0;
    for (int64_t before = 0;; ++bin) {
      if (before + static_cast<int64_t>(hist[bin]) > k) {
        k -= before;
        break;
      }
      before += hist[bin];
    }
    key |= bin << shift;
    if (level == 2 || hist[bin] == m) {  // done, or every candidate shares this digit
      if (level == 2) break;
      continue;
    }
    float* out = candidates.data();
    int64_t j = 0;
    for (int64_t i = 0; i < m; ++i) {  // branchless compaction (out may alias cand: j <= i)
      const float x = cand[i];
      out[j] = x;
      j += ((order_key(x) >> shift) & mask) == bin;
    }
    cand = out;
    m = j;
  }
  return key_value(key);
}

// Lower median t of a group's values (rank (n-1)/2) and mean|x - t| (accumulated in double).
struct Location {
  float t = 0.0f;
  double mean_abs_dev = 0.0;
};

Location radix_location(const float* values, int64_t n, std::vector<float>& candidates) {
  const float t = radix_select(values, n, (n - 1) / 2, candidates);
  double dev = 0.0;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    float part = 0.0f;
#pragma omp simd reduction(+ : part)
    for (int64_t i = i0; i < i1; ++i) part += std::fabs(values[i] - t);
    dev += part;
  }
  return {t, dev / static_cast<double>(n)};
}

// Groups with fewer pixels than this are gathered and radix-selected (a sample would be most of
// them); larger ones go through the sample select below.
constexpr int64_t kSampleSelectMin = 4096;

// Sample select (Floyd-Rivest) of one array of a group, in place in the image: the keys of a
// strided sample give pivots lo <= c <= hi whose ranks in the group bracket rank k with ~3
// standard deviations to spare (a miss, ~0.3% of groups, costs a radix select). One pass
// (`bracket_pass`) counts the group's values below lo, sums x - c below lo and above hi, and
// collects the few keys in [lo, hi]; the exact rank is then selected among those, and
// sum|x - t| = S_above - S_below + (t - c)(n_below - n_above) + sum over the bracket of |x - t|
// needs no second pass (x - c, not x, keeps the sums small).
// Keys, not floats, are compared: NaN ranks as in the radix select (beyond +-inf), ties exact.
// The keys here are signed (`signed_key`): AVX2 has signed 32-bit compares only.
inline int32_t signed_key(float x) {
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);  // negatives: flip all but the sign bit
}

inline float signed_key_value(int32_t key) {  // signed_key is its own inverse on the bits
  return __builtin_bit_cast(float, key ^ ((key >> 31) & 0x7FFFFFFF));
}

// x where flag is 1, +0.0 where it is 0, in integer lanes: a select on floats would keep GCC
// from vectorising the passes below for SSE2, and x * flag would turn masked-out inf into NaN.
inline float keep_if(float x, int32_t flag) {
  return __builtin_bit_cast(float, __builtin_bit_cast(int32_t, x) & -flag);
}

struct Bracket {
  int32_t key_lo = 0, key_hi = 0;
  float c = 0.0f;
  double sum_below = 0.0, sum_above = 0.0;
  int64_t below = 0, size = 0;  // counts below lo and in [lo, hi]; the rest are above hi
};

// Pivots from the sample's keys (reordered in place); false when the sample cannot bracket
// rank k reliably (too small) or its centre is not finite (x - c would lose the deviations).
bool choose_pivots(std::vector<int32_t>& sample, int64_t n, Bracket& bracket) {
  const auto m = static_cast<int64_t>(sample.size());
  if (m < 256) return false;
  const double q = (static_cast<double>((n - 1) / 2) + 0.5) / static_cast<double>(n);
  const int64_t centre = std::min<int64_t>(static_cast<int64_t>(q * static_cast<double>(m)), m - 1);
  const auto margin =
      static_cast<int64_t>(3.0 * std::sqrt(static_cast<double>(m) * q * (1.0 - q))) + 2;
  const int64_t lo = std::max<int64_t>(centre - margin, 0);
  const int64_t hi = std::min<int64_t>(centre + margin, m - 1);
  const auto begin = sample.begin();
  std::nth_element(begin, begin + centre, sample.end());
  std::nth_element(begin, begin + lo, begin + centre);
  std::nth_element(begin + centre, begin + hi, sample.end());
  bracket.key_lo = sample[lo];
  bracket.key_hi = sample[hi];
  bracket.c = signed_key_value(sample[centre]);
  return is_finite(bracket.c);
}

// The location from a bracket filled by `bracket_pass` over a group of n values and the
// bracket's keys (reordered); nullopt when the bracket missed rank k (an unlucky or adversarial
// sample: the caller radix-selects instead).
std::optional<Location> bracket_location(const Bracket& bracket, int32_t* keys, int64_t n) {
  const int64_t k = (n - 1) / 2;
  if (k < bracket.below || k >= bracket.below + bracket.size) return std::nullopt;
  std::nth_element(keys, keys + (k - bracket.below), keys + bracket.size);
  const float t = signed_key_value(keys[k - bracket.below]);
  double dev = 0.0;
#pragma omp simd reduction(+ : dev)
  for (int64_t j = 0; j < bracket.size; ++j) {
    dev += std::fabs(static_cast<double>(signed_key_value(keys[j])) - t);
  }
  const int64_t above = n - bracket.below - bracket.size;
  dev += bracket.sum_above - bracket.sum_below +
         (static_cast<double>(t) - bracket.c) * static_cast<double>(bracket.below - above);
  return Location{t, dev / static_cast<double>(n)};
}

#if DAF_X86_AVX2
// out[j...] = keys[i] for the i of [0, kBlock) with flags[i] = 1, in order: eight at a time,
// each eight permuted by a table indexed with their flag bits and stored unaligned (writes up to
// 7 slots past the last kept key). Branch-free: the bracket is a few per cent of the pixels,
// scattered, so a per-pixel branch would mispredict on most of its hits.
struct LeftPackTable {
  uint64_t lanes[256];  // byte k: the lane of the k-th set bit of the index
  constexpr LeftPackTable() : lanes() {
    for (int bits = 0; bits < 256; ++bits) {
      int k = 0;
      for (int lane = 0; lane < 8; ++lane) {
        if ((bits >> lane) & 1) lanes[bits] |= static_cast<uint64_t>(lane) << (8 * k++);
      }
    }
  }
};
constexpr LeftPackTable kLeftPack;

__attribute__((target("avx2"))) int64_t append_flagged_avx2(const int32_t* flags,
                                                            const int32_t* keys, int32_t* out,
                                                            int64_t j) {
  for (int64_t i = 0; i < kBlock; i += 8) {
    const __m256i f = _mm256_load_si256(reinterpret_cast<const __m256i*>(flags + i));
    const auto bits = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(f, 31))));
    const __m256i lanes = _mm256_cvtepu8_epi32(
        _mm_cvtsi64_si128(static_cast<long long>(kLeftPack.lanes[bits])));
    const __m256i k = _mm256_load_si256(reinterpret_cast<const __m256i*>(keys + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j),
                        _mm256_permutevar8x32_epi32(k, lanes));
    j += __builtin_popcount(bits);
  }
  return j;
}
#endif

template <bool kAvx2>
int64_t append_flagged(const int32_t* flags, const int32_t* keys, int32_t* out, int64_t j) {
#if DAF_X86_AVX2
  if constexpr (kAvx2) return append_flagged_avx2(flags, keys, out, j);
#endif
  for (int64_t i = 0; i < kBlock; ++i) {  // branch-free compaction (writes one slot past)
    out[j] = keys[i];
    j += flags[i];
  }
  return j;
}

// The pass of the sample select over one image for group `segment`, pred and target at once.
// All lanes are 32-bit (flags and keys go through int32 block buffers) so that the loop
// vectorises at the full register width.
template <bool kAvx2>
DAF_INLINE void bracket_pass(const float* __restrict p, const float* __restrict g,
                             const int32_t* __restrict gid, int32_t segment, int64_t L,
                             Bracket& bp, Bracket& bg, int32_t* __restrict keys_p,
                             int32_t* __restrict keys_g) {
  alignas(64) int32_t flags_p[kBlock], flags_g[kBlock], block_p[kBlock], block_g[kBlock];
  const int32_t p_lo = bp.key_lo, p_hi = bp.key_hi, g_lo = bg.key_lo, g_hi = bg.key_hi;
  const float p_c = bp.c, g_c = bg.c;
  int64_t jp = 0, jg = 0;
  for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
    const int64_t len = L - i0 < kBlock ? L - i0 : kBlock;
    const float* pb = p + i0;
    const float* gb = g + i0;
    const int32_t* gidb = gid + i0;
    float sp_lo = 0.0f, sp_hi = 0.0f, sg_lo = 0.0f, sg_hi = 0.0f;
    int32_t np_lo = 0, ng_lo = 0;
#pragma omp simd reduction(+ : sp_lo, sp_hi, sg_lo, sg_hi, np_lo, ng_lo)
    for (int64_t i = 0; i < len; ++i) {
      const int32_t in = gidb[i] == segment;
      const int32_t kp = signed_key(pb[i]), kg = signed_key(gb[i]);
      block_p[i] = kp;
      block_g[i] = kg;
      const int32_t below_p = in & (kp < p_lo), above_p = in & (kp > p_hi);
      const int32_t below_g = in & (kg < g_lo), above_g = in & (kg > g_hi);
      flags_p[i] = in & (kp >= p_lo) & (kp <= p_hi);
      flags_g[i] = in & (kg >= g_lo) & (kg <= g_hi);
      const float dp = pb[i] - p_c, dg = gb[i] - g_c;
      sp_lo += keep_if(dp, below_p);
      sp_hi += keep_if(dp, above_p);
      sg_lo += keep_if(dg, below_g);
      sg_hi += keep_if(dg, above_g);
      np_lo += below_p, ng_lo += below_g;
    }
    for (int64_t i = len; i < kBlock; ++i) flags_p[i] = flags_g[i] = 0;  // the last block's tail
    bp.sum_below += sp_lo, bp.sum_above += sp_hi, bp.below += np_lo;
    bg.sum_below += sg_lo, bg.sum_above += sg_hi, bg.below += ng_lo;
    jp = append_flagged<kAvx2>(flags_p, block_p, keys_p, jp);
    jg = append_flagged<kAvx2>(flags_g, block_g, keys_g, jg);
  }
  bp.size = jp;
  bg.size = jg;
}

// Per-thread buffers of one image's forward, kept across calls (see affine_invariant_forward):
// fresh multi-MiB buffers would be page-faulted in (zeroed by the kernel) on every call.
struct ForwardScratch {
  std::vector<int32_t> gid;                 // L: group of each pixel, -1 if invalid
  std::vector<float> pred_buf, target_buf;  // L + 1: gathered values of small groups
  std::vector<float> candidates;            // L: radix select
  std::vector<int32_t> keys_p, keys_g;      // L + 8: the sample select's brackets
  std::vector<int32_t> sample_p, sample_g;
  std::vector<float> picked;  // L: CutMix's per-pixel target

  void reserve(int64_t L, bool cutmix) {
    const auto n = static_cast<size_t>(L);
    if (gid.size() < n) {
      gid.resize(n);
      // +1 / +8: the branch-free compactions write past the last kept element
      pred_buf.resize(n + 1);
      target_buf.resize(n + 1);
      candidates.resize(n);
      keys_p.resize(n + 8);
      keys_g.resize(n + 8);
    }
    if (cutmix && picked.size() < n) picked.resize(n);
  }
};

// Sample select of group `segment` (count n >= kSampleSelectMin) for pred and target. The sample
// takes the group's pixels among evenly spaced positions, ~8 sqrt(n) of them expected in the group.
template <bool kAvx2>
DAF_INLINE std::pair<std::optional<Location>, std::optional<Location>> sample_select_group(
    const float* p, const float* g, const int32_t* gid, int32_t segment, int64_t L, int64_t n,
    ForwardScratch& scratch) {
  const double m = 8.0 * std::sqrt(static_cast<double>(n));
  const int64_t positions = std::min<int64_t>(
      L, static_cast<int64_t>(m * static_cast<double>(L) / static_cast<double>(n)));
  const double step = static_cast<double>(L) / static_cast<double>(positions);
  scratch.sample_p.clear();
  scratch.sample_g.clear();
  for (int64_t j = 0; j < positions; ++j) {
    const auto i = static_cast<int64_t>((static_cast<double>(j) + 0.5) * step);
    if (gid[i] != segment) continue;
    scratch.sample_p.push_back(signed_key(p[i]));
    scratch.sample_g.push_back(signed_key(g[i]));
  }
  Bracket bp, bg;
  const bool ok_p = choose_pivots(scratch.sample_p, n, bp);
  const bool ok_g = choose_pivots(scratch.sample_g, n, bg);
  if (!ok_p && !ok_g) return {std::nullopt, std::nullopt};
  bracket_pass<kAvx2>(p, g, gid, segment, L, bp, bg, scratch.keys_p.data(),
                      scratch.keys_g.data());
  return {ok_p ? bracket_location(bp, scratch.keys_p.data(), n) : std::nullopt,
          ok_g ? bracket_location(bg, scratch.keys_g.data(), n) : std::nullopt};
}

struct GroupSums {
  double loss = 0.0, r = 0.0, rp = 0.0;
  int64_t sign_p = 0;
  int64_t median_index = -1;  // lowest pixel of the group whose pred equals the median
};

// Loss pass over one image in pixel order, for the pixels with gid == segment:
// sum|p^ - g^|, A = sum sign(r), Bsum = sum sign(r) p^, C = sum sign(p - t), the code byte of each
// pixel (stats_layout.h) and the median index. Float partial sums per block. Other pixels may
// hold inf/NaN, so they are masked out (`keep_if`), never multiplied by 0. Signs are 0/1 int32
// lanes and the codes go through an int32 block buffer, so that the loop has 32-bit lanes only.
DAF_INLINE GroupSums loss_pass(const float* __restrict p, const float* __restrict g,
                               const int32_t* __restrict gid, int32_t segment, int64_t L,
                               float tp, float inv_sp, float tg, float inv_sg,
                               int32_t segment_bits, uint8_t* __restrict codes) {
  using namespace stats_layout;
  GroupSums sums;
  alignas(64) int32_t code_block[kBlock];
  for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
    const int64_t len = L - i0 < kBlock ? L - i0 : kBlock;
    const float* pb = p + i0;
    const float* gb = g + i0;
    const int32_t* gidb = gid + i0;
    float l = 0.0f, bs = 0.0f;
    int32_t r_pos = 0, r_neg = 0, q_pos = 0, q_neg = 0, at_median = 0;
#pragma omp simd reduction(+ : l, bs, r_pos, r_neg, q_pos, q_neg, at_median)
    for (int64_t i = 0; i < len; ++i) {
      const int32_t in = gidb[i] == segment;
      const float ph = (pb[i] - tp) * inv_sp;
      const float gh = (gb[i] - tg) * inv_sg;
      const float d = ph - gh;
      const int32_t rp = in & (d > 0.0f), rn = in & (d < 0.0f);  // r = sign(p^ - g^)
      const int32_t qp = in & (pb[i] > tp), qn = in & (pb[i] < tp);  // q = sign(p - t)
      l += keep_if(std::fabs(d), in);
      bs += keep_if(ph, rp) - keep_if(ph, rn);
      r_pos += rp, r_neg += rn, q_pos += qp, q_neg += qn;
      at_median += in & (pb[i] == tp);
      const int32_t code = rp * kCodeRPos + rn * kCodeRNeg + qp * kCodePPos + qn * kCodePNeg;
      code_block[i] = code + (code != 0) * segment_bits;
    }
    for (int64_t i = 0; i < len; ++i) codes[i0 + i] |= static_cast<uint8_t>(code_block[i]);
    sums.loss += l, sums.r += r_pos - r_neg, sums.rp += bs, sums.sign_p += q_pos - q_neg;
    if (at_median > 0 && sums.median_index < 0) {  // once per group: find it in this block
      int64_t i = i0;
      while (!(gid[i] == segment && p[i] == tp)) ++i;
      sums.median_index = i;
    }
  }
  return sums;
}

// The steps of one image's forward (`forward_image` below), in order.

// Step 1: the group of each pixel into scratch.gid (its segment, -1 if invalid: masked, target
// not finite, segment out of range). Returns the image's target: CutMix picks each pixel's from
// the box (into scratch.picked), whose pixels are segment 0 (true: `target`) and 1.
DAF_INLINE const float* assign_groups(const ImageBatch& x, int64_t b, ForwardScratch& scratch) {
  const int64_t L = x.length;
  const float* g = x.target + b * L;
  int32_t* gid = scratch.gid.data();
  if (x.box != nullptr) {  // CutMix: each pixel's target and segment from the box
    const uint8_t* box = reinterpret_cast<const uint8_t*>(x.box + b * L);
    const float* gb = x.target_b + b * L;
    float* picked = scratch.picked.data();
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) picked[i] = box[i] ? g[i] : gb[i];
    g = picked;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] = is_finite(g[i]) ? 1 - box[i] : -1;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] = is_finite(g[i]) ? 0 : -1;
  }
  // NaN predictions need no special case: their order keys rank them beyond +-inf, and the NaN
  // propagates into the loss through the loss pass.
  if (x.mask != nullptr) {
    const bool* m = x.mask + b * L;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] |= static_cast<int32_t>(m[i]) - 1;  // -1 if masked
  }
  if (x.segments != nullptr) {
    const int32_t* seg = x.segments + b * L;
    const uint32_t num = static_cast<uint32_t>(x.num_segments);
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) {  // unsigned compare: negative segments are out of range
      gid[i] = static_cast<uint32_t>(seg[i]) < num ? (gid[i] | seg[i]) : -1;
    }
  }
  return g;
}

// Per group: its valid-pixel count and the lower median / mean absolute deviation of pred and
// target.
struct GroupLocations {
  std::vector<int64_t> count;
  std::vector<Location> p, g;
  explicit GroupLocations(int S) : count(S, 0), p(S), g(S) {}
};

// Step 2, few groups: each one's count in a vectorised pass, its selection in place in the image
// when large (sample select), otherwise on a branch-free gathered copy.
template <bool kAvx2>
DAF_INLINE void locate_few_groups(const float* p, const float* g, const int32_t* gid, int64_t L,
                                  ForwardScratch& scratch, GroupLocations& loc) {
  const int S = static_cast<int>(loc.count.size());
  for (int s = 0; s < S; ++s) {
    int64_t n = 0;
#pragma omp simd reduction(+ : n)
    for (int64_t i = 0; i < L; ++i) n += gid[i] == s;
    loc.count[s] = n;
    if (n == 0) continue;
    std::optional<Location> lp, lg;
    if (n >= kSampleSelectMin) {
      std::tie(lp, lg) = sample_select_group<kAvx2>(p, g, gid, s, L, n, scratch);
    }
    if (lp && lg) {
      loc.p[s] = *lp, loc.g[s] = *lg;
      continue;
    }
    float* pb = scratch.pred_buf.data();
    float* tb = scratch.target_buf.data();
    int64_t k = 0;
    for (int64_t i = 0; i < L; ++i) {
      pb[k] = p[i];
      tb[k] = g[i];
      k += gid[i] == s;
    }
    loc.p[s] = lp ? *lp : radix_location(pb, n, scratch.candidates);
    loc.g[s] = lg ? *lg : radix_location(tb, n, scratch.candidates);
  }
}

// Step 2, many groups: one counting pass and one scatter pass gather them all.
DAF_INLINE void locate_many_groups(const float* p, const float* g, const int32_t* gid, int64_t L,
                                   ForwardScratch& scratch, GroupLocations& loc) {
  const int S = static_cast<int>(loc.count.size());
  std::vector<int64_t>& count = loc.count;
  for (int64_t i = 0; i < L; ++i) {
    if (gid[i] >= 0) ++count[gid[i]];
  }
  std::vector<int64_t> offset(S, 0);
  for (int s = 1; s < S; ++s) offset[s] = offset[s - 1] + count[s - 1];
  std::vector<int64_t> fill(offset);
  for (int64_t i = 0; i < L; ++i) {
    const int grp = gid[i];
    if (grp < 0) continue;
    const int64_t k = fill[grp]++;
    scratch.pred_buf[k] = p[i];
    scratch.target_buf[k] = g[i];
  }
  for (int s = 0; s < S; ++s) {
    if (count[s] == 0) continue;
    std::vector<float>& candidates = scratch.candidates;
    loc.p[s] = radix_location(scratch.pred_buf.data() + offset[s], count[s], candidates);
    loc.g[s] = radix_location(scratch.target_buf.data() + offset[s], count[s], candidates);
  }
}

// Step 3: per group the scales s = max(mean|x - t|, eps) of pred and target, and whether pred's
// is above the clamp (its gradient term is active).
struct GroupScales {
  std::vector<float> p, g;
  std::vector<uint8_t> active;
};

DAF_INLINE GroupScales group_scales(const GroupLocations& loc) {
  using namespace stats_layout;
  const int S = static_cast<int>(loc.count.size());
  GroupScales scale{std::vector<float>(S, kScaleEps), std::vector<float>(S, kScaleEps),
                    std::vector<uint8_t>(S, 0)};
  for (int s = 0; s < S; ++s) {
    if (loc.count[s] == 0) continue;
    scale.p[s] = std::max(static_cast<float>(loc.p[s].mean_abs_dev), kScaleEps);
    scale.g[s] = std::max(static_cast<float>(loc.g[s].mean_abs_dev), kScaleEps);
    scale.active[s] = loc.p[s].mean_abs_dev > kScaleEps;
  }
  return scale;
}

// Step 4: the loss pass of each group in pixel order: its sums, the code bytes and the median
// indices.
DAF_INLINE std::vector<GroupSums> loss_passes(const float* p, const float* g, const int32_t* gid,
                                              int64_t L, const GroupLocations& loc,
                                              const GroupScales& scale, uint8_t* codes) {
  using namespace stats_layout;
  const int S = static_cast<int>(loc.count.size());
  std::fill(codes, codes + L, uint8_t{0});
  std::vector<GroupSums> sums(S);
  const bool segment_in_code = S > 1 && S <= kCodeMaxSegments;
  for (int s = 0; s < S; ++s) {
    if (loc.count[s] == 0) continue;
    const int32_t bits = segment_in_code ? s << kCodeSegmentShift : 0;
    sums[s] = loss_pass(p, g, gid, s, L, loc.p[s].t, 1.0f / scale.p[s], loc.g[s].t,
                        1.0f / scale.g[s], bits, codes);
  }
  return sums;
}

// Step 5: the image's stats and counts rows (stats_layout.h), from which the backward needs
// nothing but the code bytes. Returns the image's loss (0 without a valid pixel) and its
// valid-pixel count.
DAF_INLINE std::pair<double, int64_t> write_image_stats(const GroupLocations& loc,
                                                        const GroupScales& scale,
                                                        const std::vector<GroupSums>& sums,
                                                        float* stats, int64_t* counts) {
  using namespace stats_layout;
  const int S = static_cast<int>(loc.count.size());
  double total = 0.0;
  int64_t n_image = 0;
  for (int s = 0; s < S; ++s) {
    total += sums[s].loss;
    n_image += loc.count[s];
  }
  const double weight = n_image > 0 ? 1.0 / static_cast<double>(n_image) : 0.0;
  for (int s = 0; s < S; ++s) {
    float* st = stats + s * kNumStats;
    const double n = static_cast<double>(std::max<int64_t>(loc.count[s], 1));
    const double coef_r = weight / scale.p[s];
    const double coef_p = weight * scale.active[s] * sums[s].rp / (scale.p[s] * n);
    st[kTPred] = loc.p[s].t;
    st[kSPred] = scale.p[s];
    st[kTTarget] = loc.g[s].t;
    st[kSTarget] = scale.g[s];
    st[kASum] = static_cast<float>(sums[s].r);
    st[kBSum] = static_cast<float>(sums[s].rp);
    st[kCSum] = static_cast<float>(sums[s].sign_p);
    st[kScaleActive] = scale.active[s];
    st[kCoefR] = static_cast<float>(coef_r);
    st[kCoefP] = static_cast<float>(coef_p);
    st[kCoefMedian] = static_cast<float>(static_cast<double>(sums[s].sign_p) * coef_p -
                                         sums[s].r * coef_r);
    counts[s * kNumCounts + kCount] = loc.count[s];
    counts[s * kNumCounts + kMedianIndex] = sums[s].median_index;
  }
  return {total * weight, n_image};
}

// Forward for one image: groups -> medians and deviations -> scales -> loss pass -> stats.
// Writes the image's stats/counts rows and codes; returns the image's loss (0 without a valid
// pixel) and its valid-pixel count.
template <bool kAvx2>
DAF_INLINE std::pair<double, int64_t> forward_image(const ImageBatch& x, int64_t b,
                                                    ForwardScratch& scratch, float* stats,
                                                    int64_t* counts, uint8_t* codes) {
  constexpr int kMaxCompactionPasses = 8;  // beyond, one scatter pass gathers every group
  const int64_t L = x.length;
  const float* p = x.pred + b * L;
  const float* g = assign_groups(x, b, scratch);
  const int32_t* gid = scratch.gid.data();
  GroupLocations loc(x.num_segments);
  if (x.num_segments <= kMaxCompactionPasses) {
    locate_few_groups<kAvx2>(p, g, gid, L, scratch, loc);
  } else {
    locate_many_groups(p, g, gid, L, scratch, loc);
  }
  const GroupScales scale = group_scales(loc);
  const std::vector<GroupSums> sums = loss_passes(p, g, gid, L, loc, scale, codes);
  return write_image_stats(loc, scale, sums, stats, counts);
}

using ForwardImage = std::pair<double, int64_t> (*)(const ImageBatch&, int64_t, ForwardScratch&,
                                                     float*, int64_t*, uint8_t*);

std::pair<double, int64_t> forward_image_baseline(const ImageBatch& x, int64_t b,
                                                  ForwardScratch& scratch, float* stats,
                                                  int64_t* counts, uint8_t* codes) {
  return forward_image<false>(x, b, scratch, stats, counts, codes);
}

#if DAF_X86_AVX2
__attribute__((target("avx2"))) std::pair<double, int64_t> forward_image_avx2(
    const ImageBatch& x, int64_t b, ForwardScratch& scratch, float* stats, int64_t* counts,
    uint8_t* codes) {
  return forward_image<true>(x, b, scratch, stats, counts, codes);
}
#endif

bool cpu_has_avx2() {
#if DAF_X86_AVX2
  static const bool has = [] {  // probed once, not on every forward call
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
#else
  return false;
#endif
}

// The ISA the forward runs with: "auto" (the best the CPU has), or forced by set_cpu_isa.
std::atomic<bool> g_force_baseline{false};

bool use_avx2() { return cpu_has_avx2() && !g_force_baseline.load(std::memory_order_relaxed); }

void set_cpu_isa(const std::string& name) {
  if (name == "auto" || name == "baseline") {
    g_force_baseline = name == "baseline";
  } else if (name == "avx2") {
    if (!cpu_has_avx2()) throw std::invalid_argument("this CPU (or build) has no AVX2");
    g_force_baseline = false;
  } else {
    throw std::invalid_argument("cpu isa must be 'auto', 'baseline' or 'avx2', got '" + name + "'");
  }
}

void affine_invariant_forward(Array<float> pred, Array<float> target,
                              std::optional<Array<float>> target_b,
                              std::optional<Array<bool>> mask,
                              std::optional<Array<int32_t>> segments,
                              std::optional<Array<bool>> box, int64_t num_segments, bool mean,
                              Array<float> loss, Array<float> stats, Array<int64_t> counts,
                              Array<uint8_t> codes) {
  using namespace stats_layout;
  const ImageBatch x = make_batch(pred, target, target_b, mask, segments, box, num_segments);
  float* loss_out = data_n(loss, "loss", mean ? 1 : x.batch);
  float* stats_out = data_n(stats, "stats", x.batch * num_segments * kNumStats);
  int64_t* counts_out = data_n(counts, "counts", x.batch * num_segments * kNumCounts);
  uint8_t* codes_out = data_2d(codes, "codes", x.batch, x.length);
  advise_huge_pages(codes_out, static_cast<size_t>(x.batch * x.length));
  std::vector<double> image_loss(x.batch, 0.0);
  std::vector<int64_t> image_count(x.batch, 0);
  ForwardImage forward = forward_image_baseline;
#if DAF_X86_AVX2
  if (use_avx2()) forward = forward_image_avx2;
#endif
  {
    py::gil_scoped_release release;
#pragma omp parallel
    {
      thread_local ForwardScratch scratch;
      scratch.reserve(x.length, x.box != nullptr);
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < x.batch; ++b) {
        const auto [l, n] = forward(x, b, scratch, stats_out + b * num_segments * kNumStats,
                                    counts_out + b * num_segments * kNumCounts,
                                    codes_out + b * x.length);
        image_loss[b] = l;
        image_count[b] = n;
      }
    }
  }
  if (mean) {
    double total = 0.0;
    int64_t nonempty = 0;
    for (int64_t b = 0; b < x.batch; ++b) {
      total += image_loss[b];
      nonempty += image_count[b] > 0;
    }
    *loss_out = nonempty > 0 ? static_cast<float>(total / static_cast<double>(nonempty)) : 0.0f;
  } else {
    for (int64_t b = 0; b < x.batch; ++b) loss_out[b] = static_cast<float>(image_loss[b]);
  }
}

// grad_k = w (COEF_R sign(r_k) - COEF_P sign(p_k - t) + [k == median] COEF_MEDIAN), one pass
// over the code bytes through a 256-entry table per image (w: the upstream gradient of the
// image's loss; for the batch mean, that of the mean over the images with a valid pixel).
void affine_invariant_backward(Array<float> grad_loss, bool mean, Array<uint8_t> codes,
                               std::optional<Array<int32_t>> segments, Array<float> stats,
                               Array<int64_t> counts, Array<float> grad_pred) {
  using namespace stats_layout;
  if (codes.ndim() != 2) throw std::invalid_argument("codes must be 2-D (B, L)");
  const int64_t B = codes.shape(0), L = codes.shape(1);
  if (B == 0) return;
  const int64_t S = stats.size() / (B * kNumStats);
  const float* grad_in = data_n(grad_loss, "grad_loss", mean ? 1 : B);
  const float* st_all = data_n(stats, "stats", B * S * kNumStats);
  const int64_t* counts_all = data_n(counts, "counts", B * S * kNumCounts);
  const uint8_t* code_all = codes.data();
  const bool from_map = S > kCodeMaxSegments;
  const int32_t* seg_all = nullptr;
  if (from_map) {
    if (!segments) throw std::invalid_argument("more than 16 segments need the segment map");
    seg_all = data_2d(*segments, "segments", B, L);
  }
  float* grad_out = data_2d(grad_pred, "grad_pred", B, L);
  advise_huge_pages(grad_out, static_cast<size_t>(B * L) * sizeof(float));
  float mean_weight = 1.0f;
  if (mean) {
    int64_t nonempty = 0;
    for (int64_t b = 0; b < B; ++b) {
      int64_t n = 0;
      for (int64_t s = 0; s < S; ++s) n += counts_all[(b * S + s) * kNumCounts + kCount];
      nonempty += n > 0;
    }
    mean_weight = 1.0f / static_cast<float>(std::max<int64_t>(nonempty, 1));
  }
  py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < B; ++b) {
    const float w = (mean ? grad_in[0] * mean_weight : grad_in[b]);
    const float* st = st_all + b * S * kNumStats;
    const uint8_t* code = code_all + b * L;
    float* out = grad_out + b * L;
    auto value = [&](int64_t s, int c) {
      const float* row = st + s * kNumStats;
      const auto r = static_cast<float>(((c & kCodeRPos) != 0) - ((c & kCodeRNeg) != 0));
      const auto q = static_cast<float>(((c & kCodePPos) != 0) - ((c & kCodePNeg) != 0));
      return w * (row[kCoefR] * r - row[kCoefP] * q);
    };
    if (!from_map) {
      float table[256];
      for (int c = 0; c < 256; ++c) {
        const int64_t s = S > 1 ? (c >> kCodeSegmentShift) : 0;
        table[c] = s < S ? value(s, c) : 0.0f;
      }
      for (int64_t i = 0; i < L; ++i) out[i] = table[code[i]];
    } else {
      const int32_t* seg = seg_all + b * L;
      for (int64_t i = 0; i < L; ++i) {
        const int64_t s = seg[i];
        out[i] = (code[i] != 0 && s >= 0 && s < S) ? value(s, code[i]) : 0.0f;
      }
    }
    for (int64_t s = 0; s < S; ++s) {
      const int64_t m = counts_all[(b * S + s) * kNumCounts + kMedianIndex];
      if (m >= 0) out[m] += w * st[s * kNumStats + kCoefMedian];
    }
  }
}

// cos = x.y / sqrt(max(|x|^2 |y|^2, eps^2)), as torch.nn.functional.cosine_similarity.
struct RowDots {
  double dot, xx, yy;
};

inline RowDots row_dots(const float* x, const float* y, int64_t c) {
  float dot = 0.f, xx = 0.f, yy = 0.f;
#pragma omp simd reduction(+ : dot, xx, yy)
  for (int64_t j = 0; j < c; ++j) {
    dot += x[j] * y[j];
    xx += x[j] * x[j];
    yy += y[j] * y[j];
  }
  return {dot, xx, yy};
}

inline double cosine(const RowDots& d) {
  return d.dot / std::sqrt(std::max(d.xx * d.yy, kCosEps * kCosEps));
}

void feature_alignment_forward(Array<float> features, Array<float> frozen, double alpha,
                               Array<float> loss, Array<float> cos, Array<float> n_kept) {
  if (features.ndim() != 2) throw std::invalid_argument("features must be 2-D (M, C)");
  const int64_t M = features.shape(0), C = features.shape(1);
  const float* f = features.data();
  const float* z = data_2d(frozen, "frozen", M, C);
  float* cos_out = data_n(cos, "cos", M);
  float* loss_out = data_n(loss, "loss", 1);
  float* kept_out = data_n(n_kept, "n_kept", 1);
  double total = 0.0;
  int64_t kept = 0;
  {
    py::gil_scoped_release release;
#pragma omp parallel for reduction(+ : total, kept) schedule(static)
    for (int64_t i = 0; i < M; ++i) {
      const float c = static_cast<float>(cosine(row_dots(f + i * C, z + i * C, C)));
      cos_out[i] = c;
      if (c <= alpha) {
        total += 1.0 - c;
        ++kept;
      }
    }
  }
  *loss_out = kept > 0 ? static_cast<float>(total / static_cast<double>(kept)) : 0.0f;
  *kept_out = static_cast<float>(kept);
}

// d cos / dx = y / denom - cos * x / |x|^2 (just y / denom where the eps clamp is active).
void feature_alignment_backward(Array<float> grad_loss, Array<float> features,
                                Array<float> frozen, double alpha, Array<float> cos,
                                Array<float> n_kept, Array<float> grad_features) {
  if (features.ndim() != 2) throw std::invalid_argument("features must be 2-D (M, C)");
  const int64_t M = features.shape(0), C = features.shape(1);
  const float* f = features.data();
  const float* z = data_2d(frozen, "frozen", M, C);
  const float* cos_in = data_n(cos, "cos", M);
  const float kept = *data_n(n_kept, "n_kept", 1);
  const float g = *data_n(grad_loss, "grad_loss", 1);
  float* out = data_2d(grad_features, "grad_features", M, C);
  advise_huge_pages(out, static_cast<size_t>(M * C) * sizeof(float));
  const float w = kept > 0 ? g / kept : 0.0f;
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    float* o = out + i * C;
    if (w == 0.0f || !(cos_in[i] <= alpha)) {
      std::fill(o, o + C, 0.0f);
      continue;
    }
    const float* x = f + i * C;
    const float* y = z + i * C;
    const RowDots d = row_dots(x, y, C);
    const double prod = d.xx * d.yy;
    const bool clamped = prod <= kCosEps * kCosEps;
    const float cy = static_cast<float>(-w / std::sqrt(clamped ? kCosEps * kCosEps : prod));
    const float cx = clamped ? 0.0f : static_cast<float>(w * (d.dot / std::sqrt(prod)) / d.xx);
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) o[j] = cy * y[j] + cx * x[j];
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "depth_anything_fast CPU kernels (pybind11 + OpenMP), see csrc/losses.cpp";
  // noconvert: a dtype/layout mismatch must raise, not silently write into a temporary copy.
  m.def("affine_invariant_forward", &affine_invariant_forward, py::arg("pred").noconvert(),
        py::arg("target").noconvert(), py::arg("target_b").noconvert(),
        py::arg("mask").noconvert(), py::arg("segments").noconvert(),
        py::arg("box").noconvert(), py::arg("num_segments"), py::arg("mean"),
        py::arg("loss").noconvert(), py::arg("stats").noconvert(),
        py::arg("counts").noconvert(), py::arg("codes").noconvert());
  m.def("affine_invariant_backward", &affine_invariant_backward,
        py::arg("grad_loss").noconvert(), py::arg("mean"), py::arg("codes").noconvert(),
        py::arg("segments").noconvert(), py::arg("stats").noconvert(),
        py::arg("counts").noconvert(), py::arg("grad_pred").noconvert());
  m.def("feature_alignment_forward", &feature_alignment_forward, py::arg("features").noconvert(),
        py::arg("frozen").noconvert(), py::arg("alpha"), py::arg("loss").noconvert(),
        py::arg("cos").noconvert(), py::arg("n_kept").noconvert());
  m.def("feature_alignment_backward", &feature_alignment_backward,
        py::arg("grad_loss").noconvert(), py::arg("features").noconvert(),
        py::arg("frozen").noconvert(), py::arg("alpha"), py::arg("cos").noconvert(),
        py::arg("n_kept").noconvert(), py::arg("grad_features").noconvert());
  m.def("set_cpu_isa", &set_cpu_isa, py::arg("name"),
        "Instruction set of the affine-invariant forward: 'auto' (default), 'baseline', 'avx2'");
  m.def("cpu_isa", []() { return std::string(use_avx2() ? "avx2" : "baseline"); });
  m.def("num_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
}
