// pybind11 registration of internal functions exposed for tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <mutex>
#include <utility>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"

namespace py = pybind11;

void register_internal(py::module_& m) {
    // The (lo, hi) ranges that parallel_ranges itself hands out for n elements, sorted. The body
    // only records its range, so sizes far beyond 2**31 are checked without allocating them, and
    // the split is the one the worker threads really execute.
    m.def("thread_ranges", [](int64_t n, int threads) {
        std::vector<std::pair<int64_t, int64_t>> ranges;
        std::mutex lock;
        {
            py::gil_scoped_release release;
            fastopt::cpu::parallel_ranges(n, threads, [&](int64_t lo, int64_t hi) {
                std::lock_guard<std::mutex> guard(lock);
                ranges.emplace_back(lo, hi);
            });
        }
        std::sort(ranges.begin(), ranges.end());
        return ranges;
    });
    m.def("threads_for", &fastopt::cpu::threads_for);
    m.attr("state_slots") = fastopt::kStateSlots;
    m.attr("rule_scalars") = fastopt::kMaxRuleScalars;
    m.attr("parallel_threshold") = fastopt::cpu::kParallelThreshold;
    m.attr("chunk_align") = fastopt::cpu::kChunkAlign;
    m.attr("pieces_per_thread") = fastopt::cpu::kPiecesPerThread;
}
