// The start of a per-(rule, ISA level) driver translation unit (optim_kernels.cpp,
// blockwise_kernels.cpp): CMakeLists.txt compiles each once per rule and level, naming the rule
// struct of fastopt/math/all.h in FASTOPT_RULE and the ISA namespace in FASTOPT_ISA_NS.
#pragma once
#include "fastopt/math/all.h"
#include "kernels.h"

#if !defined(FASTOPT_RULE) || !defined(FASTOPT_ISA_NS)
#error "compile with -DFASTOPT_RULE=<rule> -DFASTOPT_ISA_NS=<namespace>"
#endif

// FASTOPT_CAT(step_, FASTOPT_RULE): the rule's entry point names (dispatch.cpp declares them).
#define FASTOPT_CAT2(a, b) a##b
#define FASTOPT_CAT(a, b) FASTOPT_CAT2(a, b)
