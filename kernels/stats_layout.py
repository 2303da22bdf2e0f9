"""One layout for the affine-invariant loss's per-(image, segment) statistics and backward codes.

Shared by the Triton kernels (`affine_invariant.py`), the ops layer (`depth_anything_fast.ops`)
and the C++ kernels (`csrc/stats_layout.h`, checked against this file by
tests/test_stats_layout.py). Plain Python: importing it needs neither Triton nor the extension.

`stats` `(B, S, NUM_STATS)` float32, one row per group g = (image, segment):
    T_PRED, S_PRED, T_TARGET, S_TARGET  lower median t and scale s = max(mean|x - t|, SCALE_EPS)
    A_SUM          sum over the group of sign(p^ - g^) (an integer, stored as float)
    B_SUM          sum of sign(p^ - g^) * p^
    C_SUM          sum of sign(p - t_pred) = n_> - n_< (an integer, stored as float)
    SCALE_ACTIVE   1 when mean|p - t_pred| > SCALE_EPS (s gets a gradient), else 0
    COEF_R, COEF_P, COEF_MEDIAN  the backward: with w the upstream gradient of the loss output,
        d/dp_k = w * (COEF_R * sign(p^_k - g^_k) - COEF_P * sign(p_k - t_pred)
                      + [k is the group's median element] * COEF_MEDIAN)
        (COEF_R = W / s_pred, COEF_P = W * active * B_SUM / (s_pred * n_g),
         COEF_MEDIAN = C_SUM * COEF_P - A_SUM * COEF_R; W = the group's image weight in the loss
         output: 1 / n_b, and 1 / (n_b * images with a valid pixel) for the batch mean).
`counts` `(B, S, NUM_COUNTS)` int64: COUNT valid pixels n_g (exact at any size), MEDIAN_INDEX
    the lowest column holding the pred median (-1 for an empty group or a NaN median).
`codes` `(B, L)` uint8, one byte per pixel for the backward: bit CODE_R_POS / CODE_R_NEG =
    sign(p^ - g^) > 0 / < 0, CODE_P_POS / CODE_P_NEG = sign(p - t_pred) > 0 / < 0, and the
    segment in the bits from CODE_SEGMENT_SHIFT when S <= CODE_MAX_SEGMENTS (else the backward
    reads the segment map again). Invalid pixels are 0: no sign, no gradient.
"""

from __future__ import annotations

(
    T_PRED,
    S_PRED,
    T_TARGET,
    S_TARGET,
    A_SUM,
    B_SUM,
    C_SUM,
    SCALE_ACTIVE,
    COEF_R,
    COEF_P,
    COEF_MEDIAN,
) = range(11)
NUM_STATS = 11

COUNT, MEDIAN_INDEX = range(2)
NUM_COUNTS = 2

CODE_R_POS = 1
CODE_R_NEG = 2
CODE_P_POS = 4
CODE_P_NEG = 8
CODE_SEGMENT_SHIFT = 4
CODE_MAX_SEGMENTS = 16

SCALE_EPS = 1e-6  # s = max(mean|x - t|, SCALE_EPS): a constant image must not divide by zero
