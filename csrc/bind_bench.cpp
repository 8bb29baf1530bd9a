// pybind11 registration of the benchmark-only kernels (memory bandwidth).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_bench(py::module_& m) {}
