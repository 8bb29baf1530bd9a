// The threaded driver of one rule over block-wise quantized states, compiled once per (rule, ISA
// level) like optim_kernels.cpp. Threads own whole blocks. Per block: dequantize each state
// into a float32 scratch, run the rule's ordinary float32-state step on the block (the same
// step_element as every other path), average the new params into the EMA of the weights where
// there is one, then store each state's new absmax and codes. Every array is read and written once.
#include <algorithm>
#include <utility>

#include "blockwise.h"
#include "ema.h"
#include "fastopt/math/step.h"
#include "parallel.h"
#include "rule_driver.h"

namespace fastopt::cpu::FASTOPT_ISA_NS {
namespace {

using Rule = ::fastopt::FASTOPT_RULE;

template <bool kFp8>
void dequantize_block(const uint8_t* __restrict__ codes, float scale, const float* __restrict__ values,
                      float* __restrict__ out, int len) {
    if constexpr (kFp8) {
#pragma omp simd
        for (int i = 0; i < len; ++i) out[i] = e4m3_to_float(codes[i]) * scale;
    } else {
#pragma omp simd
        for (int i = 0; i < len; ++i) out[i] = values[codes[i]] * scale;
    }
}

// Returns the block's new absmax, having written its codes.
template <bool kFp8>
float quantize_block(const float* __restrict__ s, int len, const CodeTables& t, uint8_t* __restrict__ codes) {
    uint32_t top = 0;
#pragma omp simd reduction(max : top)
    for (int i = 0; i < len; ++i) top = std::max(top, abs_bits(s[i]));
    const float absmax = bits_to_float(top);
    const float d = block_divisor(block_scale<kFp8>(absmax));
    const int32_t* __restrict__ lut = t.lut;
    if constexpr (kFp8) {
#pragma omp simd
        for (int i = 0; i < len; ++i) codes[i] = float_to_e4m3(s[i] / d);
    } else {
#pragma omp simd
        for (int i = 0; i < len; ++i) codes[i] = encode_nearest(s[i] / d, lut);
    }
    return absmax;
}

template <int V, class P, class G, bool kStochastic, bool kFp8>
void run_variant(const BlockwiseCall& call) {
    constexpr int num_states = Rule::num_states(V);
    const StepCall& c = call.step;
    const typename Rule::template Scalars<float> scalars(c.scalars);
    const Prologue<float> prologue{float(c.grad_scale), float(c.weight_decay), float(c.decay_factor),
                                   c.rounding_seed};
    P* param = static_cast<P*>(c.param);
    const G* grad = static_cast<const G*>(c.grad);
    float* master = c.master;
    const int64_t n = c.n;
    const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
    const int nthreads = threads_for(n, c.num_threads);
    const int64_t grain = (piece_size(n, nthreads) + kQuantBlock - 1) / kQuantBlock;
    const EmaRange ema = ema_range(param, c.param_dtype, master, c.ema, c.ema_dtype, c.ema_weight);
    parallel_for(blocks, grain, nthreads, [&](int64_t lo, int64_t hi) {
        const auto k = scalars;
        const auto pro = prologue;
        alignas(64) float s[3][kQuantBlock];
        for (int64_t b = lo; b < hi; ++b) {
            const int64_t base = b * kQuantBlock;
            const int len = int(std::min<int64_t>(kQuantBlock, n - base));
            for (int j = 0; j < num_states; ++j)
                dequantize_block<kFp8>(call.codes[j] + base, block_scale<kFp8>(call.absmax[j][b]), call.tables[j].values,
                                 s[j], len);
            P* p = param + base;
            const G* g = grad + base;
            float* m = master != nullptr ? master + base : nullptr;
            float* s0 = s[0];
            float* s1 = s[1];
            float* s2 = s[2];
#pragma omp simd
            for (int i = 0; i < len; ++i)
                step_element<Rule, V, float, P, G, float, kStochastic>(i, p, g, m, s0, s1, s2, pro, k, base + i);
            ema_lerp(ema, base, base + len);  // the block's new params are in L1 (ema.h)
            for (int j = 0; j < num_states; ++j)
                call.absmax[j][b] = quantize_block<kFp8>(s[j], len, call.tables[j], call.codes[j] + base);
        }
    });
}

template <class P, class G, bool kStochastic, bool kFp8, int... Vs>
void run_types(const BlockwiseCall& call, std::integer_sequence<int, Vs...>) {
    ((call.step.variant == Vs ? run_variant<Vs, P, G, kStochastic, kFp8>(call) : void()), ...);
}

template <class P, class G, bool kStochastic = false>
void run(const BlockwiseCall& call) {
    constexpr auto variants = std::make_integer_sequence<int, Rule::kNumVariants>{};
    if (call.scheme == kSchemeFp8) run_types<P, G, kStochastic, true>(call, variants);
    else run_types<P, G, kStochastic, false>(call, variants);
}

template <class P, bool kStochastic>
void run_half(const BlockwiseCall& call) {
    if (call.step.grad_dtype == kFloat32) run<P, float, kStochastic>(call);
    else run<P, P, kStochastic>(call);
}

}  // namespace

// float32 params, or half params with master weights or (bfloat16) stochastic rounding; the
// Python layer passes nothing else.
void FASTOPT_CAT(blockwise_step_, FASTOPT_RULE)(const BlockwiseCall& call) {
    switch (call.step.param_dtype) {
        case kFloat32: run<float, float>(call); break;
        case kFloat16: run_half<f16_t, false>(call); break;
        case kBFloat16:
            if (call.step.master != nullptr) run_half<bf16_t, false>(call);
            else run_half<bf16_t, true>(call);
            break;
        default: break;
    }
}

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
