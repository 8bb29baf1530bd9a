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
double sum_of_squares(const NormCall& call);

}  // namespace fastopt::cpu
