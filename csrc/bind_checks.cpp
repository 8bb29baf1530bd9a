// The fast path of an optimizer step's array checks (fastopt/_checks.py, step_arrays), for NumPy
// arrays. Reading each array's pointer, flags and dtype from Python costs about 10 us per call;
// here it costs well under one. It only ever accepts: whenever an argument is not valid it
// returns None, and the Python checks run to raise the error that names the problem. So the
// rules below must accept exactly what step_arrays accepts (tests/test_validation.py compares
// the two on every combination of dtypes and options).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "cpu/kernels.h"

namespace py = pybind11;
using fastopt::cpu::DType;

namespace {

constexpr int kNpyHalf = 23;  // NumPy's float16 type number (pybind11 names no constant for it)

// NumPy's number of ml_dtypes' bfloat16 (registered at run time), or -1 when it is not loaded.
int bfloat16_type_num = -1;

struct Facts {
    DType code;
    int64_t size;
    uintptr_t start, end;
};

// An array's facts when it is a C-contiguous, aligned, native-order float array fastopt takes
// (and writable when `written`), else nothing.
std::optional<Facts> facts_of(py::handle h, bool written) {
    using api = py::detail::npy_api;
    if (!py::isinstance<py::array>(h)) return std::nullopt;
    auto a = py::reinterpret_borrow<py::array>(h);
    int required = api::NPY_ARRAY_C_CONTIGUOUS_ | api::NPY_ARRAY_ALIGNED_ | (written ? api::NPY_ARRAY_WRITEABLE_ : 0);
    if ((a.flags() & required) != required) return std::nullopt;
    py::dtype dtype = a.dtype();
    if (dtype.byteorder() == '>') return std::nullopt;
    int num = dtype.num();
    DType code;
    if (num == api::NPY_FLOAT_) code = fastopt::cpu::kFloat32;
    else if (num == api::NPY_DOUBLE_) code = fastopt::cpu::kFloat64;
    else if (num == kNpyHalf) code = fastopt::cpu::kFloat16;
    else if (num == bfloat16_type_num) code = fastopt::cpu::kBFloat16;
    else return std::nullopt;
    auto start = reinterpret_cast<uintptr_t>(a.data());
    return Facts{code, a.size(), start, start + static_cast<uintptr_t>(a.nbytes())};
}

bool is_half(DType code) { return code == fastopt::cpu::kFloat16 || code == fastopt::cpu::kBFloat16; }

// (param_code, grad_code, state_code) of a valid step, or None.
py::object step_codes(py::handle param, py::handle grad, py::handle master, py::tuple states, bool seeded) {
    auto p = facts_of(param, true);
    auto g = facts_of(grad, false);
    if (!p || !g || g->size != p->size) return py::none();
    std::vector<Facts> all{*p, *g};
    if (is_half(p->code)) {
        if (g->code != p->code && g->code != fastopt::cpu::kFloat32) return py::none();
        if (master.is_none()) {
            if (!seeded || p->code != fastopt::cpu::kBFloat16) return py::none();
        } else {
            auto m = facts_of(master, true);
            if (seeded || !m || m->code != fastopt::cpu::kFloat32 || m->size != p->size) return py::none();
            all.push_back(*m);
        }
    } else if (g->code != p->code || !master.is_none() || seeded) {
        return py::none();
    }
    DType state_code = p->code == fastopt::cpu::kFloat64 ? fastopt::cpu::kFloat64 : fastopt::cpu::kFloat32;
    for (size_t i = 0; i < states.size(); ++i) {
        auto s = facts_of(states[i], true);
        if (!s || s->size != p->size) return py::none();
        bool allowed = p->code == fastopt::cpu::kFloat64
                           ? s->code == fastopt::cpu::kFloat64
                           : s->code == fastopt::cpu::kFloat32 || s->code == fastopt::cpu::kBFloat16;
        if (!allowed || (i > 0 && s->code != state_code)) return py::none();
        state_code = s->code;
        all.push_back(*s);
    }
    for (size_t i = 0; i < all.size(); ++i)
        for (size_t j = i + 1; j < all.size(); ++j)
            if (all[i].start < all[i].end && all[j].start < all[j].end &&
                all[i].start < all[j].end && all[j].start < all[i].end)
                return py::none();
    return py::make_tuple(int(p->code), int(g->code), int(state_code));
}

}  // namespace

void register_checks(py::module_& m) {
    m.def("set_bfloat16_type_num", [](int num) { bfloat16_type_num = num; });
    m.def("step_codes", &step_codes, py::arg("param"), py::arg("grad"), py::arg("master"), py::arg("states"),
          py::arg("seeded"));
}
