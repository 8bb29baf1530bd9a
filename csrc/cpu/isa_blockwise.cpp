// The per-ISA switch of the quantized-state step over the rules (blockwise_kernels.cpp).
#include "blockwise.h"
#include "fastopt/math/all.h"

namespace fastopt::cpu::FASTOPT_ISA_NS {

#define FASTOPT_DECLARE_STEP(rule, id) void blockwise_step_##rule(const BlockwiseCall& call);
FASTOPT_FOR_EACH_OPTIMIZER(FASTOPT_DECLARE_STEP)
#undef FASTOPT_DECLARE_STEP

void blockwise_step(const BlockwiseCall& call) {
    switch (call.step.optimizer) {
#define FASTOPT_CASE(rule, id) \
    case id: blockwise_step_##rule(call); break;
        FASTOPT_FOR_EACH_OPTIMIZER(FASTOPT_CASE)
#undef FASTOPT_CASE
    }
}

}  // namespace fastopt::cpu::FASTOPT_ISA_NS
