// pybind11 registration of the BatchNorm kernels. The Python layer (fastopt/batchnorm.py)
// validates shapes, dtypes and aliasing before calling in here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <new>

#include "bind_arrays.h"
#include "cpu/batchnorm.h"
#include "cpu/dispatch.h"

namespace py = pybind11;

namespace fastopt::cpu {
bool batch_norm_forward(const BnForwardCall& call) { FASTOPT_PICK(batch_norm_forward(call)) }
bool batch_norm_backward(const BnBackwardCall& call) { FASTOPT_PICK(batch_norm_backward(call)) }
}  // namespace fastopt::cpu

namespace {

using namespace fastopt::cpu;
using fastopt::bind::data_or_null;
using fastopt::bind::mutable_data_or_null;

void py_batch_norm_forward(int dtype, py::array x, py::array y, int64_t outer, int64_t channels, int64_t inner,
                           py::object weight, py::object bias, py::object running_mean, py::object running_var,
                           py::array save_mean, py::array save_invstd, double momentum, double eps, bool training,
                           py::object residual, bool relu, py::object relu_mask) {
    BnForwardCall call{};
    call.dtype = DType(dtype);
    call.x = x.data();
    call.y = y.mutable_data();
    call.outer = outer;
    call.channels = channels;
    call.inner = inner;
    call.weight = data_or_null(weight);
    call.bias = data_or_null(bias);
    call.running_mean = mutable_data_or_null(running_mean);
    call.running_var = mutable_data_or_null(running_var);
    call.save_mean = save_mean.mutable_data();
    call.save_invstd = save_invstd.mutable_data();
    call.momentum = momentum;
    call.eps = eps;
    call.training = training;
    call.num_threads = num_threads();
    call.residual = data_or_null(residual);
    call.relu = relu;
    call.relu_mask = static_cast<uint8_t*>(mutable_data_or_null(relu_mask));
    bool done;
    {
        py::gil_scoped_release release;
        done = batch_norm_forward(call);
    }
    if (!done) throw std::bad_alloc();
}

void py_batch_norm_backward(int dtype, py::array dy, py::array x, py::array dx, int64_t outer, int64_t channels,
                            int64_t inner, py::object weight, py::array save_mean, py::array save_invstd,
                            py::object dweight, py::object dbias, bool training, py::object y,
                            py::object dresidual, py::object relu_mask) {
    BnBackwardCall call{};
    call.dtype = DType(dtype);
    call.dy = dy.data();
    call.x = x.data();
    call.dx = dx.mutable_data();
    call.outer = outer;
    call.channels = channels;
    call.inner = inner;
    call.weight = data_or_null(weight);
    call.save_mean = save_mean.data();
    call.save_invstd = save_invstd.data();
    call.dweight = mutable_data_or_null(dweight);
    call.dbias = mutable_data_or_null(dbias);
    call.training = training;
    call.num_threads = num_threads();
    call.y = data_or_null(y);
    call.dresidual = mutable_data_or_null(dresidual);
    call.relu_mask = static_cast<const uint8_t*>(data_or_null(relu_mask));
    bool done;
    {
        py::gil_scoped_release release;
        done = batch_norm_backward(call);
    }
    if (!done) throw std::bad_alloc();
}

}  // namespace

void register_batchnorm(py::module_& m) {
    // residual/relu/relu_mask and y/dresidual/relu_mask (BN + add + ReLU) default to plain BatchNorm;
    // relu_mask: uint8, one per element, written by the forward and read by the backward instead of y.
    m.def("batch_norm_forward", &py_batch_norm_forward, py::arg("dtype"), py::arg("x"), py::arg("y"),
          py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("weight"), py::arg("bias"),
          py::arg("running_mean"), py::arg("running_var"), py::arg("save_mean"), py::arg("save_invstd"),
          py::arg("momentum"), py::arg("eps"), py::arg("training"), py::arg("residual") = py::none(),
          py::arg("relu") = false, py::arg("relu_mask") = py::none());
    m.def("batch_norm_backward", &py_batch_norm_backward, py::arg("dtype"), py::arg("dy"), py::arg("x"),
          py::arg("dx"), py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("weight"),
          py::arg("save_mean"), py::arg("save_invstd"), py::arg("dweight"), py::arg("dbias"),
          py::arg("training"), py::arg("y") = py::none(), py::arg("dresidual") = py::none(),
          py::arg("relu_mask") = py::none());
}
