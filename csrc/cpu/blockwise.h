// The interface of the quantized-state optimizer step (fastopt/math/blockwise.h): one step over a
// flat buffer whose state arrays are block-wise quantized.
#pragma once
#include <cstdint>

#include "fastopt/math/blockwise.h"
#include "kernels.h"

namespace fastopt::cpu {

// step holds the step's arrays and scalars as for a float32 state (its states[] are unused);
// slot j of the rule's states is codes[j] (n bytes), absmax[j] (one float per block) and the
// code map tables[j] (for fp8, tables[j].values decodes E4M3 and the search tables are unused).
enum Scheme : int { kScheme8bit = 0, kSchemeFp8 = 1 };
struct BlockwiseCall {
    StepCall step;
    uint8_t* codes[kStateSlots];
    float* absmax[kStateSlots];
    CodeTables tables[kStateSlots];
    Scheme scheme;
};

void blockwise_step(const BlockwiseCall& call);  // the active ISA level's

}  // namespace fastopt::cpu

#define FASTOPT_DECLARE_ISA(ns) \
    namespace fastopt::cpu::ns { void blockwise_step(const BlockwiseCall& call); }
FASTOPT_DECLARE_ISA(isa_baseline)
FASTOPT_DECLARE_ISA(isa_v3)
FASTOPT_DECLARE_ISA(isa_v4)
#undef FASTOPT_DECLARE_ISA
