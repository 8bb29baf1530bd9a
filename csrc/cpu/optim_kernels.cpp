// The threaded driver of one optimizer rule, compiled once per (rule, ISA level) (rule_driver.h).
#include <algorithm>
#include <utility>

#include "ema.h"
#include "parallel.h"
#include "rule_driver.h"

namespace fastopt::cpu::FASTOPT_ISA_NS {
namespace {

using Rule = ::fastopt::FASTOPT_RULE;

template <int V, class C, class P, class G, class S, bool kStochastic>
void run_variant(const StepCall& call) {
    const typename Rule::template Scalars<C> scalars(call.scalars);
    const Prologue<C> prologue{C(call.grad_scale), C(call.weight_decay), C(call.decay_factor),
                               call.rounding_seed};
    P* param = static_cast<P*>(call.param);
    const G* grad = static_cast<const G*>(call.grad);
    float* master = call.master;
    S* s0 = static_cast<S*>(call.states[0]);
    S* s1 = static_cast<S*>(call.states[1]);
    S* s2 = static_cast<S*>(call.states[2]);
    const EmaRange ema = ema_range(param, call.param_dtype, master, call.ema, call.ema_dtype, call.ema_weight);
    parallel_ranges(call.n, call.num_threads, [&](int64_t lo, int64_t hi) {
        const auto k = scalars;
        const auto pro = prologue;
        // With an EMA, piece by piece: each piece is averaged right after it is stepped (ema.h).
        for (int64_t at = lo, step = ema_step(ema, hi - lo); at < hi; at += step) {
            const int64_t end = std::min(hi, at + step);
#pragma omp simd
            for (int64_t i = at; i < end; ++i)
                step_element<Rule, V, C, P, G, S, kStochastic>(i, param, grad, master, s0, s1, s2, pro, k, i);
            ema_lerp(ema, at, end);
        }
    });
}

// The segment table: threads split the whole index range; a chunk may span several arrays, each
// piece stepped by the same inner loop as run_variant (so the bits are those of one call per array).
template <int V, class C, class P, class G, class S, bool kStochastic>
void run_variant(const MultiStepCall& call) {
    const Segment* first = call.segments;
    const Segment* last = first + call.num_segments;
    parallel_ranges(call.total, call.num_threads, [&](int64_t lo, int64_t hi) {
        const Segment* seg = std::upper_bound(first, last, lo, [](int64_t at, const Segment& s) {
            return at < s.offset + s.n;
        });
        for (; seg != last && seg->offset < hi; ++seg) {
            const int64_t begin = std::max(lo, seg->offset) - seg->offset;
            const int64_t end = std::min(hi, seg->offset + seg->n) - seg->offset;
            const double* row = call.rows + seg->row * kRowWidth;
            const typename Rule::template Scalars<C> k(row);
            const Prologue<C> pro{C(row[kRowScalars]), C(row[kRowScalars + 1]), C(row[kRowScalars + 2]),
                                  seg->rounding_seed};
            P* param = static_cast<P*>(seg->param);
            const G* grad = static_cast<const G*>(seg->grad);
            float* master = seg->master;
            S* s0 = static_cast<S*>(seg->states[0]);
            S* s1 = static_cast<S*>(seg->states[1]);
            S* s2 = static_cast<S*>(seg->states[2]);
            const EmaRange ema = ema_range(param, call.param_dtype, master, seg->ema, call.ema_dtype,
                                           seg->ema_weight);
            for (int64_t at = begin, step = ema_step(ema, end - begin); at < end; at += step) {
                const int64_t stop = std::min(end, at + step);
#pragma omp simd
                for (int64_t i = at; i < stop; ++i)
                    step_element<Rule, V, C, P, G, S, kStochastic>(i, param, grad, master, s0, s1, s2, pro, k, i);
                ema_lerp(ema, at, stop);
            }
        }
    });
}

template <class C, class P, class G, class S, bool kStochastic, class Call, int... Vs>
void run_types(const Call& call, std::integer_sequence<int, Vs...>) {
    // One branch per compile-time variant; the Python layer only passes valid variants.
    ((call.variant == Vs ? run_variant<Vs, C, P, G, S, kStochastic>(call) : void()), ...);
}

template <class C, class P, class G, class S, bool kStochastic = false, class Call>
void run(const Call& call) {
    run_types<C, P, G, S, kStochastic>(call, std::make_integer_sequence<int, Rule::kNumVariants>{});
}

// Half parameters: float32 master weights (or, for bfloat16 without them, stochastic rounding),
// gradient in the parameter's type or float32, state in float32 or bfloat16.
template <class P, bool kStochastic, class Call>
void run_half(const Call& call) {
    bool grad_f32 = call.grad_dtype == kFloat32, state_bf16 = call.state_dtype == kBFloat16;
    if (grad_f32 && state_bf16) run<float, P, float, bf16_t, kStochastic>(call);
    else if (grad_f32) run<float, P, float, float, kStochastic>(call);
    else if (state_bf16) run<float, P, P, bf16_t, kStochastic>(call);
    else run<float, P, P, float, kStochastic>(call);
}

template <class Call>
void dispatch_types(const Call& call, bool has_master) {
    switch (call.param_dtype) {
        case kFloat64: run<double, double, double, double>(call); break;
        case kFloat32:
            if (call.state_dtype == kBFloat16) run<float, float, float, bf16_t>(call);
            else run<float, float, float, float>(call);
            break;
        case kFloat16: run_half<f16_t, false>(call); break;
        case kBFloat16:
            if (has_master) run_half<bf16_t, false>(call);
            else run_half<bf16_t, true>(call);
            break;
    }
}

}  // namespace

void FASTOPT_CAT(step_, FASTOPT_RULE)(const StepCall& call) { dispatch_types(call, call.master != nullptr); }

void FASTOPT_CAT(multi_step_, FASTOPT_RULE)(const MultiStepCall& call) { dispatch_types(call, call.has_master); }

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
