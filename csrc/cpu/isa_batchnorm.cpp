// BatchNorm forward and backward on the CPU, compiled once per ISA level (FASTOPT_ISA_NS).
//
// Both directions are one driver (run_pass) over a pass that supplies its reduction, its
// per-channel constants and its element-wise output. A call makes at most two passes over the
// data: the per-channel reduction (statistics in the forward, sum(dy) and sum(dy * (x - mean)) in
// the backward) and the element-wise pass that writes y or dx. Reductions run over fixed blocks
// whose partial sums are combined in a fixed order, so results are bitwise the same for every
// thread count and ISA level.
#if !defined(FASTOPT_ISA_NS)
#error "compile with -DFASTOPT_ISA_NS=<namespace>"
#endif

#include "bn_reduce.h"
#include "bn_store.h"

#include <cstdint>
#include <type_traits>

namespace fastopt::cpu::FASTOPT_ISA_NS {
namespace {

// A per-channel constant as the element loop reads it: one value for a run of one channel
// (channels-first), or the run's own channel for each element (channels-last: element j of the
// run belongs to channel c + j).
template <BnLayout L, class C>
struct PerChannel;
template <class C>
struct PerChannel<BnLayout::kChannelsFirst, C> {
    C value;
    PerChannel(const C* values, int64_t c) : value(values[c]) {}
    C operator[](int64_t) const { return value; }
};
template <class C>
struct PerChannel<BnLayout::kChannelsLast, C> {
    const C* __restrict__ values;
    PerChannel(const C* v, int64_t c) : values(v + c) {}
    C operator[](int64_t j) const { return values[j]; }
};

// One BatchNorm pass over (outer, channels, inner): the pass's reduction when it needs one
// (pass.sums(), into pass.sum1 / pass.sum2), its per-channel constants (pass.channel(c)), then
// its output (pass.row<layout>(writer, k, len, c) for each run of one channel or one row).
// Channel slices that fit in cache are fused: each group of channels is reduced and then written
// while its slices are still cached. Same sums in the same order either way: the same bits.
template <class Pass>
bool run_pass(Pass& pass, int64_t outer, int64_t channels, int64_t inner, int num_threads) {
    using X = typename Pass::Value;
    const BnLayout layout = bn_layout(inner);
    const int64_t count = outer * inner;
    const int nthreads = threads_for(count * channels, num_threads);
    const bool sweeps = sweeps_rows(inner, int64_t(sizeof(X)));
    const ChannelGroups groups = fused_groups(outer, channels, inner, Pass::kInputs * int64_t(sizeof(X)), sweeps,
                                              nthreads);
    const bool stream = use_streaming_stores<X>(count * channels);
    if (pass.needs_sums && groups.count > 0) {
        // Lane sums only for sweeps of several channels (group_sums), so that this scratch stays small.
        const bool keeps_lanes = sweeps && groups.count < channels;
        Buffer<double> lanes(keeps_lanes ? channels * 2 * kLanes : 1);
        if (!lanes.data) return false;
        auto add = pass.sums();
        parallel_tasks(groups.count, nthreads, [&](int64_t g) {
            const int64_t c0 = groups.begin(g), c1 = groups.begin(g + 1);
            double* group_lanes = keeps_lanes ? lanes.data + c0 * 2 * kLanes : lanes.data;
            group_sums(outer, channels, inner, c0, c1, add, group_lanes, pass.sum1, pass.sum2);
            for (int64_t c = c0; c < c1; ++c) pass.channel(c);
            for (int64_t o = 0; o < outer; ++o) {
                OutputWriter<X> writer(pass.out, (o * channels + c0) * inner, stream);
                for (int64_t c = c0; c < c1; ++c)
                    pass.template row<BnLayout::kChannelsFirst>(writer, (o * channels + c) * inner, inner, c);
                writer.finish();
            }
            stream_fence();
        });
        return true;
    }
    if (pass.needs_sums && !reduce(layout, outer, channels, inner, num_threads, pass.sum1, pass.sum2, pass.sums()))
        return false;
    for (int64_t c = 0; c < channels; ++c) pass.channel(c);
    for_each_run(pass.out, stream, layout, outer, channels, inner, num_threads,
                 [&](OutputWriter<X>& writer, int64_t k, int64_t len, int64_t c) {
        if (layout == BnLayout::kChannelsLast) pass.template row<BnLayout::kChannelsLast>(writer, k, len, c);
        else pass.template row<BnLayout::kChannelsFirst>(writer, k, len, c);
    });
    return true;
}

// The forward: y = normalize(x) (+ residual) (then ReLU). Statistics from the batch in training,
// from the running statistics in evaluation.
template <class X, class S, bool kRelu, bool kRes>
struct ForwardPass {
    using Value = X;
    using C = S;  // compute type: float32 for float32 and half data, float64 for float64
    static constexpr int64_t kInputs = 1;  // arrays the reduction reads
    const BnForwardCall& call;
    const X* __restrict__ x = static_cast<const X*>(call.x);
    const X* __restrict__ z = static_cast<const X*>(call.residual);
    X* out = static_cast<X*>(call.y);
    uint8_t* mask = kRelu ? call.relu_mask : nullptr;
    const S* weight = static_cast<const S*>(call.weight);
    const S* bias = static_cast<const S*>(call.bias);
    S* running_mean = static_cast<S*>(call.running_mean);
    S* running_var = static_cast<S*>(call.running_var);
    S* save_mean = static_cast<S*>(call.save_mean);
    S* save_invstd = static_cast<S*>(call.save_invstd);
    const bool needs_sums = call.training;
    const int64_t channels = call.channels, count = call.outer * call.inner;
    // Allocated before anything is written, so that a failure leaves the running statistics untouched.
    Buffer<C> mean{channels}, scale{channels}, shift_out{channels};
    Buffer<double> shift{needs_sums ? channels : 1}, sums1{needs_sums ? channels : 1}, sums2{needs_sums ? channels : 1};
    double* sum1 = sums1.data;
    double* sum2 = sums2.data;

    bool allocated() const {
        return mean.data && scale.data && shift_out.data && shift.data && sum1 && sum2;
    }
    void start() {
        if (needs_sums)
            for (int64_t c = 0; c < channels; ++c) shift[c] = load_as<double>(x[c * call.inner]);
    }
    ShiftedSums<X> sums() const { return ShiftedSums<X>{x, shift.data}; }

    // The channel's statistics (and running statistics), then the normalization's constants.
    void channel(int64_t c) {
        if (needs_sums) {
            const BnBatchStats st = bn_batch_stats(double(count), shift[c], sum1[c], sum2[c], call.eps);
            save_mean[c] = S(st.mean);
            save_invstd[c] = S(st.invstd);
            if (running_mean != nullptr) {
                running_mean[c] = S(bn_running_update(double(running_mean[c]), st.mean, call.momentum));
                running_var[c] =
                    S(bn_running_var_update(double(running_var[c]), st.var, double(count), call.momentum));
            }
        } else {
            save_mean[c] = running_mean[c];
            save_invstd[c] = S(bn_invstd(double(running_var[c]), call.eps));
        }
        mean[c] = C(save_mean[c]);
        scale[c] = (weight != nullptr ? C(weight[c]) : C(1)) * C(save_invstd[c]);
        shift_out[c] = bias != nullptr ? C(bias[c]) : C(0);
    }

    template <BnLayout L>
    void row(OutputWriter<X>& writer, int64_t k, int64_t len, int64_t c) const {
        const X* __restrict__ xs = x + k;
        const X* __restrict__ zs = kRes ? z + k : nullptr;
        const PerChannel<L, C> mc(mean.data, c), sc(scale.data, c), bc(shift_out.data, c);
        auto value = [=](int64_t j) __attribute__((always_inline)) {
            C v = bn_normalize<C>(load_as<C>(xs[j]), mc[j], sc[j], bc[j]);
            if constexpr (kRes) v = v + load_as<C>(zs[j]);
            if constexpr (kRelu) v = bn_relu(v);
            return store_as<X>(v);
        };
        writer.append(len, value);
        if (mask != nullptr) {
            // The mask of the value as stored (a half can round a tiny positive value to 0),
            // computed again from the run, still in L1: bytes stored in the output's loop made it
            // assemble its vectors from narrow pieces, 2x slower.
            uint8_t* __restrict__ ms = mask + k;
#pragma omp simd
            for (int64_t j = 0; j < len; ++j) ms[j] = positive_byte(load_as<C>(value(j)));
        }
    }
};

// The backward's dy: through the ReLU (its output y, or its mask: Y = uint8_t) when kMask.
template <bool kMask, class C, class X, class Y>
inline C grad_in(const X* __restrict__ dy, const Y* __restrict__ y, int64_t j) {
    if constexpr (kMask) return relu_grad_at<C>(load_as<C>(dy[j]), y, j);
    return load_as<C>(dy[j]);
}

// The backward: dx (and dresidual, the dy it used), and dweight, dbias from the two sums. Y: the
// type of what recovers the ReLU's mask (X for its output, uint8_t for a mask).
template <class X, class S, bool kMask, class Y = X>
struct BackwardPass {
    using Value = X;
    using C = S;
    static constexpr int64_t kInputs = kMask ? 3 : 2;
    const BnBackwardCall& call;
    const X* __restrict__ dy = static_cast<const X*>(call.dy);
    const Y* __restrict__ y = static_cast<const Y*>(std::is_same_v<Y, uint8_t> ? static_cast<const void*>(call.relu_mask)
                                                                               : call.y);
    X* __restrict__ dres = static_cast<X*>(call.dresidual);
    const X* __restrict__ x = static_cast<const X*>(call.x);
    X* out = static_cast<X*>(call.dx);
    const S* weight = static_cast<const S*>(call.weight);
    const S* save_mean = static_cast<const S*>(call.save_mean);
    const S* save_invstd = static_cast<const S*>(call.save_invstd);
    S* dweight = static_cast<S*>(call.dweight);
    S* dbias = static_cast<S*>(call.dbias);
    const bool needs_sums = call.training || dweight != nullptr;
    const int64_t channels = call.channels, count = call.outer * call.inner;
    Buffer<double> mean_wide{channels}, sums1{channels}, sums2{channels};  // zeros without a reduction
    Buffer<C> mean{channels}, dy_coef{channels}, x_coef{channels}, offset{channels};
    double* sum1 = sums1.data;
    double* sum2 = sums2.data;

    bool allocated() const {
        return mean_wide.data && sum1 && sum2 && mean.data && dy_coef.data && x_coef.data && offset.data;
    }
    void start() {
        for (int64_t c = 0; c < channels; ++c) mean_wide[c] = double(save_mean[c]);
    }
    auto sums() const { return make_grad_sums<kMask>(dy, x, y, mean_wide.data); }

    // Parameter gradients and dx's coefficients from the two sums.
    void channel(int64_t c) {
        double invstd = double(save_invstd[c]);
        double w = weight != nullptr ? double(weight[c]) : 1.0;
        BnGradCoefs k = bn_grad_coefs(w, invstd, double(count), sum1[c], sum2[c], call.training);
        mean[c] = C(save_mean[c]);
        dy_coef[c] = C(k.dy_coef);
        x_coef[c] = C(k.x_coef);
        offset[c] = C(k.offset);
        if (dweight != nullptr) {
            dweight[c] = S(bn_dweight(sum2[c], invstd));
            dbias[c] = S(sum1[c]);
        }
    }

    template <BnLayout L>
    void row(OutputWriter<X>& writer, int64_t k, int64_t len, int64_t c) const {
        const X* __restrict__ dys = dy + k;
        const X* __restrict__ xs = x + k;
        const Y* __restrict__ ys = kMask ? y + k : nullptr;
        if (dres != nullptr) {  // the dy the backward used (exact: a selection, no rounding)
            X* __restrict__ dr = dres + k;
#pragma omp simd
            for (int64_t j = 0; j < len; ++j) dr[j] = store_as<X>(grad_in<kMask, C>(dys, ys, j));
        }
        const PerChannel<L, C> mc(mean.data, c), ac(dy_coef.data, c), bc(x_coef.data, c), oc(offset.data, c);
        writer.append(len, [=](int64_t j) __attribute__((always_inline)) {
            C g = grad_in<kMask, C>(dys, ys, j);
            return store_as<X>(bn_input_grad<C>(g, load_as<C>(xs[j]), mc[j], ac[j], bc[j], oc[j]));
        });
    }
};

template <class Pass, class Call>
bool run(const Call& call) {
    Pass pass{call};
    if (!pass.allocated()) return false;
    pass.start();
    return run_pass(pass, call.outer, call.channels, call.inner, call.num_threads);
}

// One instantiation per (dtype, epilogue): no branch on the options inside the loops.
template <class X, class S>
bool forward_for(const BnForwardCall& call) {
    if (call.residual != nullptr)
        return call.relu ? run<ForwardPass<X, S, true, true>>(call) : run<ForwardPass<X, S, false, true>>(call);
    return call.relu ? run<ForwardPass<X, S, true, false>>(call) : run<ForwardPass<X, S, false, false>>(call);
}

template <class X, class S>
bool backward_for(const BnBackwardCall& call) {
    if (call.relu_mask != nullptr) return run<BackwardPass<X, S, true, uint8_t>>(call);
    return call.y != nullptr ? run<BackwardPass<X, S, true>>(call) : run<BackwardPass<X, S, false>>(call);
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
