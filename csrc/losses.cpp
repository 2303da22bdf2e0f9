// CPU kernels of the fused losses (module depth_anything_fast._C), pybind11 + OpenMP.
//
// They implement the kernel interface of the project's CONTRACTS (shared with the Triton
// kernels): flattened float32 images (B, L), optional bool mask and int32 segments (B, L).
// Arrays come in through the buffer protocol (numpy views of torch tensors); outputs are
// preallocated by the caller and written in place, so no torch headers are needed.
//
// Affine-invariant loss: per group g = (image, segment) the lower median t (rank (n-1)/2) and
// s = max(mean|x - t|, 1e-6) of pred and of target in three radix-histogram passes over the
// image (select_medians), then one fused pass for the loss, the per-group sums the backward
// needs and one code byte per pixel.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
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

namespace {

constexpr double kCosEps = 1e-8;

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

constexpr int64_t kBlock = 512;  // float partial sums per block, double across blocks

// Branch-free (comparisons as 0/1) so that the loops using it vectorise.
inline float sign(float x) { return static_cast<float>(x > 0.0f) - static_cast<float>(x < 0.0f); }

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

// Exact lower median and mean absolute deviation of pred and of target per group g = (image,
// segment) in three passes over the image, radix digits of 11, 11 and 10 bits of the order keys,
// most significant first: pass 1 counts the top digits, pass 2 the middle digits of the keys that
// share the top digit of their group's median, pass 3 the low digits under the 21-bit prefix and
// sums the values whose keys lie below and above that prefix. A last-digit bin holds one value,
// so its sum is count * value and sum|x - t| = sum_{x>t} x - sum_{x<t} x + t (n_< - n_>) needs no
// further pass. Histograms are per image (OpenMP runs over images); uint32 bins (L < 2^32 is
// checked), counts int64.
constexpr int kTopBins = 2048, kMidBins = 2048, kLowBins = 1024;
constexpr uint32_t kNoPrefix = 0xFFFFFFFFu;  // matches no key prefix: empty or padding groups

// Bin holding rank k of hist[0, bins); k becomes the rank within that bin.
inline uint32_t bin_of_rank(const uint32_t* hist, int bins, int64_t& k) {
  int64_t before = 0;
  for (int bin = 0; bin < bins; ++bin) {
    if (before + static_cast<int64_t>(hist[bin]) > k) {
      k -= before;
      return static_cast<uint32_t>(bin);
    }
    before += hist[bin];
  }
  throw std::logic_error("radix select: rank beyond the histogram");
}

// Selection state of one array (pred or target) of one group.
struct Selection {
  int64_t rank = 0;           // rank still to find inside the current prefix
  uint32_t prefix = kNoPrefix;  // key bits fixed so far (top digit, then top two digits)
  double below = 0.0, above = 0.0;  // sums of the values whose keys lie below / above prefix
  int64_t n_below = 0, n_above = 0;
};

// Per-thread scratch of the selection, sized for S groups plus one padding group S that
// collects the invalid pixels (so the histogram loops need no branch on validity).
struct SelectScratch {
  std::vector<uint32_t> hist_p, hist_g;
  std::vector<int64_t> first_p;  // pass 3: lowest index of each pred low-digit bin, -1 if none
  std::vector<Selection> sel_p, sel_g;

  void reset(int groups, int bins) {
    hist_p.assign(static_cast<size_t>(groups + 1) * bins, 0u);
    hist_g.assign(static_cast<size_t>(groups + 1) * bins, 0u);
  }
};

// Median t and mean|x - t| of one group from the pass-3 state and its low-digit histogram.
struct Location {
  float t;
  double mean_abs_dev;
  uint32_t low_bin;  // last digit of t's key
};

Location finish_selection(Selection& sel, const uint32_t* low_hist, int64_t n) {
  const uint32_t bin = bin_of_rank(low_hist, kLowBins, sel.rank);
  const uint32_t high = sel.prefix << 10;
  const float t = key_value(high | bin);
  double below = sel.below, above = sel.above;
  int64_t n_below = sel.n_below, n_above = sel.n_above;
  for (uint32_t d = 0; d < static_cast<uint32_t>(kLowBins); ++d) {
    const uint32_t c = low_hist[d];
    if (c == 0 || d == bin) continue;  // 0 * inf / 0 * NaN must not enter the sums
    const double v = static_cast<double>(c) * key_value(high | d);
    if (d < bin) {
      below += v, n_below += c;
    } else {
      above += v, n_above += c;
    }
  }
  // An infinite median meets itself: |inf - inf| is NaN in the definition, as in the reference.
  const double dev =
      is_finite(t) ? above - below + static_cast<double>(t) * static_cast<double>(n_below - n_above)
                   : std::nan("");
  return {t, dev / static_cast<double>(n), bin};
}

// Passes 1-3 over one image; gid holds each pixel's group, all ones for invalid (rewritten
// to S).
template <typename Gid>
void select_medians(const float* __restrict p, const float* __restrict g,
                    Gid* __restrict gid, int64_t L, int S, SelectScratch& w,
                    std::vector<int64_t>& count, std::vector<Location>& loc_p,
                    std::vector<Location>& loc_g) {
  w.sel_p.assign(S + 1, Selection{});
  w.sel_g.assign(S + 1, Selection{});
  // Pass 1: top digits (and the padding group for invalid pixels).
  w.reset(S, kTopBins);
  {
    uint32_t* hp = w.hist_p.data();
    uint32_t* hg = w.hist_g.data();
    const uint32_t pad = static_cast<uint32_t>(S);
    for (int64_t i = 0; i < L; ++i) {
      const uint32_t s = static_cast<uint32_t>(gid[i]) < pad ? static_cast<uint32_t>(gid[i]) : pad;
      gid[i] = static_cast<Gid>(s);
      ++hp[s * kTopBins + (order_key(p[i]) >> 21)];
      ++hg[s * kTopBins + (order_key(g[i]) >> 21)];
    }
  }
  for (int s = 0; s < S; ++s) {
    const uint32_t* row = w.hist_p.data() + static_cast<size_t>(s) * kTopBins;
    int64_t n = 0;
    for (int d = 0; d < kTopBins; ++d) n += row[d];
    count[s] = n;
    if (n == 0) continue;
    w.sel_p[s].rank = w.sel_g[s].rank = (n - 1) / 2;
    w.sel_p[s].prefix = bin_of_rank(row, kTopBins, w.sel_p[s].rank);
    w.sel_g[s].prefix =
        bin_of_rank(w.hist_g.data() + static_cast<size_t>(s) * kTopBins, kTopBins, w.sel_g[s].rank);
  }
  // Pass 2: middle digits under each group's top digit (every pixel adds 0 or 1: no branch).
  std::vector<uint32_t> pre_p(S + 1), pre_g(S + 1);
  for (int s = 0; s <= S; ++s) pre_p[s] = w.sel_p[s].prefix, pre_g[s] = w.sel_g[s].prefix;
  w.reset(S, kMidBins);
  {
    uint32_t* hp = w.hist_p.data();
    uint32_t* hg = w.hist_g.data();
    for (int64_t i = 0; i < L; ++i) {
      const uint32_t s = static_cast<uint32_t>(gid[i]);
      const uint32_t kp = order_key(p[i]), kg = order_key(g[i]);
      hp[s * kMidBins + ((kp >> 10) & 0x7FFu)] += (kp >> 21) == pre_p[s];
      hg[s * kMidBins + ((kg >> 10) & 0x7FFu)] += (kg >> 21) == pre_g[s];
    }
  }
  for (int s = 0; s < S; ++s) {
    if (count[s] == 0) continue;
    const size_t row = static_cast<size_t>(s) * kMidBins;
    for (auto [sel, hist] : {std::pair{&w.sel_p[s], w.hist_p.data() + row},
                             std::pair{&w.sel_g[s], w.hist_g.data() + row}}) {
      sel->prefix = (sel->prefix << 11) | bin_of_rank(hist, kMidBins, sel->rank);
    }
  }
  // Pass 3, in blocks that stay in L1: low digits under the 21-bit prefixes (scalar scatter),
  // then per group the sums and counts below / above the prefixes (vectorised selects, float
  // partial sums per block, double across blocks).
  for (int s = 0; s <= S; ++s) pre_p[s] = w.sel_p[s].prefix, pre_g[s] = w.sel_g[s].prefix;
  w.reset(S, kLowBins);
  w.first_p.assign(static_cast<size_t>(S + 1) * kLowBins, -1);
  int64_t* first = w.first_p.data();
  uint32_t* hp = w.hist_p.data();
  uint32_t* hg = w.hist_g.data();
  for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
    const int64_t i1 = std::min(L, i0 + kBlock);
    for (int64_t i = i0; i < i1; ++i) {  // branches: a 21-bit prefix matches few pixels
      const uint32_t s = static_cast<uint32_t>(gid[i]);
      const uint32_t kp = order_key(p[i]), kg = order_key(g[i]);
      if ((kp >> 10) == pre_p[s]) {
        const uint32_t bin = s * kLowBins + (kp & 0x3FFu);
        ++hp[bin];
        if (first[bin] < 0) first[bin] = i;
      }
      if ((kg >> 10) == pre_g[s]) ++hg[s * kLowBins + (kg & 0x3FFu)];
    }
    for (int s = 0; s < S; ++s) {
      if (count[s] == 0) continue;
      const uint32_t cp = pre_p[s], cg = pre_g[s];
      float bp = 0.f, ap = 0.f, bg = 0.f, ag = 0.f;
      int32_t nbp = 0, nap = 0, nbg = 0, nag = 0;
#pragma omp simd reduction(+ : bp, ap, bg, ag, nbp, nap, nbg, nag)
      for (int64_t i = i0; i < i1; ++i) {
        const bool in = gid[i] == static_cast<Gid>(s);
        const uint32_t hp_key = order_key(p[i]) >> 10, hg_key = order_key(g[i]) >> 10;
        const bool lp = in && hp_key < cp, up = in && hp_key > cp;
        const bool lg = in && hg_key < cg, ug = in && hg_key > cg;
        bp += lp ? p[i] : 0.0f;
        ap += up ? p[i] : 0.0f;
        bg += lg ? g[i] : 0.0f;
        ag += ug ? g[i] : 0.0f;
        nbp += lp, nap += up, nbg += lg, nag += ug;
      }
      Selection& sp = w.sel_p[s];
      Selection& sg = w.sel_g[s];
      sp.below += bp, sp.above += ap, sp.n_below += nbp, sp.n_above += nap;
      sg.below += bg, sg.above += ag, sg.n_below += nbg, sg.n_above += nag;
    }
  }
  for (int s = 0; s < S; ++s) {
    if (count[s] == 0) continue;
    const size_t row = static_cast<size_t>(s) * kLowBins;
    loc_p[s] = finish_selection(w.sel_p[s], w.hist_p.data() + row, count[s]);
    loc_g[s] = finish_selection(w.sel_g[s], w.hist_g.data() + row, count[s]);
  }
}

struct GroupSums {
  double loss = 0.0, r = 0.0, rp = 0.0;
  int64_t sign_p = 0;
};

// Loss pass over pixels [i0, i1) of one image, for the pixels with gid == segment (a block
// that stays in L1 while every group is visited): sum|p^ - g^|, A = sum sign(r),
// Bsum = sum sign(r) p^, C = sum sign(p - t), and the code byte of each pixel
// (stats_layout.h). Float partial sums per block. Other pixels may hold inf/NaN, so they are
// selected out (selects vectorise with -fno-trapping-math, see setup.py).
template <typename Gid>
void loss_block(const float* __restrict p, const float* __restrict g,
                const Gid* __restrict gid, Gid segment, int64_t i0, int64_t i1, float tp,
                float inv_sp, float tg, float inv_sg, uint8_t segment_bits,
                uint8_t* __restrict codes, GroupSums& sums) {
  using namespace stats_layout;
  float l = 0.0f, a = 0.0f, bs = 0.0f, c = 0.0f;
#pragma omp simd reduction(+ : l, a, bs, c)
  for (int64_t i = i0; i < i1; ++i) {
    const bool in = gid[i] == segment;
    const float ph = (p[i] - tp) * inv_sp;
    const float gh = (g[i] - tg) * inv_sg;
    const float d = ph - gh;
    const float r = in ? sign(d) : 0.0f;
    const float sp = in ? sign(p[i] - tp) : 0.0f;
    l += in ? std::fabs(d) : 0.0f;
    a += r;
    bs += in ? r * ph : 0.0f;
    c += sp;
    const int code = static_cast<int>(r > 0.0f) * kCodeRPos +
                     static_cast<int>(r < 0.0f) * kCodeRNeg +
                     static_cast<int>(sp > 0.0f) * kCodePPos +
                     static_cast<int>(sp < 0.0f) * kCodePNeg;
    codes[i] |= static_cast<uint8_t>(code + static_cast<int>(code != 0) * segment_bits);
  }
  sums.loss += l, sums.r += a, sums.rp += bs, sums.sign_p += static_cast<int64_t>(c);
}

// Forward for one image; per-thread scratch: gid (L), picked (L, CutMix's per-pixel target),
// the selection's histograms. Writes the image's stats/counts rows and codes; returns the
// image's loss (0 without a valid pixel) and its valid-pixel count.
template <typename Gid>
std::pair<double, int64_t> forward_image(const ImageBatch& x, int64_t b, std::vector<Gid>& gid,
                                         std::vector<float>& picked, SelectScratch& scratch,
                                         float* stats, int64_t* counts, uint8_t* codes) {
  using namespace stats_layout;
  const int S = x.num_segments;
  const int64_t L = x.length;
  const float* p = x.pred + b * L;
  const float* g = x.target + b * L;
  const bool* m = x.mask != nullptr ? x.mask + b * L : nullptr;
  const int32_t* seg = x.segments != nullptr ? x.segments + b * L : nullptr;
  if (x.box != nullptr) {  // CutMix: each pixel's target and segment from the box
    const uint8_t* box = reinterpret_cast<const uint8_t*>(x.box + b * L);
    const float* gb = x.target_b + b * L;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) picked[i] = box[i] ? g[i] : gb[i];
    g = picked.data();
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] = static_cast<Gid>(is_finite(g[i]) ? 1 - box[i] : -1);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] = static_cast<Gid>(is_finite(g[i]) ? 0 : -1);
  }
  // NaN predictions need no special case: their order keys rank them beyond +-inf, and the NaN
  // propagates into the loss through the loss pass.
  if (m != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] |= static_cast<Gid>(static_cast<int32_t>(m[i]) - 1);  // all ones if masked
  }
  if (seg != nullptr) {
    const uint32_t num = static_cast<uint32_t>(S);
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) {  // unsigned compare: negative segments are out of range
      gid[i] = static_cast<Gid>(static_cast<uint32_t>(seg[i]) < num ? (gid[i] | seg[i]) : -1);
    }
  }
  std::vector<int64_t> count(S, 0);
  std::vector<Location> loc_p(S, Location{0.f, 0.0, 0}), loc_g(S, Location{0.f, 0.0, 0});
  select_medians(p, g, gid.data(), L, S, scratch, count, loc_p, loc_g);  // gid: invalid -> S

  std::vector<float> t_p(S, 0.f), s_p(S, kScaleEps), t_g(S, 0.f), s_g(S, kScaleEps);
  std::vector<uint8_t> active(S, 0);
  for (int s = 0; s < S; ++s) {
    if (count[s] == 0) continue;
    t_p[s] = loc_p[s].t;
    s_p[s] = std::max(static_cast<float>(loc_p[s].mean_abs_dev), kScaleEps);
    t_g[s] = loc_g[s].t;
    s_g[s] = std::max(static_cast<float>(loc_g[s].mean_abs_dev), kScaleEps);
    active[s] = loc_p[s].mean_abs_dev > kScaleEps;
  }

  // Loss pass in pixel order, in blocks: sums per group and the code bytes.
  std::fill(codes, codes + L, uint8_t{0});
  std::vector<GroupSums> sums(S);
  const bool segment_in_code = S > 1 && S <= kCodeMaxSegments;
  for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
    const int64_t i1 = std::min(L, i0 + kBlock);
    for (int s = 0; s < S; ++s) {
      if (count[s] == 0) continue;
      const auto bits = static_cast<uint8_t>(segment_in_code ? s << kCodeSegmentShift : 0);
      loss_block(p, g, gid.data(), static_cast<Gid>(s), i0, i1, t_p[s], 1.0f / s_p[s], t_g[s], 1.0f / s_g[s],
                 bits, codes, sums[s]);
    }
  }
  // Median index: the lowest valid index holding the median value, from pass 3's first index
  // of t's key; a zero median also equals the other zero's key, so that case scans (early exit).
  std::vector<int64_t> median_index(S, -1);
  int missing = 0;
  for (int s = 0; s < S; ++s) {
    if (count[s] == 0) continue;
    if (t_p[s] != 0.0f) {
      median_index[s] = scratch.first_p[static_cast<size_t>(s) * kLowBins + loc_p[s].low_bin];
    } else {
      ++missing;
    }
  }
  for (int64_t i = 0; i < L && missing > 0; ++i) {
    const int s = static_cast<int>(gid[i]);
    if (s < S && median_index[s] < 0 && p[i] == t_p[s]) {
      median_index[s] = i;
      --missing;
    }
  }

  double total = 0.0;
  int64_t n_image = 0;
  for (int s = 0; s < S; ++s) {
    total += sums[s].loss;
    n_image += count[s];
  }
  const double weight = n_image > 0 ? 1.0 / static_cast<double>(n_image) : 0.0;
  for (int s = 0; s < S; ++s) {
    float* st = stats + s * kNumStats;
    const double n = static_cast<double>(std::max<int64_t>(count[s], 1));
    const double coef_r = weight / s_p[s];
    const double coef_p = weight * active[s] * sums[s].rp / (s_p[s] * n);
    st[kTPred] = t_p[s];
    st[kSPred] = s_p[s];
    st[kTTarget] = t_g[s];
    st[kSTarget] = s_g[s];
    st[kASum] = static_cast<float>(sums[s].r);
    st[kBSum] = static_cast<float>(sums[s].rp);
    st[kCSum] = static_cast<float>(sums[s].sign_p);
    st[kScaleActive] = active[s];
    st[kCoefR] = static_cast<float>(coef_r);
    st[kCoefP] = static_cast<float>(coef_p);
    st[kCoefMedian] = static_cast<float>(static_cast<double>(sums[s].sign_p) * coef_p -
                                         sums[s].r * coef_r);
    counts[s * kNumCounts + kCount] = count[s];
    counts[s * kNumCounts + kMedianIndex] = median_index[s];
  }
  return {total * weight, n_image};
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
  if (x.length >= (int64_t{1} << 32)) {  // the selection's histogram bins are uint32
    throw std::invalid_argument("images of 2**32 pixels or more are not supported");
  }
  advise_huge_pages(codes_out, static_cast<size_t>(x.batch * x.length));
  std::vector<double> image_loss(x.batch, 0.0);
  std::vector<int64_t> image_count(x.batch, 0);
  {
    py::gil_scoped_release release;
#pragma omp parallel
    {
      // Per-thread scratch kept across calls: fresh multi-MiB buffers would be page-faulted in
      // (zeroed by the kernel) on every call, which cost as much as the selection itself.
      thread_local std::vector<int32_t> gid;
      thread_local std::vector<float> picked;
      thread_local SelectScratch scratch;
      if (gid.size() < static_cast<size_t>(x.length)) gid.resize(x.length);
      if (x.box != nullptr && picked.size() < static_cast<size_t>(x.length)) {
        picked.resize(x.length);
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < x.batch; ++b) {
        const auto [l, n] = forward_image(x, b, gid, picked, scratch,
                                          stats_out + b * num_segments * kNumStats,
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
      const float r = static_cast<float>((c & kCodeRPos) != 0) - static_cast<float>((c & kCodeRNeg) != 0);
      const float q = static_cast<float>((c & kCodePPos) != 0) - static_cast<float>((c & kCodePNeg) != 0);
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
  m.def("num_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
}
