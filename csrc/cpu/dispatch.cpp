// Picks the ISA level once, from the CPU's features (or FASTOPT_CPU_ISA through the bindings).
#include "dispatch.h"
#include "thread_pool.h"

#include <stdexcept>
#include <string>

namespace fastopt::cpu {

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::kBaseline: return "baseline";
        case Isa::kV3: return "x86-64-v3";
        case Isa::kV4: return "x86-64-v4";
    }
    return "?";
}

Isa best_supported_isa() {
#if defined(FASTOPT_HAVE_ISA_LEVELS)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return Isa::kV4;
    if (__builtin_cpu_supports("x86-64-v3")) return Isa::kV3;
#endif
    return Isa::kBaseline;
}

namespace {
Isa g_isa = best_supported_isa();
int g_num_threads = affinity_cpus();  // the Python layer sets its own default at import
}  // namespace

Isa active_isa() { return g_isa; }

void select_isa(Isa isa) {
    if (int(isa) > int(best_supported_isa()))
        throw std::invalid_argument(std::string("this CPU does not support ") + isa_name(isa) +
                                    "; the highest level it supports is " + isa_name(best_supported_isa()));
    g_isa = isa;
}

int num_threads() { return g_num_threads; }
void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
    g_num_threads = n;
}


void optimizer_step(const StepCall& call) { FASTOPT_PICK(optimizer_step(call)) }
void multi_step(const MultiStepCall& call) { FASTOPT_PICK(multi_step(call)) }
double sum_of_squares(const NormCall& call) { FASTOPT_PICK(sum_of_squares(call)) }

}  // namespace fastopt::cpu
