// pybind11 registration of the quantized-state optimizer step (cpu/blockwise.h). The Python layer
// (fastopt/_blockwise_step.py) has validated every array; this only gathers the pointers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "bind_step.h"
#include "cpu/blockwise.h"
#include "cpu/dispatch.h"

namespace py = pybind11;
using namespace fastopt::cpu;

namespace fastopt::cpu {
void blockwise_step(const BlockwiseCall& call) { FASTOPT_PICK(blockwise_step(call)) }
}  // namespace fastopt::cpu

namespace {

// KernelCall.state_code of the fp8 scheme (fastopt/_blockwise_step.py CODE_FP8).
constexpr int kStateCodeFp8 = 17;

template <class T>
T* pointer(py::handle h) {
    return static_cast<T*>(py::reinterpret_borrow<py::array>(h).mutable_data());
}

// The arguments of optimizer_step, in KernelCall's order; each entry of `states` is a tuple
// (codes, absmax, values, mids, lut).
void py_blockwise_step(int optimizer, int variant, int param_dtype, int grad_dtype, int state_dtype,
                       py::array param, py::array grad, py::object master, py::tuple states, py::tuple scalars,
                       double grad_scale, double weight_decay, double decay_factor, uint32_t rounding_seed,
                       py::object ema, int ema_dtype, double ema_weight) {
    BlockwiseCall call{};
    fastopt::bind::set_rule(call.step, optimizer, variant, param_dtype, grad_dtype, state_dtype);
    fastopt::bind::set_step(call.step, param, grad, master, scalars, grad_scale, weight_decay, decay_factor,
                            rounding_seed, ema, ema_dtype, ema_weight);
    if (states.size() > std::size(call.codes)) throw std::invalid_argument("too many state arrays");
    for (size_t j = 0; j < states.size(); ++j) {
        py::tuple slot = states[j].cast<py::tuple>();
        if (slot.size() != 5) throw std::invalid_argument("a quantized state is (codes, absmax, values, mids, lut)");
        call.codes[j] = pointer<uint8_t>(slot[0]);
        call.absmax[j] = pointer<float>(slot[1]);
        call.tables[j] = fastopt::CodeTables{pointer<float>(slot[2]), pointer<float>(slot[3]), pointer<int32_t>(slot[4])};
    }
    call.scheme = state_dtype == kStateCodeFp8 ? kSchemeFp8 : kScheme8bit;
    py::gil_scoped_release release;
    fastopt::cpu::blockwise_step(call);
}

}  // namespace

void register_blockwise(py::module_& m) {
    // The EMA's arguments (KernelCall's last fields) are optional, as optimizer_step's.
    m.def("blockwise_step", &py_blockwise_step, py::arg("optimizer"), py::arg("variant"), py::arg("param_dtype"),
          py::arg("grad_dtype"), py::arg("state_dtype"), py::arg("param"), py::arg("grad"), py::arg("master"),
          py::arg("states"), py::arg("scalars"), py::arg("grad_scale"), py::arg("weight_decay"),
          py::arg("decay_factor"), py::arg("rounding_seed"), py::arg("ema") = py::none(), py::arg("ema_dtype") = 0,
          py::arg("ema_weight") = 0.0);
    m.attr("quant_block") = fastopt::kQuantBlock;
    m.attr("lut_layout") = py::make_tuple(fastopt::kLutShift, fastopt::kLutLow, fastopt::kLutBuckets);
}
