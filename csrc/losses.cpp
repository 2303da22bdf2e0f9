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

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

constexpr float kScaleEps = 1e-6f;
constexpr double kCosEps = 1e-8;
constexpr int kStatCols = 9;  // n, t_pred, s_pred, A, Bsum, C, scale_active, t_target, s_target

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

constexpr int64_t kBlock = 512;  // float partial sums per block, double across blocks

// Branch-free (comparisons as 0/1) so that the loops using it vectorise.
inline float sign(float x) { return static_cast<float>(x > 0.0f) - static_cast<float>(x < 0.0f); }

// isfinite on the exponent bits (all ones for inf and NaN).
inline bool is_finite(float x) {
  return (__builtin_bit_cast(uint32_t, x) & 0x7F800000u) != 0x7F800000u;
}

// 1 for finite x, 0 for inf/NaN (x - x is NaN then), as float arithmetic so that it vectorises.
inline float finite_weight(float x) { return static_cast<float>((x - x) == 0.0f); }

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

// Pointers of one call, shared by forward and backward.
struct ImageBatch {
  const float* pred;
  const float* target;
  const bool* mask;        // nullptr: every pixel passes the mask
  const int32_t* segments;  // nullptr: one segment
  int64_t batch;
  int64_t length;
  int num_segments;
};

ImageBatch make_batch(Array<float>& pred, Array<float>& target, std::optional<Array<bool>>& mask,
                      std::optional<Array<int32_t>>& segments, int64_t num_segments) {
  if (pred.ndim() != 2) throw std::invalid_argument("pred must be 2-D (B, L)");
  if (num_segments < 1) throw std::invalid_argument("num_segments must be >= 1");
  ImageBatch x{};
  x.batch = pred.shape(0);
  x.length = pred.shape(1);
  x.num_segments = static_cast<int>(num_segments);
  x.pred = pred.data();
  x.target = data_2d(target, "target", x.batch, x.length);
  x.mask = mask ? data_2d(*mask, "mask", x.batch, x.length) : nullptr;
  x.segments = segments ? data_2d(*segments, "segments", x.batch, x.length) : nullptr;
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
  double loss, r, rp, sign;
};

// Fused pass over one group's gathered (pred, target) pairs, all valid: sum|p^ - g^|,
// A = sum r, Bsum = sum r p^, C = sum sign(p - t), with float partial sums per block.
// p^ = (p - t) * (1 / s): the backward recomputes r = sign(p^ - g^) with the same formula.
GroupSums fused_group(const float* __restrict p, const float* __restrict g, int64_t n, float tp,
                      float inv_sp, float tg, float inv_sg) {
  GroupSums sums{0.0, 0.0, 0.0, 0.0};
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    float l = 0.0f, a = 0.0f, bs = 0.0f, c = 0.0f;
#pragma omp simd reduction(+ : l, a, bs, c)
    for (int64_t i = i0; i < i1; ++i) {
      const float ph = (p[i] - tp) * inv_sp;
      const float gh = (g[i] - tg) * inv_sg;
      const float d = ph - gh;
      const float r = sign(d);
      l += std::fabs(d);
      a += r;
      bs += r * ph;
      c += sign(ph);
    }
    sums.loss += l, sums.r += a, sums.rp += bs, sums.sign += c;
  }
  return sums;
}

// Forward for one image; per-thread scratch: gid (L), pred_buf/target_buf (L + 1), candidates (L).
void forward_image(const ImageBatch& x, int64_t b, std::vector<int32_t>& gid,
                   std::vector<float>& pred_buf, std::vector<float>& target_buf,
                   std::vector<float>& candidates, float* loss_out,
                   float* stats, int64_t* median_index) {
  const int S = x.num_segments;
  const int64_t L = x.length;
  const float* p = x.pred + b * L;
  const float* g = x.target + b * L;
  std::vector<int64_t> count(S, 0), offset(S, 0);
  // NaN predictions need no special case: their order keys rank them beyond +-inf, and the NaN
  // propagates into the loss through the fused pass.
  // Group id per pixel (-1: invalid), vectorised: finite target, then mask, then segment range.
  const bool* m = x.mask != nullptr ? x.mask + b * L : nullptr;
  const int32_t* seg = x.segments != nullptr ? x.segments + b * L : nullptr;
#pragma omp simd
  for (int64_t i = 0; i < L; ++i) gid[i] = is_finite(g[i]) ? 0 : -1;
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
  // Gather each group's (pred, target) pairs contiguously, in pixel order. Few groups: one
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

  std::vector<float> t_p(S, 0.f), s_p(S, 1.f), t_g(S, 0.f), s_g(S, 1.f);
  for (int s = 0; s < S; ++s) {
    float* st = stats + s * kStatCols;
    std::fill(st, st + kStatCols, 0.0f);
    median_index[s] = -1;
    st[0] = static_cast<float>(count[s]);
    if (count[s] == 0) {
      st[2] = st[8] = kScaleEps;
      continue;
    }
    const Location lp =
        lower_median_and_deviation(pred_buf.data() + offset[s], count[s], candidates);
    const Location lg =
        lower_median_and_deviation(target_buf.data() + offset[s], count[s], candidates);
    t_p[s] = lp.t;
    s_p[s] = std::max(static_cast<float>(lp.mean_abs_dev), kScaleEps);
    t_g[s] = lg.t;
    s_g[s] = std::max(static_cast<float>(lg.mean_abs_dev), kScaleEps);
    st[1] = t_p[s];
    st[2] = s_p[s];
    st[6] = lp.mean_abs_dev > kScaleEps ? 1.0f : 0.0f;
    st[7] = t_g[s];
    st[8] = s_g[s];
  }

  // Fused pass on the gathered pairs (radix select left pred_buf/target_buf in gather order).
  std::vector<double> loss(S, 0.0), sum_r(S, 0.0), sum_rp(S, 0.0), sum_sign(S, 0.0);
  for (int s = 0; s < S; ++s) {
    if (count[s] == 0) continue;
    const GroupSums sums = fused_group(pred_buf.data() + offset[s], target_buf.data() + offset[s],
                                       count[s], t_p[s], 1.0f / s_p[s], t_g[s], 1.0f / s_g[s]);
    loss[s] = sums.loss, sum_r[s] = sums.r, sum_rp[s] = sums.rp, sum_sign[s] = sums.sign;
  }
  // Median index: the lowest valid index holding the median value (early exit once all found).
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
    float* st = stats + s * kStatCols;
    st[3] = static_cast<float>(sum_r[s]);
    st[4] = static_cast<float>(sum_rp[s]);
    st[5] = static_cast<float>(sum_sign[s]);
    total += loss[s];
    n_image += count[s];
  }
  *loss_out = n_image > 0 ? static_cast<float>(total / static_cast<double>(n_image)) : 0.0f;
}

void affine_invariant_forward(Array<float> pred, Array<float> target,
                              std::optional<Array<bool>> mask,
                              std::optional<Array<int32_t>> segments, int64_t num_segments,
                              Array<float> loss, Array<float> stats, Array<int64_t> median_index) {
  const ImageBatch x = make_batch(pred, target, mask, segments, num_segments);
  float* loss_out = data_n(loss, "loss", x.batch);
  float* stats_out = data_n(stats, "stats", x.batch * num_segments * kStatCols);
  int64_t* index_out = data_n(median_index, "median_index", x.batch * num_segments);
  py::gil_scoped_release release;
#pragma omp parallel
  {
    // Per-thread scratch kept across calls: fresh multi-MiB buffers would be page-faulted in
    // (zeroed by the kernel) on every call, which cost as much as the selection itself.
    thread_local std::vector<int32_t> gid;
    thread_local std::vector<float> pred_buf, target_buf, candidates;
    if (gid.size() < static_cast<size_t>(x.length)) {
      gid.resize(x.length);
      // +1: the branchless compaction writes one slot past the last kept element
      pred_buf.resize(x.length + 1);
      target_buf.resize(x.length + 1);
      candidates.resize(x.length);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < x.batch; ++b) {
      forward_image(x, b, gid, pred_buf, target_buf, candidates, loss_out + b,
                    stats_out + b * num_segments * kStatCols, index_out + b * num_segments);
    }
  }
}

// Adds the gradient of the pixels of one group: grad = c_r sign(p^ - g^) - c_sign sign(p - t),
// for pixels with a finite target and (when `segments` is given) segments[i] == segment.
// sign() is finite even for inf/NaN arguments, so 0/1 factors (not selects, which GCC keeps as
// branches under -ftrapping-math) zero the other pixels and the loop vectorises.
void accumulate_group_grad(const float* __restrict p, const float* __restrict g,
                           const int32_t* __restrict segments, int32_t segment, int64_t n,
                           float tp, float inv_sp, float tg, float inv_sg, float c_r,
                           float c_sign, float* __restrict out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float ph = (p[i] - tp) * inv_sp;
    const float gh = (g[i] - tg) * inv_sg;
    const float in_group = segments != nullptr ? static_cast<float>(segments[i] == segment) : 1.0f;
    out[i] += in_group * finite_weight(g[i]) * (c_r * sign(ph - gh) - c_sign * sign(ph));
  }
}

// grad_k = w * (r_k / s - [k == m] A / s - active * Bsum / (s n_g) * (sign(p_k - t) - [k == m] C))
// with w = grad_loss_b / n_b; invalid pixels and empty images get 0.
void affine_invariant_backward(Array<float> grad_loss, Array<float> pred, Array<float> target,
                               std::optional<Array<bool>> mask,
                               std::optional<Array<int32_t>> segments, int64_t num_segments,
                               Array<float> stats, Array<int64_t> median_index,
                               Array<float> grad_pred) {
  const ImageBatch x = make_batch(pred, target, mask, segments, num_segments);
  const float* grad_in = data_n(grad_loss, "grad_loss", x.batch);
  const float* st_all = data_n(stats, "stats", x.batch * num_segments * kStatCols);
  const int64_t* idx_all = data_n(median_index, "median_index", x.batch * num_segments);
  float* grad_out = data_2d(grad_pred, "grad_pred", x.batch, x.length);
  const int S = x.num_segments;
  const int64_t L = x.length;
  py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < x.batch; ++b) {
    const float* st = st_all + b * S * kStatCols;
    const int64_t* idx = idx_all + b * S;
    const float* p = x.pred + b * L;
    const float* g = x.target + b * L;
    float* out = grad_out + b * L;
    double n_image = 0.0;
    for (int s = 0; s < S; ++s) n_image += st[s * kStatCols];
    if (n_image == 0.0) {
      std::fill(out, out + L, 0.0f);
      continue;
    }
    const float w = static_cast<float>(grad_in[b] / n_image);
    std::vector<float> t_p(S), s_p(S), t_g(S), s_g(S), c_r(S), c_sign(S);
    for (int s = 0; s < S; ++s) {
      const float* gs = st + s * kStatCols;
      t_p[s] = gs[1], s_p[s] = gs[2], t_g[s] = gs[7], s_g[s] = gs[8];
      c_r[s] = w / s_p[s];
      c_sign[s] = gs[0] > 0 ? w * gs[6] * gs[4] / (s_p[s] * gs[0]) : 0.0f;
    }
    // One vectorised pass per segment (S is small: 1, or 2 for CutMix), then the mask.
    std::fill(out, out + L, 0.0f);
    const int32_t* seg = x.segments != nullptr ? x.segments + b * L : nullptr;
    for (int s = 0; s < (seg != nullptr ? S : 1); ++s) {
      if (st[s * kStatCols] == 0.0f) continue;
      accumulate_group_grad(p, g, seg, s, L, t_p[s], 1.0f / s_p[s], t_g[s], 1.0f / s_g[s], c_r[s],
                            c_sign[s], out);
    }
    if (x.mask != nullptr) {
      // bool has no vector type: read the mask as bytes (0/1)
      const uint8_t* m = reinterpret_cast<const uint8_t*>(x.mask + b * L);
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) out[i] *= static_cast<float>(m[i]);
    }
    for (int s = 0; s < S; ++s) {
      const int64_t m = idx[s];
      if (m < 0) continue;
      const float* gs = st + s * kStatCols;
      out[m] += -c_r[s] * gs[3] + c_sign[s] * gs[5];
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
        py::arg("target").noconvert(), py::arg("mask").noconvert(),
        py::arg("segments").noconvert(), py::arg("num_segments"), py::arg("loss").noconvert(),
        py::arg("stats").noconvert(), py::arg("median_index").noconvert());
  m.def("affine_invariant_backward", &affine_invariant_backward,
        py::arg("grad_loss").noconvert(), py::arg("pred").noconvert(),
        py::arg("target").noconvert(), py::arg("mask").noconvert(),
        py::arg("segments").noconvert(), py::arg("num_segments"), py::arg("stats").noconvert(),
        py::arg("median_index").noconvert(), py::arg("grad_pred").noconvert());
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
