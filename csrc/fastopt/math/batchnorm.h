// Batch normalization (Ioffe & Szegedy 2015): the per-element formulas and the per-channel
// statistics, shared by the CPU and CUDA drivers (docs/algorithms.md, "BatchNorm").
//
// Statistics: every channel is cut into fixed blocks. A block sums d = x - shift and d * d in
// float64, where shift is one of the channel's values (its first), so the sums stay of the size
// of the spread rather than of the mean: no E[x^2] - E[x]^2 cancellation when the mean is far
// from zero. Sums relative to one shift add exactly like plain sums, so block sums are combined
// by addition, in block order: the result does not depend on how blocks were spread over threads
// or CUDA blocks.
#pragma once
#include "common.h"

namespace fastopt {

// Mean (relative to the shift) and biased variance of `count` values from their shifted sums.
struct BnMoments {
    double mean, var;
};

FASTOPT_HD BnMoments bn_moments(double count, double sum, double sum_sq) {
    double mean = sum / count;
    double var = (sum_sq - sum * mean) / count;
    return BnMoments{mean, var < 0.0 ? 0.0 : var};  // rounding can go below 0; NaN stays
}

FASTOPT_HD double bn_invstd(double var, double eps) { return 1.0 / fo_sqrt(var + eps); }

// running = (1 - momentum) * running + momentum * batch
FASTOPT_HD double bn_running_update(double running, double batch, double momentum) {
    return (1.0 - momentum) * running + momentum * batch;
}

// A channel's batch statistics from its sums relative to `shift` (see the top of this file): the
// mean, the biased variance and 1 / sqrt(var + eps).
struct BnBatchStats {
    double mean, var, invstd;
};

FASTOPT_HD BnBatchStats bn_batch_stats(double count, double shift, double sum, double sum_sq, double eps) {
    BnMoments mo = bn_moments(count, sum, sum_sq);
    return BnBatchStats{shift + mo.mean, mo.var, bn_invstd(mo.var, eps)};
}

// running_var takes the unbiased variance of the batch: var * count / (count - 1).
FASTOPT_HD double bn_running_var_update(double running, double batch_var, double count, double momentum) {
    return bn_running_update(running, batch_var * (count / (count - 1.0)), momentum);
}

// Forward, per element: y = (x - mean) * (weight * invstd) + bias. The channel's
// scale = weight * invstd is formed once; subtracting the mean first keeps y accurate when the
// mean is large against the spread (x * scale - mean * scale would cancel).
template <class C>
FASTOPT_HD C bn_normalize(C x, C mean, C scale, C bias) {
    return (x - mean) * scale + bias;
}

// Backward, per channel. With S_dy = sum(dy) = dbias and S_dyx = sum(dy * (x - mean)), so that
// dweight = invstd * S_dyx, the training rule
//   dx = weight * invstd / M * (M * dy - dbias - xhat * dweight)
// becomes dx = dy_coef * dy - x_coef * (x - mean) - offset with the coefficients below.
// In evaluation x_coef and offset are zero: dx = weight * invstd * dy.
struct BnGradCoefs {
    double dy_coef, x_coef, offset;
};

FASTOPT_HD BnGradCoefs bn_grad_coefs(double weight, double invstd, double count, double sum_dy,
                                     double sum_dy_xmu, bool training) {
    double dy_coef = weight * invstd;
    if (!training) return BnGradCoefs{dy_coef, 0.0, 0.0};
    return BnGradCoefs{dy_coef, dy_coef * invstd * invstd * sum_dy_xmu / count, dy_coef * sum_dy / count};
}

// BN + add + ReLU (y = max(0, bn(x) + z)): the residual is added to bn(x) in the compute type and
// the sum rounded once. `v < 0 ? 0 : v` keeps a NaN a NaN, where a max could return the 0.
template <class C>
FASTOPT_HD C bn_relu(C v) {
    return v < C(0) ? C(0) : v;
}

// The gradient through the ReLU, from its output: dy where y > 0, else 0 (0 at 0, as torch).
template <class C>
FASTOPT_HD C bn_relu_grad(C dy, C y) {
    return y > C(0) ? dy : C(0);
}

// dweight = sum(dy * xhat) = invstd * sum(dy * (x - mean)); dbias = sum(dy).
FASTOPT_HD double bn_dweight(double sum_dy_xmu, double invstd) { return sum_dy_xmu * invstd; }

template <class C>
FASTOPT_HD C bn_input_grad(C dy, C x, C mean, C dy_coef, C x_coef, C offset) {
    return dy_coef * dy - x_coef * (x - mean) - offset;
}

}  // namespace fastopt
