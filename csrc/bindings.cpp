// pybind11 module fastopt._cpu. The Python layer validates every argument (fastopt/_checks.py)
// before calling in here; these functions only unpack buffers, release the GIL and dispatch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "bind_step.h"
#include "cpu/dispatch.h"
#include "cpu/thread_pool.h"
#include "fastopt/math/all.h"

namespace py = pybind11;
using namespace fastopt::cpu;

// Other kernel families register their functions from their own bind_*.cpp files.
void register_batchnorm(py::module_& m);  // bind_batchnorm.cpp
void register_checks(py::module_& m);     // bind_checks.cpp
void register_bench(py::module_& m);      // bind_bench.cpp
void register_internal(py::module_& m);   // bind_internal.cpp
void register_multi(py::module_& m);      // bind_multi.cpp
void register_blockwise(py::module_& m);  // bind_blockwise.cpp

namespace {

void py_optimizer_step(int optimizer, int variant, int param_dtype, int grad_dtype, int state_dtype,
                    py::array param, py::array grad, py::object master, py::tuple states,
                    py::tuple scalars, double grad_scale, double weight_decay,
                    double decay_factor, uint32_t rounding_seed, py::object ema, int ema_dtype,
                    double ema_weight) {
    StepCall call{};
    fastopt::bind::set_rule(call, optimizer, variant, param_dtype, grad_dtype, state_dtype);
    fastopt::bind::set_step(call, param, grad, master, scalars, grad_scale, weight_decay, decay_factor,
                            rounding_seed, ema, ema_dtype, ema_weight);
    if (states.size() > std::size(call.states)) throw std::invalid_argument("too many state arrays");
    for (size_t i = 0; i < states.size(); ++i) {
        py::array s = states[i].cast<py::array>();
        call.states[i] = s.mutable_data();
    }
    py::gil_scoped_release release;
    fastopt::cpu::optimizer_step(call);
}

double py_sum_of_squares(int dtype, py::array x) {
    NormCall call{DType(dtype), x.data(), x.size(), num_threads()};
    py::gil_scoped_release release;
    return fastopt::cpu::sum_of_squares(call);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "fastopt's C++ kernels (internal: call through fastopt's Python API)";
    // The EMA's three arguments may be left out (no averaging).
    m.def("optimizer_step", &py_optimizer_step, py::arg("optimizer"), py::arg("variant"), py::arg("param_dtype"),
          py::arg("grad_dtype"), py::arg("state_dtype"), py::arg("param"), py::arg("grad"), py::arg("master"),
          py::arg("states"), py::arg("scalars"), py::arg("grad_scale"), py::arg("weight_decay"),
          py::arg("decay_factor"), py::arg("rounding_seed"), py::arg("ema") = py::none(), py::arg("ema_dtype") = 0,
          py::arg("ema_weight") = 0.0);
    m.def("sum_of_squares", &py_sum_of_squares);
    m.def("num_threads", &num_threads);
    m.def("set_num_threads", &set_num_threads);
    m.def("affinity_cpus", &affinity_cpus);
    m.def("spin_microseconds", &spin_microseconds);
    m.def("set_spin_microseconds", &set_spin_microseconds);
    m.def("isa", [] { return std::string(isa_name(active_isa())); });
    m.def("best_isa", [] { return std::string(isa_name(best_supported_isa())); });
    m.def("select_isa", [](const std::string& name) {
        for (Isa isa : {Isa::kBaseline, Isa::kV3, Isa::kV4})
            if (name == isa_name(isa)) return select_isa(isa);
        throw std::invalid_argument("unknown ISA level '" + name + "'");
    });
    m.def("num_variants", [] {
        std::vector<int> counts;
#define FASTOPT_COUNT(rule, id) counts.push_back(fastopt::rule::kNumVariants);
        FASTOPT_FOR_EACH_OPTIMIZER(FASTOPT_COUNT)
#undef FASTOPT_COUNT
        return counts;
    });
    register_batchnorm(m);
    register_checks(m);
    register_bench(m);
    register_internal(m);
    register_multi(m);
    register_blockwise(m);
}
