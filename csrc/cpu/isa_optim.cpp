// The per-ISA entry points: the optimizer switch and the reductions. Compiled once per ISA level.
#include "fastopt/math/all.h"
#include "kernels.h"
#include "parallel.h"

#include <vector>

namespace fastopt::cpu::FASTOPT_ISA_NS {

#define FASTOPT_DECLARE_STEP(rule, id) \
    void step_##rule(const StepCall& call); \
    void multi_step_##rule(const MultiStepCall& call);
FASTOPT_FOR_EACH_OPTIMIZER(FASTOPT_DECLARE_STEP)
#undef FASTOPT_DECLARE_STEP

void optimizer_step(const StepCall& call) {
    switch (call.optimizer) {
#define FASTOPT_CASE(rule, id) \
    case id: step_##rule(call); break;
        FASTOPT_FOR_EACH_OPTIMIZER(FASTOPT_CASE)
#undef FASTOPT_CASE
    }
}

void multi_step(const MultiStepCall& call) {
    switch (call.optimizer) {
#define FASTOPT_CASE(rule, id) \
    case id: multi_step_##rule(call); break;
        FASTOPT_FOR_EACH_OPTIMIZER(FASTOPT_CASE)
#undef FASTOPT_CASE
    }
}

namespace {

// Eight independent float64 lanes, combined in a fixed tree: the order of additions does not
// depend on the vector width the compiler picks, so every ISA gives the same bits.
template <class T>
double block_sum_of_squares(const T* x, int64_t n) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t full = n / 8 * 8;
    for (int64_t i = 0; i < full; i += 8)
        for (int j = 0; j < 8; ++j) {
            double v = load_as<double>(x[i + j]);
            lane[j] += v * v;
        }
    for (int64_t i = full; i < n; ++i) {
        double v = load_as<double>(x[i]);
        lane[i - full] += v * v;
    }
    return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
}

template <class T>
double sum_of_squares_typed(const NormCall& call) {
    const T* x = static_cast<const T*>(call.data);
    int64_t num_blocks = (call.n + kNormBlock - 1) / kNormBlock;
    if (num_blocks <= 1) return block_sum_of_squares(x, call.n);
    std::vector<double> partial(num_blocks);
    int nthreads = threads_for(call.n, call.num_threads);
    parallel_tasks(num_blocks, nthreads, [&](int64_t b) {
        int64_t start = b * kNormBlock;
        partial[b] = block_sum_of_squares(x + start, std::min(kNormBlock, call.n - start));
    });
    double total = 0;
    for (double s : partial) total += s;
    return total;
}

}  // namespace

double sum_of_squares(const NormCall& call) {
    switch (call.dtype) {
        case kFloat32: return sum_of_squares_typed<float>(call);
        case kFloat64: return sum_of_squares_typed<double>(call);
        case kFloat16: return sum_of_squares_typed<f16_t>(call);
        case kBFloat16: return sum_of_squares_typed<bf16_t>(call);
    }
    return 0;
}

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
