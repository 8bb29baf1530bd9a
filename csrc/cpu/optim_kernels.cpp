// The threaded driver of one optimizer rule, compiled once per (rule, ISA level).
// FASTOPT_RULE names the rule struct of fastopt/math/all.h, FASTOPT_ISA_NS the ISA namespace.
#include <utility>

#include "fastopt/math/all.h"
#include "kernels.h"
#include "parallel.h"

#if !defined(FASTOPT_RULE) || !defined(FASTOPT_ISA_NS)
#error "compile with -DFASTOPT_RULE=<rule> -DFASTOPT_ISA_NS=<namespace>"
#endif

#define FASTOPT_CAT2(a, b) a##b
#define FASTOPT_CAT(a, b) FASTOPT_CAT2(a, b)

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
    parallel_ranges(call.n, call.num_threads, [&](int64_t lo, int64_t hi) {
        const auto k = scalars;
        const auto pro = prologue;
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i)
            step_element<Rule, V, C, P, G, S, kStochastic>(i, param, grad, master, s0, s1, s2, pro, k, i);
    });
}

template <class C, class P, class G, class S, bool kStochastic, int... Vs>
void run_types(const StepCall& call, std::integer_sequence<int, Vs...>) {
    // One branch per compile-time variant; the Python layer only passes valid variants.
    ((call.variant == Vs ? run_variant<Vs, C, P, G, S, kStochastic>(call) : void()), ...);
}

template <class C, class P, class G, class S, bool kStochastic = false>
void run(const StepCall& call) {
    run_types<C, P, G, S, kStochastic>(call, std::make_integer_sequence<int, Rule::kNumVariants>{});
}

// Half parameters: float32 master weights (or, for bfloat16 without them, stochastic rounding),
// gradient in the parameter's type or float32, state in float32 or bfloat16.
template <class P, bool kStochastic>
void run_half(const StepCall& call) {
    bool grad_f32 = call.grad_dtype == kFloat32, state_bf16 = call.state_dtype == kBFloat16;
    if (grad_f32 && state_bf16) run<float, P, float, bf16_t, kStochastic>(call);
    else if (grad_f32) run<float, P, float, float, kStochastic>(call);
    else if (state_bf16) run<float, P, P, bf16_t, kStochastic>(call);
    else run<float, P, P, float, kStochastic>(call);
}

}  // namespace

void FASTOPT_CAT(step_, FASTOPT_RULE)(const StepCall& call) {
    switch (call.param_dtype) {
        case kFloat64: run<double, double, double, double>(call); break;
        case kFloat32:
            if (call.state_dtype == kBFloat16) run<float, float, float, bf16_t>(call);
            else run<float, float, float, float>(call);
            break;
        case kFloat16: run_half<f16_t, false>(call); break;
        case kBFloat16:
            if (call.master) run_half<bf16_t, false>(call);
            else run_half<bf16_t, true>(call);
            break;
    }
}

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
