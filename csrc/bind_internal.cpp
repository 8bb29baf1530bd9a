// pybind11 registration of internal functions exposed for tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <utility>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"

namespace py = pybind11;

void register_internal(py::module_& m) {
    // The (lo, hi) ranges parallel_ranges hands to each thread for n elements: checks 64-bit
    // chunking for sizes that cannot be allocated in a test.
    m.def("thread_ranges", [](int64_t n, int threads) {
        std::vector<std::pair<int64_t, int64_t>> ranges;
        int nthreads = fastopt::cpu::threads_for(n, threads);
        if (nthreads == 1) return std::vector<std::pair<int64_t, int64_t>>{{0, n}};
        int64_t per_thread = fastopt::cpu::chunk_size(n, nthreads);
        for (int t = 0; t < nthreads; ++t) {
            int64_t lo = std::min<int64_t>(n, t * per_thread), hi = std::min<int64_t>(n, lo + per_thread);
            ranges.emplace_back(lo, hi);
        }
        return ranges;
    });
    m.attr("parallel_threshold") = fastopt::cpu::kParallelThreshold;
    m.attr("chunk_align") = fastopt::cpu::kChunkAlign;
}
