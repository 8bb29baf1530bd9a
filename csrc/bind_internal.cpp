// pybind11 registration of the internal functions exposed for tests.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_internal(py::module_& m) {}
