// BatchNorm kernels for CuPy arrays, compiled by NVRTC at first use (fastopt/cuda/batchnorm.py).
// The per-element formulas and the per-channel finalization are csrc/fastopt/math/batchnorm.h's.
//
// Statistics take two stages: stage 1 reduces fixed chunks of every channel to float64 partial
// sums (shifted by the channel's first value; warp shuffles, then the block's warps in order);
// stage 2, one thread per channel, adds the partials in chunk order. Chunks depend only on the
// shape, so results are the same run to run. Launch shapes are fixed by the host: 256 threads
// for the axis-1 reductions, 32 x 8 for channels-last.
#include "fastopt/math/batchnorm.h"

namespace fastopt {

constexpr int kBnThreads = 256;
constexpr int kBnWarps = kBnThreads / 32;
constexpr int kBnRowThreads = 8;  // channels-last: threadIdx.y walks rows, threadIdx.x channels

__device__ __forceinline__ double bn_warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// The value a reduction sums about: the channel's first value (forward) or its saved mean
// (backward).
template <class X, class S, bool kGrad>
__device__ __forceinline__ double bn_center(const X* x, const S* mean, long long c, long long inner) {
    if (kGrad) return double(mean[c]);
    return load_as<double>(x[c * inner]);
}

// dy through a ReLU: from its output ym (dy where ym > 0) or from the mask its forward wrote (1
// where the output was > 0), whichever is given; dy itself when neither is.
template <class C, class X>
__device__ __forceinline__ C bn_relu_masked(C dy, const X* ym, const unsigned char* mask, long long k) {
    if (ym != nullptr) return bn_relu_grad<C>(dy, load_as<C>(ym[k]));
    if (mask != nullptr) return bn_relu_grad<C>(dy, C(mask[k]));
    return dy;
}

// Forward: sums of d and d * d with d = x - center; backward: sums of dy and dy * (x - mean),
// dy taken through the ReLU where ym or mask is given.
template <class X, bool kGrad>
__device__ __forceinline__ void bn_accumulate(const X* x, const X* dy, const X* ym, const unsigned char* mask,
                                              long long k, double center, double& a, double& b) {
    double d = load_as<double>(x[k]) - center;
    if (kGrad) {
        double g = bn_relu_masked<double>(load_as<double>(dy[k]), ym, mask, k);
        a += g;
        b += g * d;
    } else {
        a += d;
        b += d * d;
    }
}

// Axis-1 layouts: grid (channels, chunks). Chunk b of channel c covers the channel's values
// [b * chunk, (b + 1) * chunk) in (outer, inner) order: consecutive threads read consecutive
// addresses within each row, so loads are coalesced.
template <class X, class S, bool kGrad>
__device__ void bn_reduce_strided(const X* __restrict__ x, const X* __restrict__ dy, const X* __restrict__ ym,
                                  const unsigned char* __restrict__ mask,
                                  const S* __restrict__ mean,
                                  long long outer, long long channels, long long inner, long long chunk,
                                  double* __restrict__ part1, double* __restrict__ part2) {
    const long long c = blockIdx.x, b = blockIdx.y;
    const long long count = outer * inner;
    const long long begin = b * chunk;
    const long long end = begin + chunk < count ? begin + chunk : count;
    const double center = bn_center<X, S, kGrad>(x, mean, c, inner);
    double a = 0.0, s = 0.0;
    for (long long m = begin + threadIdx.x; m < end; m += kBnThreads) {
        long long o = m / inner, i = m - o * inner;
        bn_accumulate<X, kGrad>(x, dy, ym, mask, (o * channels + c) * inner + i, center, a, s);
    }
    __shared__ double warp1[kBnWarps], warp2[kBnWarps];
    a = bn_warp_sum(a);
    s = bn_warp_sum(s);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        warp1[warp] = a;
        warp2[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double t1 = 0.0, t2 = 0.0;
        for (int w = 0; w < kBnWarps; ++w) {
            t1 += warp1[w];
            t2 += warp2[w];
        }
        part1[c * gridDim.y + b] = t1;
        part2[c * gridDim.y + b] = t2;
    }
}

// Channels-last: block (32, 8), grid (ceil(channels / 32), row blocks). A warp reads 32
// consecutive channels of one row (coalesced); the 8 row lanes are then added in order.
template <class X, class S, bool kGrad>
__device__ void bn_reduce_rows(const X* __restrict__ x, const X* __restrict__ dy, const X* __restrict__ ym,
                               const unsigned char* __restrict__ mask,
                               const S* __restrict__ mean,
                               long long rows, long long channels, long long rows_per_block,
                               double* __restrict__ part1, double* __restrict__ part2) {
    const long long c = (long long)blockIdx.x * 32 + threadIdx.x;
    const long long r0 = (long long)blockIdx.y * rows_per_block;
    const long long r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
    double a = 0.0, s = 0.0;
    if (c < channels) {
        const double center = bn_center<X, S, kGrad>(x, mean, c, 1);
        for (long long r = r0 + threadIdx.y; r < r1; r += kBnRowThreads)
            bn_accumulate<X, kGrad>(x, dy, ym, mask, r * channels + c, center, a, s);
    }
    __shared__ double rows1[kBnRowThreads][32], rows2[kBnRowThreads][32];
    rows1[threadIdx.y][threadIdx.x] = a;
    rows2[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < channels) {
        double t1 = 0.0, t2 = 0.0;
        for (int y = 0; y < kBnRowThreads; ++y) {
            t1 += rows1[y][threadIdx.x];
            t2 += rows2[y][threadIdx.x];
        }
        part1[(long long)blockIdx.y * channels + c] = t1;
        part2[(long long)blockIdx.y * channels + c] = t2;
    }
}

// Stage 2 of the forward: partial sums to statistics, running statistics, saved statistics.
// Partials of channel c are at part[c * c_stride + p * p_stride], p < num_parts.
template <class X, class S>
__device__ void bn_finalize_forward(const X* __restrict__ x, const double* __restrict__ part1,
                                    const double* __restrict__ part2, long long num_parts, long long c_stride,
                                    long long p_stride, long long channels, long long inner, long long count,
                                    double eps, double momentum, S* running_mean, S* running_var,
                                    S* __restrict__ save_mean, S* __restrict__ save_invstd) {
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double s1 = 0.0, s2 = 0.0;
    for (long long p = 0; p < num_parts; ++p) {
        s1 += part1[c * c_stride + p * p_stride];
        s2 += part2[c * c_stride + p * p_stride];
    }
    const BnBatchStats st = bn_batch_stats(double(count), load_as<double>(x[c * inner]), s1, s2, eps);
    save_mean[c] = S(st.mean);
    save_invstd[c] = S(st.invstd);
    if (running_mean != nullptr) {
        running_mean[c] = S(bn_running_update(double(running_mean[c]), st.mean, momentum));
        running_var[c] = S(bn_running_var_update(double(running_var[c]), st.var, double(count), momentum));
    }
}

template <class S>
__device__ void bn_finalize_eval(long long channels, double eps, const S* __restrict__ running_mean,
                                 const S* __restrict__ running_var, S* __restrict__ save_mean,
                                 S* __restrict__ save_invstd) {
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    save_mean[c] = running_mean[c];
    save_invstd[c] = S(bn_invstd(double(running_var[c]), eps));
}

// Stage 2 of the backward: parameter gradients and dx's per-channel coefficients
// (coefs[0:C] dy_coef, [C:2C] x_coef, [2C:3C] offset). With no partials (evaluation, not
// affine) the sums are zero.
template <class S>
__device__ void bn_finalize_backward(const double* __restrict__ part1, const double* __restrict__ part2,
                                     long long num_parts, long long c_stride, long long p_stride,
                                     long long channels, long long count, const S* __restrict__ weight,
                                     const S* __restrict__ save_invstd, S* dweight, S* dbias, int training,
                                     S* __restrict__ coefs) {
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double s1 = 0.0, s2 = 0.0;
    for (long long p = 0; p < num_parts; ++p) {
        s1 += part1[c * c_stride + p * p_stride];
        s2 += part2[c * c_stride + p * p_stride];
    }
    double invstd = double(save_invstd[c]);
    double w = weight != nullptr ? double(weight[c]) : 1.0;
    BnGradCoefs k = bn_grad_coefs(w, invstd, double(count), s1, s2, training != 0);
    coefs[c] = S(k.dy_coef);
    coefs[channels + c] = S(k.x_coef);
    coefs[2 * channels + c] = S(k.offset);
    if (dweight != nullptr) {
        dweight[c] = S(bn_dweight(s2, invstd));
        dbias[c] = S(s1);
    }
}

// y = bn(x), + z where z is given, then max(0, .) where relu (BN + add + ReLU), and the ReLU's mask
// (1 where y > 0) where mask is given.
template <class X, class S>
__device__ void bn_normalize_all(const X* __restrict__ x, X* __restrict__ y, long long n, long long channels,
                                 long long inner, const S* __restrict__ save_mean,
                                 const S* __restrict__ save_invstd, const S* __restrict__ weight,
                                 const S* __restrict__ bias, const X* __restrict__ z = nullptr, bool relu = false,
                                 unsigned char* __restrict__ mask = nullptr) {
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (long long)gridDim.x * blockDim.x) {
        long long c = (k / inner) % channels;
        S scale = (weight != nullptr ? weight[c] : S(1)) * save_invstd[c];
        S shift = bias != nullptr ? bias[c] : S(0);
        S v = bn_normalize<S>(load_as<S>(x[k]), save_mean[c], scale, shift);
        if (z != nullptr) v = v + load_as<S>(z[k]);
        if (relu) v = bn_relu(v);
        const X out = store_as<X>(v);
        y[k] = out;
        if (mask != nullptr) mask[k] = load_as<S>(out) > S(0) ? 1 : 0;  // of the value as stored
    }
}

// dy taken through the ReLU where ym (its output) or mask is given; dres, where given, gets that dy.
template <class X, class S>
__device__ void bn_input_grad_all(const X* __restrict__ dy, const X* __restrict__ x, X* __restrict__ dx,
                                  long long n, long long channels, long long inner,
                                  const S* __restrict__ save_mean, const S* __restrict__ coefs,
                                  const X* __restrict__ ym = nullptr, X* __restrict__ dres = nullptr,
                                  const unsigned char* __restrict__ mask = nullptr) {
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n;
         k += (long long)gridDim.x * blockDim.x) {
        long long c = (k / inner) % channels;
        S g = bn_relu_masked<S>(load_as<S>(dy[k]), ym, mask, k);
        if (dres != nullptr) dres[k] = store_as<X>(g);
        dx[k] = store_as<X>(bn_input_grad<S>(g, load_as<S>(x[k]), save_mean[c], coefs[c],
                                             coefs[channels + c], coefs[2 * channels + c]));
    }
}

}  // namespace fastopt

// The __global__ entry points, one template per kernel; the launcher names instantiations such as
// fastopt_bn_reduce_strided<float, float, false>.
template <class X, class S, bool kGrad>
__global__ void __launch_bounds__(256) fastopt_bn_reduce_strided(const X* x, const X* dy, const S* mean,
                                                                 long long outer, long long channels,
                                                                 long long inner, long long chunk, double* part1,
                                                                 double* part2) {
    fastopt::bn_reduce_strided<X, S, kGrad>(x, dy, nullptr, nullptr, mean, outer, channels, inner, chunk, part1,
                                            part2);
}

template <class X, class S, bool kGrad>
__global__ void __launch_bounds__(256) fastopt_bn_reduce_rows(const X* x, const X* dy, const S* mean,
                                                              long long rows, long long channels,
                                                              long long rows_per_block, double* part1,
                                                              double* part2) {
    fastopt::bn_reduce_rows<X, S, kGrad>(x, dy, nullptr, nullptr, mean, rows, channels, rows_per_block, part1,
                                         part2);
}

template <class X, class S>
__global__ void fastopt_bn_finalize_forward(const X* x, const double* part1, const double* part2,
                                            long long num_parts, long long c_stride, long long p_stride,
                                            long long channels, long long inner, long long count, double eps,
                                            double momentum, S* running_mean, S* running_var, S* save_mean,
                                            S* save_invstd) {
    fastopt::bn_finalize_forward<X, S>(x, part1, part2, num_parts, c_stride, p_stride, channels, inner, count,
                                       eps, momentum, running_mean, running_var, save_mean, save_invstd);
}

template <class S>
__global__ void fastopt_bn_finalize_eval(long long channels, double eps, const S* running_mean,
                                         const S* running_var, S* save_mean, S* save_invstd) {
    fastopt::bn_finalize_eval<S>(channels, eps, running_mean, running_var, save_mean, save_invstd);
}

template <class S>
__global__ void fastopt_bn_finalize_backward(const double* part1, const double* part2, long long num_parts,
                                             long long c_stride, long long p_stride, long long channels,
                                             long long count, const S* weight, const S* save_invstd, S* dweight,
                                             S* dbias, int training, S* coefs) {
    fastopt::bn_finalize_backward<S>(part1, part2, num_parts, c_stride, p_stride, channels, count, weight,
                                     save_invstd, dweight, dbias, training, coefs);
}

template <class X, class S>
__global__ void fastopt_bn_normalize(const X* x, X* y, long long n, long long channels, long long inner,
                                     const S* save_mean, const S* save_invstd, const S* weight, const S* bias) {
    fastopt::bn_normalize_all<X, S>(x, y, n, channels, inner, save_mean, save_invstd, weight, bias);
}

template <class X, class S>
__global__ void fastopt_bn_input_grad(const X* dy, const X* x, X* dx, long long n, long long channels,
                                      long long inner, const S* save_mean, const S* coefs) {
    fastopt::bn_input_grad_all<X, S>(dy, x, dx, n, channels, inner, save_mean, coefs);
}

// BN + add + ReLU (fused_name_expressions in batchnorm.py). The backward's reductions through the
// ReLU: ym is its output, or null and mask the mask its forward wrote.
template <class X, class S>
__global__ void __launch_bounds__(256) fastopt_bn_reduce_strided_relu(const X* x, const X* dy, const X* ym,
                                                                      const unsigned char* mask, const S* mean, long long outer,
                                                                      long long channels, long long inner,
                                                                      long long chunk, double* part1,
                                                                      double* part2) {
    fastopt::bn_reduce_strided<X, S, true>(x, dy, ym, mask, mean, outer, channels, inner, chunk, part1, part2);
}

template <class X, class S>
__global__ void __launch_bounds__(256) fastopt_bn_reduce_rows_relu(const X* x, const X* dy, const X* ym,
                                                                   const unsigned char* mask, const S* mean, long long rows,
                                                                   long long channels, long long rows_per_block,
                                                                   double* part1, double* part2) {
    fastopt::bn_reduce_rows<X, S, true>(x, dy, ym, mask, mean, rows, channels, rows_per_block, part1, part2);
}

// z (the residual) and mask (the ReLU's, written) may be null; relu: 0 or 1.
template <class X, class S>
__global__ void fastopt_bn_normalize_fused(const X* x, X* y, long long n, long long channels, long long inner,
                                           const S* save_mean, const S* save_invstd, const S* weight,
                                           const S* bias, const X* z, int relu, unsigned char* mask) {
    fastopt::bn_normalize_all<X, S>(x, y, n, channels, inner, save_mean, save_invstd, weight, bias, z, relu != 0,
                                    mask);
}

// ym (the ReLU's output), mask (its mask, read when ym is null) and dres (dresidual) may be null.
template <class X, class S>
__global__ void fastopt_bn_input_grad_fused(const X* dy, const X* x, X* dx, long long n, long long channels,
                                            long long inner, const S* save_mean, const S* coefs, const X* ym,
                                            X* dres, const unsigned char* mask) {
    fastopt::bn_input_grad_all<X, S>(dy, x, dx, n, channels, inner, save_mean, coefs, ym, dres, mask);
}
