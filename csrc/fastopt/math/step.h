// One optimizer step on one element: widen the stored values, apply the shared prologue and the
// rule, round and store. The CPU and CUDA drivers differ only in how they walk the indices.
#pragma once
#include "common.h"

namespace fastopt {

// The shared prologue of docs/algorithms.md in the compute type. grad_scale carries the maximize sign,
// 1 / loss_scale and the clip factor. Coupled L2 decay applies when weight_decay is nonzero (the
// host passes 0 in decoupled mode); decay_factor is 1 - lr * weight_decay in decoupled mode and
// exactly 1 otherwise.
template <class T> struct Prologue {
    T grad_scale, weight_decay, decay_factor;
    uint32_t rounding_seed;  // this step's seed for stochastic rounding
};

// Whether variant V of Rule reads the gradient: true unless the rule declares
// `reads_grad(int)` (Schedule-Free's train/eval move, which only reads p and z). A variant that
// does not is given some valid pointer in the gradient slot, which is never dereferenced.
template <class Rule, class = void> struct RuleReadsGrad {
    FASTOPT_HD static constexpr bool at(int) { return true; }
};
template <class Rule> struct RuleReadsGrad<Rule, decltype(void(Rule::reads_grad(0)))> {
    FASTOPT_HD static constexpr bool at(int v) { return Rule::reads_grad(v); }
};

template <class P> struct is_half { static constexpr bool value = false; };
template <> struct is_half<f16_t> { static constexpr bool value = true; };
template <> struct is_half<bf16_t> { static constexpr bool value = true; };

// Half parameters are stepped through a float32 master copy and rewritten from it, or, with
// kStochastic (bfloat16 only), stepped in place and stored with stochastic rounding.
// `element` is the index in the whole buffer (i can be an index into a local pack); it selects the
// random bits.
template <class Rule, int V, class C, class P, class G, class S, bool kStochastic = false>
FASTOPT_HD void step_element(int64_t i, P* __restrict__ param, const G* __restrict__ grad,
                             float* __restrict__ master, S* __restrict__ s0, S* __restrict__ s1,
                             S* __restrict__ s2, const Prologue<C>& pro,
                             const typename Rule::template Scalars<C>& k, int64_t element) {
    static_assert(!kStochastic || sizeof(P) == 2, "stochastic rounding is for bfloat16 params");
    constexpr int num_states = Rule::num_states(V);
    constexpr bool has_master = is_half<P>::value && !kStochastic;
    C p;
    if constexpr (has_master) p = C(master[i]);
    else p = load_as<C>(param[i]);
    C a = C(0), b = C(0), c = C(0);
    if constexpr (num_states > 0) a = load_as<C>(s0[i]);
    if constexpr (num_states > 1) b = load_as<C>(s1[i]);
    if constexpr (num_states > 2) c = load_as<C>(s2[i]);

    p = p * pro.decay_factor;
    C g = C(0);
    if constexpr (RuleReadsGrad<Rule>::at(V)) g = prologue_grad(load_as<C>(grad[i]), p, pro.grad_scale, pro.weight_decay);
    Rule::template update<V>(p, g, a, b, c, k);

    if constexpr (has_master) master[i] = float(p);
    if constexpr (kStochastic) param[i] = float_to_bf16_stochastic(float(p), element_random(pro.rounding_seed, element));
    else param[i] = store_as<P>(p);
    if constexpr (num_states > 0) s0[i] = store_as<S>(a);
    if constexpr (num_states > 1) s1[i] = store_as<S>(b);
    if constexpr (num_states > 2) s2[i] = store_as<S>(c);
}

}  // namespace fastopt
