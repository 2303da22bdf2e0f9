// CPU kernels of the fused losses (module depth_anything_fast._C), pybind11 + OpenMP.
//
// They implement the kernel interface of the project's CONTRACTS (shared with the Triton
// kernels): flattened float32 images (B, L), optional bool mask and int32 segments (B, L).
// Arrays come in through the buffer protocol (numpy views of torch tensors); outputs are
// preallocated by the caller and written in place, so no torch headers are needed.
//
// Affine-invariant loss: per group g = (image, segment) the lower median t (rank (n-1)/2,
// radix select on a gathered copy) and s = max(mean|x - t|, 1e-6) of pred and of target,
// then one fused pass for the loss and the per-group sums the backward needs.

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

// Lower median of values[0, n) and mean|x - t| (in double).
struct Location {
  float t;
  double mean_abs_dev;
};

Location lower_median_and_deviation(const float* values, int64_t n,
                                    std::vector<float>& candidates) {
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

struct GroupSums {
  double loss = 0.0, r = 0.0, rp = 0.0;
  int64_t sign_p = 0;
};

// Loss pass over one image in pixel order, for the pixels with gid == segment:
// sum|p^ - g^|, A = sum sign(r), Bsum = sum sign(r) p^, C = sum sign(p - t), and the code byte
// of each pixel (stats_layout.h). Float partial sums per block. Other pixels may hold inf/NaN, so they are selected out (selects vectorise with
// -fno-trapping-math, see setup.py).
GroupSums loss_pass(const float* __restrict p, const float* __restrict g,
                    const int32_t* __restrict gid, int32_t segment, int64_t n, float tp,
                    float inv_sp, float tg, float inv_sg, uint8_t segment_bits,
                    uint8_t* __restrict codes) {
  using namespace stats_layout;
  GroupSums sums;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
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
  return sums;
}

// Forward for one image; per-thread scratch: gid (L), pred_buf/target_buf (L + 1), candidates
// (L), picked (L, CutMix's per-pixel target). Writes the image's stats/counts rows and codes;
// returns the image's loss (0 without a valid pixel) and its valid-pixel count.
std::pair<double, int64_t> forward_image(const ImageBatch& x, int64_t b, std::vector<int32_t>& gid,
                                         std::vector<float>& pred_buf,
                                         std::vector<float>& target_buf,
                                         std::vector<float>& candidates,
                                         std::vector<float>& picked, float* stats,
                                         int64_t* counts, uint8_t* codes) {
  using namespace stats_layout;
  const int S = x.num_segments;
  const int64_t L = x.length;
  const float* p = x.pred + b * L;
  const float* g = x.target + b * L;
  std::vector<int64_t> count(S, 0), offset(S, 0);
  const bool* m = x.mask != nullptr ? x.mask + b * L : nullptr;
  const int32_t* seg = x.segments != nullptr ? x.segments + b * L : nullptr;
  if (x.box != nullptr) {  // CutMix: each pixel's target and segment from the box
    const uint8_t* box = reinterpret_cast<const uint8_t*>(x.box + b * L);
    const float* gb = x.target_b + b * L;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) picked[i] = box[i] ? g[i] : gb[i];
    g = picked.data();
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] = is_finite(g[i]) ? 1 - box[i] : -1;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] = is_finite(g[i]) ? 0 : -1;
  }
  // NaN predictions need no special case: their order keys rank them beyond +-inf, and the NaN
  // propagates into the loss through the loss pass.
  if (m != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) gid[i] |= static_cast<int32_t>(m[i]) - 1;  // -1 if masked
  }
  if (seg != nullptr) {
    const uint32_t num = static_cast<uint32_t>(S);
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) {  // unsigned compare: negative segments are out of range
      gid[i] = static_cast<uint32_t>(seg[i]) < num ? (gid[i] | seg[i]) : -1;
    }
  }
  // Gather each group's (pred, target) pairs contiguously for the selection. Few groups: one
  // branchless compaction pass per group; many: one counting pass and one scatter pass.
  constexpr int kMaxCompactionPasses = 8;
  if (S <= kMaxCompactionPasses) {
    int64_t k = 0;
    for (int s = 0; s < S; ++s) {
      offset[s] = k;
      for (int64_t i = 0; i < L; ++i) {
        pred_buf[k] = p[i];
        target_buf[k] = g[i];
        k += gid[i] == s;
      }
      count[s] = k - offset[s];
    }
  } else {
    for (int64_t i = 0; i < L; ++i) {
      if (gid[i] >= 0) ++count[gid[i]];
    }
    for (int s = 1; s < S; ++s) offset[s] = offset[s - 1] + count[s - 1];
    std::vector<int64_t> fill(offset);
    for (int64_t i = 0; i < L; ++i) {
      const int grp = gid[i];
      if (grp < 0) continue;
      const int64_t k = fill[grp]++;
      pred_buf[k] = p[i];
      target_buf[k] = g[i];
    }
  }

  std::vector<float> t_p(S, 0.f), s_p(S, kScaleEps), t_g(S, 0.f), s_g(S, kScaleEps);
  std::vector<uint8_t> active(S, 0);
  for (int s = 0; s < S; ++s) {
    if (count[s] == 0) continue;
    const Location lp =
        lower_median_and_deviation(pred_buf.data() + offset[s], count[s], candidates);
    const Location lg =
        lower_median_and_deviation(target_buf.data() + offset[s], count[s], candidates);
    t_p[s] = lp.t;
    s_p[s] = std::max(static_cast<float>(lp.mean_abs_dev), kScaleEps);
    t_g[s] = lg.t;
    s_g[s] = std::max(static_cast<float>(lg.mean_abs_dev), kScaleEps);
    active[s] = lp.mean_abs_dev > kScaleEps;
  }

  // Loss pass in pixel order: sums per group and the code bytes.
  std::fill(codes, codes + L, uint8_t{0});
  std::vector<GroupSums> sums(S);
  const bool segment_in_code = S > 1 && S <= kCodeMaxSegments;
  for (int s = 0; s < S; ++s) {
    if (count[s] == 0) continue;
    const auto bits = static_cast<uint8_t>(segment_in_code ? s << kCodeSegmentShift : 0);
    sums[s] = loss_pass(p, g, gid.data(), s, L, t_p[s], 1.0f / s_p[s], t_g[s], 1.0f / s_g[s],
                        bits, codes);
  }
  // Median index: the lowest valid index holding the median value (early exit once all found).
  std::vector<int64_t> median_index(S, -1);
  int missing = 0;
  for (int s = 0; s < S; ++s) missing += count[s] > 0;
  for (int64_t i = 0; i < L && missing > 0; ++i) {
    const int s = gid[i];
    if (s >= 0 && median_index[s] < 0 && p[i] == t_p[s]) {
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
      thread_local std::vector<float> pred_buf, target_buf, candidates, picked;
      if (gid.size() < static_cast<size_t>(x.length)) {
        gid.resize(x.length);
        // +1: the branchless compaction writes one slot past the last kept element
        pred_buf.resize(x.length + 1);
        target_buf.resize(x.length + 1);
        candidates.resize(x.length);
      }
      if (x.box != nullptr && picked.size() < static_cast<size_t>(x.length)) {
        picked.resize(x.length);
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < x.batch; ++b) {
        const auto [l, n] = forward_image(x, b, gid, pred_buf, target_buf, candidates, picked,
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
