// Layout of the affine-invariant loss's per-(image, segment) statistics and backward codes.
// Mirrors kernels/stats_layout.py (the description lives there); tests/test_stats_layout.py
// checks that both say the same.
#pragma once

namespace stats_layout {

// float32 columns of stats (B, S, kNumStats)
constexpr int kTPred = 0;
constexpr int kSPred = 1;
constexpr int kTTarget = 2;
constexpr int kSTarget = 3;
constexpr int kASum = 4;
constexpr int kBSum = 5;
constexpr int kCSum = 6;
constexpr int kScaleActive = 7;
constexpr int kCoefR = 8;
constexpr int kCoefP = 9;
constexpr int kCoefMedian = 10;
constexpr int kNumStats = 11;

// int64 columns of counts (B, S, kNumCounts)
constexpr int kCount = 0;
constexpr int kMedianIndex = 1;
constexpr int kNumCounts = 2;

// bits of the uint8 code per pixel
constexpr int kCodeRPos = 1;
constexpr int kCodeRNeg = 2;
constexpr int kCodePPos = 4;
constexpr int kCodePNeg = 8;
constexpr int kCodeSegmentShift = 4;
constexpr int kCodeMaxSegments = 16;

constexpr float kScaleEps = 1e-6f;

}  // namespace stats_layout
