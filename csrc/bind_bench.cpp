// pybind11 registration of the benchmark-only kernels (memory bandwidth).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/batchnorm.h"
#include "cpu/dispatch.h"
#include "cpu/parallel.h"

namespace py = pybind11;

#define FASTOPT_DECLARE_STREAM(ns)                                                              \
    namespace fastopt::cpu::ns {                                                                \
    double stream_pass(int dtype, void* const* arrays, int read_only, int read_write,           \
                       int write_only, int64_t n, int num_threads);                             \
    }
FASTOPT_DECLARE_STREAM(isa_baseline)
FASTOPT_DECLARE_STREAM(isa_v3)
FASTOPT_DECLARE_STREAM(isa_v4)
#undef FASTOPT_DECLARE_STREAM

namespace {

double dispatch_stream(int dtype, void* const* arrays, int ro, int rw, int wo, int64_t n, int threads) {
    FASTOPT_PICK(stream_pass(dtype, arrays, ro, rw, wo, n, threads))
}

// arrays: read-only ones, then read-write ones, then write-only ones, all contiguous, of one
// dtype (float32 or float64) and one size.
double py_stream(py::list arrays, int read_only, int read_write, int write_only, int num_threads) {
    if (int(arrays.size()) != read_only + read_write + write_only)
        throw std::invalid_argument("arrays: expected read_only + read_write + write_only arrays");
    if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1");
    std::vector<void*> pointers;
    std::vector<py::array> keep;
    int dtype = -1;
    int64_t n = -1;
    for (size_t k = 0; k < arrays.size(); ++k) {
        py::array a = arrays[k].cast<py::array>();
        if (!(a.flags() & py::array::c_style))
            throw std::invalid_argument("arrays[" + std::to_string(k) + "] must be C-contiguous");
        int code = a.dtype().is(py::dtype::of<float>()) ? fastopt::cpu::kFloat32
                 : a.dtype().is(py::dtype::of<double>()) ? fastopt::cpu::kFloat64 : -1;
        if (code < 0) throw py::type_error("arrays[" + std::to_string(k) + "] must be float32 or float64");
        if (dtype >= 0 && (code != dtype || a.size() != n))
            throw std::invalid_argument("arrays must share one dtype and one size");
        dtype = code;
        n = a.size();
        bool written = int(k) >= read_only;
        pointers.push_back(written ? a.mutable_data() : const_cast<void*>(a.data()));
        keep.push_back(a);
    }
    if (dtype < 0) return 0.0;
    py::gil_scoped_release release;
    return dispatch_stream(dtype, pointers.data(), read_only, read_write, write_only, n, num_threads);
}

// How many times the CPU BatchNorm kernels read their inputs (x; x and dy in the backward) from
// memory in training: once where channel groups fit in cache (fused_groups; how channels are
// grouped does not change that), else twice.
int py_batch_norm_input_reads(int64_t outer, int64_t channels, int64_t inner, int itemsize, bool backward,
                              int num_threads) {
    if (outer < 1 || channels < 1 || inner < 1 || itemsize < 1 || num_threads < 1)
        throw std::invalid_argument("sizes and num_threads must be >= 1");
    const int nthreads = fastopt::cpu::threads_for(outer * channels * inner, num_threads);
    const int64_t input_bytes = (backward ? 2 : 1) * int64_t(itemsize);
    return fastopt::cpu::fused_groups(outer, channels, inner, input_bytes, true, nthreads).count > 0 ? 1 : 2;
}

}  // namespace

void register_bench(py::module_& m) {
    m.def("stream", &py_stream, py::arg("arrays"), py::arg("read_only"), py::arg("read_write"),
          py::arg("write_only"), py::arg("num_threads"),
          "One streaming pass with a kernel's access pattern (benchmark only): reads the read-only "
          "and read-write arrays, writes the read-write and write-only ones. Returns a checksum.");
    m.def("batch_norm_input_reads", &py_batch_norm_input_reads, py::arg("outer"), py::arg("channels"),
          py::arg("inner"), py::arg("itemsize"), py::arg("backward"), py::arg("num_threads"),
          "How many times the CPU BatchNorm kernels read their inputs from memory in training: 1 or 2 "
          "(benchmark only).");
}
