// The ISA-independent front of the CPU kernels: ISA choice, thread count, dispatching calls.
#pragma once
#include "kernels.h"

namespace fastopt::cpu {

Isa best_supported_isa();
Isa active_isa();
void select_isa(Isa isa);  // throws std::invalid_argument if the CPU lacks it

int num_threads();
void set_num_threads(int n);

void optimizer_step(const StepCall& call);
void multi_step(const MultiStepCall& call);
double sum_of_squares(const NormCall& call);

}  // namespace fastopt::cpu

// `FASTOPT_PICK(fn(args))` returns isa_<level>::fn(args) for the active ISA level; use it in
// the ISA-independent front of any kernel family.
#if defined(FASTOPT_HAVE_ISA_LEVELS)
#define FASTOPT_PICK(call)                                          \
    switch (::fastopt::cpu::active_isa()) {                         \
        case ::fastopt::cpu::Isa::kV4: return ::fastopt::cpu::isa_v4::call;  \
        case ::fastopt::cpu::Isa::kV3: return ::fastopt::cpu::isa_v3::call;  \
        default: return ::fastopt::cpu::isa_baseline::call;         \
    }
#else
#define FASTOPT_PICK(call) return ::fastopt::cpu::isa_baseline::call;
#endif
