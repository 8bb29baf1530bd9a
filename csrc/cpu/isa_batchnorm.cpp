// BatchNorm forward and backward on the CPU, compiled once per ISA level (FASTOPT_ISA_NS).
//
// Each call makes at most two passes over the data: a per-channel reduction (statistics in the
// forward, sum(dy) and sum(dy * (x - mean)) in the backward) and an element-wise pass that
// writes y or dx. Reductions run over fixed blocks whose partial sums are combined in a fixed
// order, so results are bitwise the same for every thread count and ISA level.
#if !defined(FASTOPT_ISA_NS)
#error "compile with -DFASTOPT_ISA_NS=<namespace>"
#endif

#include "bn_reduce.h"
#include "bn_store.h"

#include <cstdint>

namespace fastopt::cpu::FASTOPT_ISA_NS {
namespace {

// What the forward applies after the normalization: + residual, then ReLU (each optional).
template <bool kRelu, bool kRes, class C, class X>
inline C epilogue(C v, const X* __restrict__ z, int64_t j) {
    if constexpr (kRes) v = v + load_as<C>(z[j]);
    if constexpr (kRelu) v = bn_relu(v);
    return v;
}

// The backward's dy: through the ReLU (its output y) when kMask.
template <bool kMask, class C, class X>
inline C grad_in(const X* __restrict__ dy, const X* __restrict__ y, int64_t j) {
    if constexpr (kMask) return bn_relu_grad<C>(load_as<C>(dy[j]), load_as<C>(y[j]));
    return load_as<C>(dy[j]);
}

// dresidual: the dy that the backward used (exact: a selection, no rounding), stored plainly.
template <bool kMask, class C, class X>
inline void store_grad_in(X* __restrict__ out, const X* __restrict__ dy, const X* __restrict__ y, int64_t len) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) out[j] = store_as<X>(grad_in<kMask, C>(dy, y, j));
}

template <class X, class S, bool kRelu, bool kRes>
bool forward_typed(const BnForwardCall& call) {
    using C = S;  // compute type: float32 for float32 and half data, float64 for float64
    const X* __restrict__ x = static_cast<const X*>(call.x);
    const X* __restrict__ z = static_cast<const X*>(call.residual);
    X* __restrict__ y = static_cast<X*>(call.y);
    const int64_t channels = call.channels, inner = call.inner, outer = call.outer;
    const S* weight = static_cast<const S*>(call.weight);
    const S* bias = static_cast<const S*>(call.bias);
    S* running_mean = static_cast<S*>(call.running_mean);
    S* running_var = static_cast<S*>(call.running_var);
    S* save_mean = static_cast<S*>(call.save_mean);
    S* save_invstd = static_cast<S*>(call.save_invstd);
    // Allocated first, so that a failure leaves the running statistics untouched.
    Buffer<C> mean(channels), scale(channels), shift_out(channels);
    if (!mean.data || !scale.data || !shift_out.data) return false;

    const int64_t count = outer * inner;
    // Per channel: statistics, running statistics and the normalization's constants.
    auto finalize = [&](int64_t c, double shift, double sum1, double sum2) {
        const BnBatchStats st = bn_batch_stats(double(count), shift, sum1, sum2, call.eps);
        save_mean[c] = S(st.mean);
        save_invstd[c] = S(st.invstd);
        if (running_mean != nullptr) {
            running_mean[c] = S(bn_running_update(double(running_mean[c]), st.mean, call.momentum));
            running_var[c] = S(bn_running_var_update(double(running_var[c]), st.var, double(count), call.momentum));
        }
    };
    auto constants = [&](int64_t c) {
        mean[c] = C(save_mean[c]);
        scale[c] = (weight != nullptr ? C(weight[c]) : C(1)) * C(save_invstd[c]);
        shift_out[c] = bias != nullptr ? C(bias[c]) : C(0);
    };

    const int nthreads = threads_for(count * channels, call.num_threads);
    const bool sweeps = sweeps_rows(inner, int64_t(sizeof(X)));
    const ChannelGroups groups = fused_groups(outer, channels, inner, int64_t(sizeof(X)), sweeps, nthreads);
    const bool stream = use_streaming_stores<X>(count * channels);
    if (call.training && groups.count > 0) {
        // Lane sums only for sweeps of several channels (group_sums), so that this scratch stays small.
        Buffer<double> shift(channels), sum1(channels), sum2(channels);
        const bool keeps_lanes = sweeps && groups.count < channels;
        Buffer<double> lanes(keeps_lanes ? channels * 2 * kLanes : 1);
        if (!shift.data || !sum1.data || !sum2.data || !lanes.data) return false;
        for (int64_t c = 0; c < channels; ++c) shift[c] = load_as<double>(x[c * inner]);
        const double* __restrict__ sh = shift.data;
        ShiftedSums<X> add{x, sh};
        parallel_tasks(groups.count, nthreads, [&](int64_t g) {
            const int64_t c0 = groups.begin(g), c1 = groups.begin(g + 1);
            double* group_lanes = keeps_lanes ? lanes.data + c0 * 2 * kLanes : lanes.data;
            group_sums(outer, channels, inner, c0, c1, add, group_lanes, sum1.data, sum2.data);
            for (int64_t c = c0; c < c1; ++c) {
                finalize(c, shift[c], sum1[c], sum2[c]);
                constants(c);
            }
            for (int64_t o = 0; o < outer; ++o) {
                OutputWriter<X> writer(y, (o * channels + c0) * inner, stream);
                for (int64_t c = c0; c < c1; ++c) {
                    const X* __restrict__ xs = x + (o * channels + c) * inner;
                    const X* __restrict__ zs = kRes ? z + (o * channels + c) * inner : nullptr;
                    const C mc = mean[c], sc = scale[c], bc = shift_out[c];
                    writer.append(inner, [=](int64_t j) __attribute__((always_inline)) {
                        C v = bn_normalize<C>(load_as<C>(xs[j]), mc, sc, bc);
                        return store_as<X>(epilogue<kRelu, kRes>(v, zs, j));
                    });
                }
                writer.finish();
            }
            stream_fence();
        });
        return true;
    }

    if (call.training) {
        Buffer<double> shift(channels), sum1(channels), sum2(channels);
        if (!shift.data || !sum1.data || !sum2.data) return false;
        for (int64_t c = 0; c < channels; ++c) shift[c] = load_as<double>(x[c * inner]);
        const double* __restrict__ sh = shift.data;
        bool reduced = reduce(outer, channels, inner, call.num_threads, sum1.data, sum2.data, ShiftedSums<X>{x, sh});
        if (!reduced) return false;
        for (int64_t c = 0; c < channels; ++c) finalize(c, shift[c], sum1[c], sum2[c]);
    } else {
        for (int64_t c = 0; c < channels; ++c) {
            save_mean[c] = running_mean[c];
            save_invstd[c] = S(bn_invstd(double(running_var[c]), call.eps));
        }
    }
    for (int64_t c = 0; c < channels; ++c) constants(c);

    const C* __restrict__ m = mean.data;
    const C* __restrict__ s = scale.data;
    const C* __restrict__ b = shift_out.data;
    for_each_run(y, stream, outer, channels, inner, call.num_threads,
                 [&](OutputWriter<X>& writer, int64_t k, int64_t len, int64_t c) {
        const X* __restrict__ xs = x + k;
        const X* __restrict__ zs = kRes ? z + k : nullptr;
        if (inner == 1) {
            const C* __restrict__ mc = m + c;
            const C* __restrict__ sc = s + c;
            const C* __restrict__ bc = b + c;
            writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
                C v = bn_normalize<C>(load_as<C>(xs[j]), mc[j], sc[j], bc[j]);
                return store_as<X>(epilogue<kRelu, kRes>(v, zs, j));
            });
        } else {
            const C mc = m[c], sc = s[c], bc = b[c];
            writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
                C v = bn_normalize<C>(load_as<C>(xs[j]), mc, sc, bc);
                return store_as<X>(epilogue<kRelu, kRes>(v, zs, j));
            });
        }
    });
    return true;
}

template <class X, class S, bool kMask>
bool backward_typed(const BnBackwardCall& call) {
    using C = S;
    const X* __restrict__ dy = static_cast<const X*>(call.dy);
    const X* __restrict__ y = static_cast<const X*>(call.y);  // the ReLU's output when kMask
    X* __restrict__ dres = static_cast<X*>(call.dresidual);
    const X* __restrict__ x = static_cast<const X*>(call.x);
    X* __restrict__ dx = static_cast<X*>(call.dx);
    const int64_t channels = call.channels, inner = call.inner, outer = call.outer;
    const S* weight = static_cast<const S*>(call.weight);
    const S* save_mean = static_cast<const S*>(call.save_mean);
    const S* save_invstd = static_cast<const S*>(call.save_invstd);
    S* dweight = static_cast<S*>(call.dweight);
    S* dbias = static_cast<S*>(call.dbias);
    const int64_t count = outer * inner;

    Buffer<double> mean_wide(channels), sum_dy(channels), sum_dy_xmu(channels);
    Buffer<C> mean(channels), dy_coef(channels), x_coef(channels), offset(channels);
    if (!mean_wide.data || !sum_dy.data || !sum_dy_xmu.data || !mean.data || !dy_coef.data || !x_coef.data ||
        !offset.data)
        return false;
    for (int64_t c = 0; c < channels; ++c) mean_wide[c] = double(save_mean[c]);
    // Per channel: parameter gradients and dx's coefficients from the two sums.
    auto finalize = [&](int64_t c, double s_dy, double s_dy_xmu) {
        double invstd = double(save_invstd[c]);
        double w = weight != nullptr ? double(weight[c]) : 1.0;
        BnGradCoefs k = bn_grad_coefs(w, invstd, double(count), s_dy, s_dy_xmu, call.training);
        mean[c] = C(save_mean[c]);
        dy_coef[c] = C(k.dy_coef);
        x_coef[c] = C(k.x_coef);
        offset[c] = C(k.offset);
        if (dweight != nullptr) {
            dweight[c] = S(bn_dweight(s_dy_xmu, invstd));
            dbias[c] = S(s_dy);
        }
    };
    const bool needs_sums = call.training || dweight != nullptr;
    const int nthreads = threads_for(count * channels, call.num_threads);
    const bool sweeps = sweeps_rows(inner, int64_t(sizeof(X)));
    const int64_t inputs = kMask ? 3 : 2;
    const ChannelGroups groups = fused_groups(outer, channels, inner, inputs * int64_t(sizeof(X)), sweeps, nthreads);
    const bool stream = use_streaming_stores<X>(count * channels);
    if (needs_sums && groups.count > 0) {
        const bool keeps_lanes = sweeps && groups.count < channels;  // as in the forward
        Buffer<double> lanes(keeps_lanes ? channels * 2 * kLanes : 1);
        if (!lanes.data) return false;
        const double* __restrict__ mw = mean_wide.data;
        std::conditional_t<kMask, MaskedGradSums<X>, GradSums<X>> add = make_grad_sums<kMask>(dy, x, y, mw);
        parallel_tasks(groups.count, nthreads, [&](int64_t g) {
            const int64_t c0 = groups.begin(g), c1 = groups.begin(g + 1);
            double* group_lanes = keeps_lanes ? lanes.data + c0 * 2 * kLanes : lanes.data;
            group_sums(outer, channels, inner, c0, c1, add, group_lanes, sum_dy.data,
                       sum_dy_xmu.data);
            for (int64_t c = c0; c < c1; ++c) finalize(c, sum_dy[c], sum_dy_xmu[c]);
            for (int64_t o = 0; o < outer; ++o) {
                OutputWriter<X> writer(dx, (o * channels + c0) * inner, stream);
                for (int64_t c = c0; c < c1; ++c) {
                    const int64_t base = (o * channels + c) * inner;
                    const X* __restrict__ dys = dy + base;
                    const X* __restrict__ xs = x + base;
                    const X* __restrict__ ys = kMask ? y + base : nullptr;
                    if (dres != nullptr) store_grad_in<kMask, C>(dres + base, dys, ys, inner);
                    const C mc = mean[c], ac = dy_coef[c], bc = x_coef[c], oc = offset[c];
                    writer.append(inner, [=](int64_t j) __attribute__((always_inline)) {
                        C g = grad_in<kMask, C>(dys, ys, j);
                        return store_as<X>(bn_input_grad<C>(g, load_as<C>(xs[j]), mc, ac, bc, oc));
                    });
                }
                writer.finish();
            }
            stream_fence();
        });
        return true;
    }
    if (needs_sums) {
        const double* __restrict__ mw = mean_wide.data;
        bool reduced = reduce(outer, channels, inner, call.num_threads, sum_dy.data, sum_dy_xmu.data,
                              make_grad_sums<kMask>(dy, x, y, mw));
        if (!reduced) return false;
    }
    for (int64_t c = 0; c < channels; ++c) finalize(c, sum_dy[c], sum_dy_xmu[c]);
    const C* __restrict__ m = mean.data;
    const C* __restrict__ a = dy_coef.data;
    const C* __restrict__ b = x_coef.data;
    const C* __restrict__ o = offset.data;
    for_each_run(dx, stream, outer, channels, inner, call.num_threads,
                 [&](OutputWriter<X>& writer, int64_t k, int64_t len, int64_t c) {
        const X* __restrict__ dys = dy + k;
        const X* __restrict__ xs = x + k;
        const X* __restrict__ ys = kMask ? y + k : nullptr;
        if (dres != nullptr) store_grad_in<kMask, C>(dres + k, dys, ys, len);
        if (inner == 1) {
            const C* __restrict__ mc = m + c;
            const C* __restrict__ ac = a + c;
            const C* __restrict__ bc = b + c;
            const C* __restrict__ oc = o + c;
            writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
                C g = grad_in<kMask, C>(dys, ys, j);
                return store_as<X>(bn_input_grad<C>(g, load_as<C>(xs[j]), mc[j], ac[j], bc[j], oc[j]));
            });
        } else {
            const C mc = m[c], ac = a[c], bc = b[c], oc = o[c];
            writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
                C g = grad_in<kMask, C>(dys, ys, j);
                return store_as<X>(bn_input_grad<C>(g, load_as<C>(xs[j]), mc, ac, bc, oc));
            });
        }
    });
    return true;
}

// One instantiation per (dtype, epilogue): no branch on the options inside the loops.
template <class X, class S>
bool forward_for(const BnForwardCall& call) {
    if (call.residual != nullptr)
        return call.relu ? forward_typed<X, S, true, true>(call) : forward_typed<X, S, false, true>(call);
    return call.relu ? forward_typed<X, S, true, false>(call) : forward_typed<X, S, false, false>(call);
}

template <class X, class S>
bool backward_for(const BnBackwardCall& call) {
    return call.y != nullptr ? backward_typed<X, S, true>(call) : backward_typed<X, S, false>(call);
}

}  // namespace

bool batch_norm_forward(const BnForwardCall& call) {
    switch (call.dtype) {
        case kFloat32: return forward_for<float, float>(call);
        case kFloat64: return forward_for<double, double>(call);
        case kFloat16: return forward_for<f16_t, float>(call);
        case kBFloat16: return forward_for<bf16_t, float>(call);
    }
    return false;
}

bool batch_norm_backward(const BnBackwardCall& call) {
    switch (call.dtype) {
        case kFloat32: return backward_for<float, float>(call);
        case kFloat64: return backward_for<double, double>(call);
        case kFloat16: return backward_for<f16_t, float>(call);
        case kBFloat16: return backward_for<bf16_t, float>(call);
    }
    return false;
}

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
