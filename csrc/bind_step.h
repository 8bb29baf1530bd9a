// The fields of an optimizer call that every binding fills alike from its Python arguments:
// the rule, its variant and dtypes (all three calls), and the rest of a single-array StepCall
// but its states (bindings.cpp's optimizer_step, bind_blockwise.cpp's blockwise_step).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <iterator>
#include <stdexcept>

#include "bind_arrays.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"

namespace fastopt::bind {

template <class Call>
void set_rule(Call& call, int optimizer, int variant, int param_dtype, int grad_dtype, int state_dtype) {
    call.optimizer = optimizer;
    call.variant = variant;
    call.param_dtype = cpu::DType(param_dtype);
    call.grad_dtype = cpu::DType(grad_dtype);
    call.state_dtype = cpu::DType(state_dtype);
}

inline void set_step(cpu::StepCall& call, pybind11::array& param, const pybind11::array& grad,
                     const pybind11::object& master, const pybind11::tuple& scalars, double grad_scale,
                     double weight_decay, double decay_factor, uint32_t rounding_seed,
                     const pybind11::object& ema, int ema_dtype, double ema_weight) {
    call.param = param.mutable_data();
    call.grad = grad.data();
    call.master = static_cast<float*>(mutable_data_or_null(master));
    if (scalars.size() > std::size(call.scalars)) throw std::invalid_argument("too many scalars");
    // Read straight from the tuple: converting it to a std::vector costs more than a small step.
    for (size_t i = 0; i < scalars.size(); ++i) {
        call.scalars[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(scalars.ptr(), i));
        if (call.scalars[i] == -1.0 && PyErr_Occurred()) throw pybind11::error_already_set();
    }
    call.n = param.size();
    call.grad_scale = grad_scale;
    call.weight_decay = weight_decay;
    call.decay_factor = decay_factor;
    call.rounding_seed = rounding_seed;
    call.num_threads = cpu::num_threads();
    call.ema = mutable_data_or_null(ema);
    call.ema_dtype = cpu::DType(ema_dtype);
    call.ema_weight = ema_weight;
}

}  // namespace fastopt::bind
