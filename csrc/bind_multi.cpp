// pybind11 registration of the segment-table step: many separate arrays in one kernel call. The
// Python layer (fastopt/_multi.py) has validated every array; this only gathers the pointers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <iterator>
#include <stdexcept>
#include <vector>

#include "bind_step.h"
#include "cpu/dispatch.h"
#include "cpu/parallel.h"

namespace py = pybind11;
using namespace fastopt::cpu;

namespace {

void* pointer(py::handle h, bool written) {
    auto a = py::reinterpret_borrow<py::array>(h);
    return written ? a.mutable_data() : const_cast<void*>(a.data());
}

void py_multi_step(int optimizer, int variant, int param_dtype, int grad_dtype, int state_dtype,
                   py::list params, py::list grads, py::object masters, py::list states,
                   py::array_t<double, py::array::c_style> rows, py::list row_of, py::list seeds,
                   py::object emas, int ema_dtype, py::object ema_weights) {
    const size_t count = params.size();
    const bool has_master = !masters.is_none();
    // The EMA of the weights: a list of arrays and one of weights, or both None.
    const bool has_ema = !emas.is_none();
    if (has_ema && (py::len(emas) != count || py::len(ema_weights) != count))
        throw std::invalid_argument("multi_step: emas and ema_weights must have one entry per param");
    if (grads.size() != count || states.size() != count || row_of.size() != count || seeds.size() != count ||
        (has_master && py::len(masters) != count))
        throw std::invalid_argument("multi_step: every per-array list must have one entry per param");
    if (rows.ndim() != 2 || rows.shape(1) != kRowWidth)
        throw std::invalid_argument("multi_step: rows must have shape (R, " + std::to_string(kRowWidth) + ")");
    const int64_t num_rows = rows.shape(0);
    std::vector<Segment> table;
    table.reserve(count);
    int64_t end = 0;
    for (size_t j = 0; j < count; ++j) {
        Segment s{};
        auto p = py::reinterpret_borrow<py::array>(params[j]);
        s.n = p.size();
        if (s.n == 0) continue;
        s.param = p.mutable_data();
        s.grad = pointer(grads[j], false);
        s.master = has_master ? static_cast<float*>(pointer(py::list(masters)[j], true)) : nullptr;
        py::tuple st = states[j].cast<py::tuple>();
        if (st.size() > std::size(s.states)) throw std::invalid_argument("multi_step: too many state arrays");
        for (size_t i = 0; i < st.size(); ++i) s.states[i] = pointer(st[i], true);
        s.row = row_of[j].cast<int64_t>();
        if (s.row < 0 || s.row >= num_rows) throw std::invalid_argument("multi_step: row index out of range");
        s.rounding_seed = seeds[j].cast<uint32_t>();
        if (has_ema) {
            s.ema = pointer(py::list(emas)[j], true);
            s.ema_weight = py::list(ema_weights)[j].cast<double>();
        }
        s.offset = (end + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
        end = s.offset + s.n;
        table.push_back(s);
    }
    if (table.empty()) return;
    MultiStepCall call{};
    fastopt::bind::set_rule(call, optimizer, variant, param_dtype, grad_dtype, state_dtype);
    call.has_master = has_master;
    call.segments = table.data();
    call.num_segments = int64_t(table.size());
    call.rows = rows.data();
    call.total = end;
    call.num_threads = num_threads();
    call.ema_dtype = DType(ema_dtype);
    py::gil_scoped_release release;
    multi_step(call);
}

}  // namespace

void register_multi(py::module_& m) {
    // The EMA's three arguments may be left out (no averaging).
    m.def("multi_step", &py_multi_step, py::arg("optimizer"), py::arg("variant"), py::arg("param_dtype"),
          py::arg("grad_dtype"), py::arg("state_dtype"), py::arg("params"), py::arg("grads"), py::arg("masters"),
          py::arg("states"), py::arg("rows"), py::arg("row_of"), py::arg("seeds"), py::arg("emas") = py::none(),
          py::arg("ema_dtype") = 0, py::arg("ema_weights") = py::none());
    m.attr("row_width") = kRowWidth;
}
